"""FBANet Segmentation's logic against real MRML (slicer-core) and a real worker process.

One run segments a synthetic ellipsoid in a volume whose IJK-to-RAS is rotated, anisotropic,
offset and mirrored, with probability and uncertainty maps; the tests check where and what
came back. The model is a real fbanet model file (see ``testing.thresholdModel``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import new_scene

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402  (installed with slicer-core)
from FBANetSegmentationLib import logic, testing  # noqa: E402
from FBANetSegmentationLib.job import (  # noqa: E402
    JobStatus,
    SegmentationJob,
    SegmentationOptions,
    SegmentationResult,
)

from fbanet.protocol import JobState  # noqa: E402
from fbanet_slicer.host import DERIVED_MAP_ATTRIBUTE  # noqa: E402

LEFT_ATRIUM_COLOR = (0.85, 0.4, 0.35)


@dataclass
class Run:
    scene: Any
    volume: Any
    folder: int
    case: testing.SyntheticCase
    result: SegmentationResult
    statuses: list[JobStatus]


def add_volume(scene: Any, case: testing.SyntheticCase, ijk_to_ras: np.ndarray, name: str) -> Any:
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(volume, case.image.transpose(2, 1, 0).copy())
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    volume.CreateDefaultDisplayNodes()
    return volume


def labelmap_on(segmentation: Any, segment_id: str, volume: Any) -> np.ndarray:
    """The segment resampled onto the volume's grid, (I, J, K)."""
    scene = volume.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
        segmentation, [segment_id], labelmap, volume
    )
    assert ok
    array = slicer.util.arrayFromVolume(labelmap).transpose(2, 1, 0).copy()
    scene.RemoveNode(labelmap)
    return array


def segment_world_points(segmentation: Any, segment_id: str) -> np.ndarray:
    """RAS positions (N, 3) of the segment's voxels, from its own stored geometry."""
    image = (
        segmentation.GetSegmentation().GetSegment(segment_id).GetRepresentation("Binary labelmap")
    )
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    extent = image.GetExtent()
    array = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    shape = [extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1]
    kji = np.argwhere(array.reshape(shape) > 0)
    ijk = kji[:, ::-1] + np.array(extent[0::2])
    homogeneous = np.c_[ijk, np.ones(len(ijk))]
    return (homogeneous @ slicer.util.arrayFromVTKMatrix(matrix).T)[:, :3]


def mask_world_points(mask: np.ndarray, ijk_to_ras: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask)
    return (np.c_[ijk, np.ones(len(ijk))] @ ijk_to_ras.T)[:, :3]


@pytest.fixture(scope="module")
def oblique_run(tmp_path_factory: pytest.TempPathFactory, threshold_model: Path) -> Iterator[Run]:
    scene = new_scene()
    case = testing.syntheticCase()
    volume = add_volume(scene, case, testing.obliqueIjkToRas(), "oblique")
    hierarchy = scene.GetSubjectHierarchyNode()
    folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), "Patient 1")
    hierarchy.CreateItem(folder, volume)
    options = SegmentationOptions(
        threshold_model, device="cpu", probabilityMap=True, uncertaintyMap=True
    )
    job = SegmentationJob(volume, options, workDir=tmp_path_factory.mktemp("work"))
    job.start()
    statuses: list[JobStatus] = []
    result = job.waitForResult(
        timeout=300, callback=lambda s: statuses.append(JobStatus(s.state, s.done, s.total))
    )
    yield Run(scene, volume, folder, case, result, statuses)
    scene.Clear(True)


def the_segment(run: Run) -> tuple[str, Any]:
    ids = logic.segmentIdsByName(run.result.segmentationNode)
    assert list(ids) == ["Left atrium"]
    segment_id = ids["Left atrium"]
    return segment_id, run.result.segmentationNode.GetSegmentation().GetSegment(segment_id)


def test_the_segment_lies_where_the_structure_is(oblique_run: Run) -> None:
    run = oblique_run
    segment_id, _ = the_segment(run)
    on_grid = labelmap_on(run.result.segmentationNode, segment_id, run.volume) > 0
    assert testing.dice(on_grid, run.case.mask) > 0.99
    # Independently of any resampling: the voxels' RAS positions, from the segment's own
    # stored geometry, against the ellipsoid's positions through the volume's IJK-to-RAS.
    found = segment_world_points(run.result.segmentationNode, segment_id)
    expected = mask_world_points(run.case.mask, testing.obliqueIjkToRas())
    assert len(found) == pytest.approx(len(expected), rel=0.01)
    np.testing.assert_allclose(found.mean(axis=0), expected.mean(axis=0), atol=0.05)
    np.testing.assert_allclose(found.min(axis=0), expected.min(axis=0), atol=0.05)
    np.testing.assert_allclose(found.max(axis=0), expected.max(axis=0), atol=0.05)


def test_the_segment_is_named_colored_and_coded(oblique_run: Run) -> None:
    _, segment = the_segment(oblique_run)
    assert segment.GetName() == "Left atrium"
    assert segment.GetColor() == pytest.approx(LEFT_ATRIUM_COLOR)
    terminology = logic.segmentTerminology(segment)
    assert "SCT^123037004^Anatomical Structure" in terminology
    assert "SCT^82471001^Left atrium" in terminology


def test_the_segmentation_references_the_volume_geometry(oblique_run: Run) -> None:
    segmentation = oblique_run.result.segmentationNode
    role = segmentation.GetReferenceImageGeometryReferenceRole()
    assert segmentation.GetNodeReferenceID(role) == oblique_run.volume.GetID()
    assert segmentation.GetName() == "oblique FBANet"
    assert segmentation.GetDisplayNode() is not None


def test_results_are_placed_next_to_the_volume(oblique_run: Run) -> None:
    hierarchy = oblique_run.scene.GetSubjectHierarchyNode()
    result = oblique_run.result
    for node in (result.segmentationNode, result.probabilityNode, result.uncertaintyNode):
        item = hierarchy.GetItemByDataNode(node)
        assert item and hierarchy.GetItemParent(item) == oblique_run.folder


def test_probability_and_uncertainty_maps_share_the_volume_grid(oblique_run: Run) -> None:
    run = oblique_run
    expected = mask_world_points(run.case.mask, testing.obliqueIjkToRas())
    for node in (run.result.probabilityNode, run.result.uncertaintyNode):
        # Same voxel centres in space (a reader may store a mirrored axis the other way round).
        np.testing.assert_allclose(grid_corners(node), grid_corners(run.volume), atol=1e-3)
    probability = run.result.probabilityNode
    inside = volume_world_points(probability, slicer.util.arrayFromVolume(probability) > 0.5)
    np.testing.assert_allclose(inside.mean(axis=0), expected.mean(axis=0), atol=0.05)
    assert len(inside) == len(expected)
    uncertainty = slicer.util.arrayFromVolume(run.result.uncertaintyNode)
    assert float(uncertainty.max()) < 0.05  # the test model's three decoders agree
    assert probability.GetName() == "oblique FBANet probability"
    # Marked as FBANet's own maps: FBANet Training never offers them as unlabeled MRI.
    kinds = [
        node.GetAttribute(DERIVED_MAP_ATTRIBUTE)
        for node in (probability, run.result.uncertaintyNode)
    ]
    assert kinds == ["probability", "uncertainty"]


def _ijk_to_ras(node: Any) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_world_points(node: Any, kji_mask: np.ndarray) -> np.ndarray:
    """RAS positions of the voxels where ``kji_mask`` (as arrayFromVolume) is true."""
    ijk = np.argwhere(kji_mask)[:, ::-1]
    return (np.c_[ijk, np.ones(len(ijk))] @ _ijk_to_ras(node).T)[:, :3]


def grid_corners(node: Any) -> np.ndarray:
    """The RAS positions of the 8 corner voxels, sorted."""
    dims = node.GetImageData().GetDimensions()
    corners = np.array([[i, j, k, 1.0] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1)
                        for k in (0, dims[2] - 1)])  # fmt: skip
    ras = (corners @ _ijk_to_ras(node).T)[:, :3]
    return ras[np.lexsort(np.round(ras, 3).T)]


def test_progress_is_reported_until_finished(oblique_run: Run) -> None:
    statuses = oblique_run.statuses
    assert statuses[-1].state is JobState.SUCCEEDED
    fractions = [s.fraction for s in statuses if s.fraction is not None]
    assert fractions and fractions[-1] == 1.0
    assert all(0 < f <= 1 for f in fractions)
    assert oblique_run.result.seconds > 0


def test_saved_segmentation_reloads_with_name_color_and_terminology(
    oblique_run: Run, tmp_path: Path
) -> None:
    path = logic.saveSegmentation(oblique_run.result.segmentationNode, tmp_path / "la.seg.nrrd")
    scene = new_scene()
    reloaded = logic.loadSegmentationFile(scene, path, "reloaded")
    ids = logic.segmentIdsByName(reloaded)
    segment = reloaded.GetSegmentation().GetSegment(ids["Left atrium"])
    assert segment.GetColor() == pytest.approx(LEFT_ATRIUM_COLOR)
    assert "SCT^82471001^Left atrium" in logic.segmentTerminology(segment)
    # fbanet's own reader (LPS) sees the same segment at the same place.
    from fbanet.io.segmentation import read_segmentation
    from fbanet.io.segments import LEFT_ATRIUM

    volume, segments = read_segmentation(path)
    assert [(s.name, s.terminology) for s in segments] == [("Left atrium", LEFT_ATRIUM)]
    lps = np.c_[np.argwhere(volume.array == 1), np.ones(int((volume.array == 1).sum()))]
    direction = np.asarray(volume.geometry.direction).reshape(3, 3)
    points = lps[:, :3] @ (direction * volume.geometry.spacing).T + volume.geometry.origin
    ras = points * np.array([-1.0, -1.0, 1.0])
    expected = mask_world_points(oblique_run.case.mask, testing.obliqueIjkToRas())
    np.testing.assert_allclose(ras.mean(axis=0), expected.mean(axis=0), atol=0.05)


def test_replacing_segments_keeps_the_others(oblique_run: Run, tmp_path: Path) -> None:
    path = logic.saveSegmentation(oblique_run.result.segmentationNode, tmp_path / "la.seg.nrrd")
    scene = oblique_run.scene
    target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "edited")
    target.GetSegmentation().AddEmptySegment("other", "Other")
    for _ in range(2):  # a second run replaces "Left atrium" instead of adding another
        loaded = logic.loadSegmentationFile(scene, path, "loaded")
        logic.replaceSegments(loaded, target)
        scene.RemoveNode(loaded)
    assert sorted(logic.segmentIdsByName(target)) == ["Left atrium", "Other"]
