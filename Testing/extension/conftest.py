"""Fixtures for the Slicer modules' tests: a real MRML scene from the ``slicer-core`` wheel.

``slicer-core`` provides Slicer's MRML library (nodes, storage nodes, segmentation and
subject-hierarchy logic) and ``slicer.util``, but no application: no ``slicer.app``, no Qt,
no ``slicer.mrmlScene`` until a test sets one (the ``mrml_scene`` fixture does). Tests that
need it call ``pytest.importorskip("slicer")``; the others (files, .ui, CMake) always run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIRS = sorted(p for p in ROOT.glob("FBANet*") if (p / "CMakeLists.txt").is_file())
for _module_dir in MODULE_DIRS:
    if str(_module_dir) not in sys.path:
        sys.path.insert(0, str(_module_dir))


try:
    import slicer  # slicer-core's package (this folder is not named "slicer": no shadowing)
except ImportError:  # the tests that need it skip, saying so
    slicer = None


def new_scene() -> Any:
    """A fresh scene with the segmentation logic attached (it registers the converters)."""
    if slicer is None:
        pytest.skip("slicer-core is not installed (pip install slicer-core)")
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    scene._fbanet_segmentation_logic = logic  # keep it alive with the scene
    return scene


@pytest.fixture
def mrml_scene() -> Iterator[Any]:
    """A fresh scene, also installed as ``slicer.mrmlScene`` (as in Slicer) for the test."""
    scene = new_scene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    try:
        yield scene
    finally:
        scene.Clear(True)
        if previous is None:
            del slicer.mrmlScene
        else:
            slicer.mrmlScene = previous


@pytest.fixture(scope="session")
def threshold_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fbanet model file (4-filter FBA-Net) that segments the synthetic ellipsoids."""
    from FBANetSegmentationLib.testing import thresholdModel

    return thresholdModel(tmp_path_factory.mktemp("models") / "threshold.safetensors")
