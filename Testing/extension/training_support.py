"""Shared helpers of the FBANetTraining tests (no tests here).

Puts the module folder on ``sys.path`` (as Slicer does) and skips the importing test module
when the slicer-core wheel is missing. Every test uses a real ``vtkMRMLScene``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "FBANetTraining"
for folder in (MODULE_DIR, ROOT / "FBANetSegmentation"):
    if folder.is_dir() and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


slicer = pytest.importorskip(
    "slicer", reason="needs the slicer-core wheel (pip install slicer-core)"
)
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' package found is not slicer-core", allow_module_level=True)

from FBANetTrainingLib import (  # noqa: E402
    dataset,
    lifecycle,
    logic,
    review,
    runfolders,
    runner,
    selftest,
    settings,
    synthetic,
    writer,
)


def _registerSegmentationConverters() -> None:
    """What Slicer's Segmentations module does at startup: the representation converters."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules():
        return
    for name in dir(slicer):
        if name.endswith("ConversionRule") and name.startswith("vtk"):
            factory.RegisterConverterRule(getattr(slicer, name)())


_registerSegmentationConverters()

# One thread per worker: the tests run on small CPUs next to other jobs.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

__all__ = [
    "ROOT",
    "WORKER_ENV",
    "dataset",
    "lifecycle",
    "logic",
    "review",
    "runfolders",
    "runner",
    "selftest",
    "settings",
    "slicer",
    "synthetic",
    "writer",
]  # fmt: skip


def newScene() -> Any:
    """An empty MRML scene."""
    return slicer.vtkMRMLScene()


def nodeIds(scene: Any) -> list[str]:
    """IDs of every node of the scene, in order."""
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def volumeArrays(scene: Any) -> dict[str, Any]:
    """Copies of every scalar volume's voxels, by node ID."""
    import numpy as np
    from vtk.util import numpy_support

    arrays = {}
    for node in dataset.scalarVolumeNodes(scene):
        scalars = node.GetImageData().GetPointData().GetScalars()
        arrays[node.GetID()] = np.array(numpy_support.vtk_to_numpy(scalars))
    return arrays
