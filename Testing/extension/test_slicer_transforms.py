"""New segmentations of a volume under a transform get the volume's own geometry (both modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402
from FBANetSegmentationLib import logic, testing  # noqa: E402
from test_slicer_segmentation_logic import add_volume  # noqa: E402


def _transformed_volume(scene: Any) -> Any:
    volume = add_volume(scene, testing.syntheticCase(), testing.obliqueIjkToRas(), "moved")
    transform = vtk.vtkTransform()
    transform.Translate(15.0, -8.0, 4.0)
    transform.RotateWXYZ(30.0, 0.3, 1.0, 0.2)
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    parent.SetMatrixTransformToParent(transform.GetMatrix())
    volume.SetAndObserveTransformNodeID(parent.GetID())
    return volume


def _reference_ijk_to_ras(segmentation: Any) -> np.ndarray:
    converter = slicer.vtkSegmentationConverter
    text = segmentation.GetSegmentation().GetConversionParameter(
        converter.GetReferenceImageGeometryParameterName()
    )
    image = slicer.vtkOrientedImageData()
    assert converter.DeserializeImageGeometry(text, image)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _volume_ijk_to_ras(volume: Any) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def test_a_new_result_segmentation_has_the_volumes_own_geometry(mrml_scene: Any) -> None:
    volume = _transformed_volume(mrml_scene)
    segmentation = logic.prepareOutputSegmentation(volume, None, "moved FBANet")
    assert segmentation.GetTransformNodeID() == volume.GetTransformNodeID()
    np.testing.assert_allclose(
        _reference_ijk_to_ras(segmentation), _volume_ijk_to_ras(volume), atol=1e-9
    )


def test_a_review_segmentation_has_the_volumes_own_geometry(
    mrml_scene: Any, tmp_path: Path
) -> None:
    import training_support  # noqa: F401 (puts FBANetTraining on the path)
    from FBANetTrainingLib import review

    volume = _transformed_volume(mrml_scene)
    source = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "file")
    source.SetReferenceImageGeometryParameterFromVolumeNode(volume)  # no transform here
    source.GetSegmentation().AddEmptySegment("atrium")
    path = logic.saveSegmentation(source, tmp_path / "review.seg.nrrd")
    segmentation = review.loadSegmentation(mrml_scene, path, volume, "moved FBANet")
    assert segmentation.GetTransformNodeID() == volume.GetTransformNodeID()
    np.testing.assert_allclose(
        _reference_ijk_to_ras(segmentation), _volume_ijk_to_ras(volume), atol=1e-9
    )
