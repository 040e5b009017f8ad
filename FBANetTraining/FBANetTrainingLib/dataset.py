"""From scene nodes to a training dataset on disk (no Qt: runs under pytest with slicer-core).

Each labeled example is a (volume, segmentation, segment) triple. Its label map is made by
Slicer's own segmentation export with the volume as reference geometry, so it lies on the
volume's grid voxel for voxel whatever the segmentation's geometry or transform, then
binarised (the chosen segment = 1). ``writer.py`` writes them as NRRD, next to a
``manifest.json`` that ``fbanet train`` reads. Every node created on the way is removed
again: the scene is left as it was found.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from fbanet_slicer.host import DERIVED_MAP_ATTRIBUTE


class InputError(ValueError):
    """The panel's inputs cannot be used; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class LabeledExample:
    """One annotated scan: node IDs of the volume and segmentation, and the segment's ID."""

    volumeNodeId: str
    segmentationNodeId: str
    segmentId: str


@dataclasses.dataclass(frozen=True)
class ExportedCase:
    """A case of the dataset: its name, the node it came from and its files."""

    name: str
    volumeNodeId: str
    image: Path
    label: Path | None = None


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What :func:`exportDataset` wrote."""

    folder: Path
    manifest: Path
    labeled: tuple[ExportedCase, ...]
    unlabeled: tuple[ExportedCase, ...]
    validation: tuple[ExportedCase, ...]


def isScalarVolume(node: Any) -> bool:
    """A single-component scalar volume with image data (not a label map)."""
    return (
        node is not None
        and node.IsA("vtkMRMLScalarVolumeNode")
        and not node.IsA("vtkMRMLLabelMapVolumeNode")
        and node.GetImageData() is not None
        and node.GetImageData().GetNumberOfScalarComponents() == 1
    )


def scalarVolumeNodes(scene: Any) -> list[Any]:
    """The scene's scalar volumes (label maps excluded), in scene order."""
    nodes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    return [nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())
            if isScalarVolume(nodes.GetItemAsObject(i))]  # fmt: skip


def unlabeledCandidates(scene: Any) -> list[Any]:
    """The scalar volumes that may be MRI to train on: not FBANet's own probability and
    uncertainty maps (marked :data:`DERIVED_MAP_ATTRIBUTE`), not nodes hidden from editors."""
    return [
        node
        for node in scalarVolumeNodes(scene)
        if not node.GetAttribute(DERIVED_MAP_ATTRIBUTE) and not node.GetHideFromEditors()
    ]


def segmentName(segmentationNode: Any, segmentId: str) -> str:
    """The segment's name, or its ID when it has none."""
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    return segment.GetName() if segment is not None and segment.GetName() else segmentId


def describeExample(scene: Any, example: LabeledExample) -> str:
    """'volume / segmentation / segment' for messages and tables."""
    volume = scene.GetNodeByID(example.volumeNodeId)
    segmentation = scene.GetNodeByID(example.segmentationNodeId)
    segment = segmentName(segmentation, example.segmentId) if segmentation else example.segmentId
    names = [node.GetName() if node else "(deleted)" for node in (volume, segmentation)]
    return f"{names[0]} / {names[1]} / {segment}"


@contextlib.contextmanager
def temporaryNodes(scene: Any) -> Iterator[None]:
    """Remove, on exit, every node added to ``scene`` inside the block (singletons stay)."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in reversed(added):
            if node is not None and node.GetID() not in before and not node.IsSingleton():
                scene.RemoveNode(node)


def resolveExample(scene: Any, example: LabeledExample, number: int = 1) -> tuple[Any, Any]:
    """The (volume, segmentation) nodes of an example; InputError if either is unusable."""
    where = f"Labeled example {number}"
    volume = scene.GetNodeByID(example.volumeNodeId) if example.volumeNodeId else None
    segmentation = (
        scene.GetNodeByID(example.segmentationNodeId) if example.segmentationNodeId else None
    )
    if volume is None or segmentation is None:
        raise InputError(
            f"{where}: its volume or segmentation is no longer in the scene; remove the row"
        )
    if not isScalarVolume(volume):
        raise InputError(f"{where}: '{volume.GetName()}' is not a scalar volume with image data")
    if not segmentation.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"{where}: '{segmentation.GetName()}' is not a segmentation")
    if segmentation.GetSegmentation().GetSegment(example.segmentId) is None:
        raise InputError(
            f"{where}: segmentation '{segmentation.GetName()}' has no segment "
            f"'{example.segmentId}' any more; "
            "pick a segment again"
        )
    return volume, segmentation


def segmentVoxelCount(segmentationNode: Any, segmentId: str) -> int:
    """Voxels of the segment in its own binary labelmap (0 for an empty segment)."""
    converter = slicer.vtkSegmentationConverter
    segmentationNode.GetSegmentation().CreateRepresentation(
        converter.GetBinaryLabelmapRepresentationName()
    )
    image = slicer.vtkOrientedImageData()
    if not segmentationNode.GetBinaryLabelmapRepresentation(segmentId, image):
        return 0
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        return 0
    return int(np.count_nonzero(numpy_support.vtk_to_numpy(scalars)))


def _exportToLabelmapNode(scene: Any, segmentation: Any, segmentId: str, volume: Any) -> Any:
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__FBANetTrainingExport__")
    segmentIds = vtk.vtkStringArray()
    segmentIds.InsertNextValue(segmentId)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    referenceExtent = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
    if not logic.ExportSegmentsToLabelmapNode(
        segmentation, segmentIds, labelmap, volume, referenceExtent
    ):
        raise InputError(
            f"Slicer could not export segment '{segmentName(segmentation, segmentId)}'"
        )
    exported = labelmap.GetImageData().GetDimensions()
    expected = volume.GetImageData().GetDimensions()
    if tuple(exported) != tuple(expected):
        raise InputError(f"the exported label map has size {exported}, its volume {expected}")
    return labelmap


def _binarize(labelmap: Any) -> int:
    """Set the exported label map to 0/1 in place; returns its foreground voxel count."""
    scalars = labelmap.GetImageData().GetPointData().GetScalars()
    values = numpy_support.vtk_to_numpy(scalars)
    values[:] = values > 0
    scalars.Modified()
    labelmap.GetImageData().Modified()
    return int(np.count_nonzero(values))


def checkedLabelmap(scene: Any, example: LabeledExample, number: int) -> Any:
    """Export and binarise; InputError when the segment is empty or misses its volume."""
    volume, segmentation = resolveExample(scene, example, number)
    name = segmentName(segmentation, example.segmentId)
    where = f"Labeled example {number} ({describeExample(scene, example)})"
    if segmentVoxelCount(segmentation, example.segmentId) == 0:
        raise InputError(
            f"{where}: segment '{name}' is empty; paint it in the Segment Editor or pick "
            "another segment"
        )
    labelmap = _exportToLabelmapNode(scene, segmentation, example.segmentId, volume)
    if _binarize(labelmap) == 0:
        raise InputError(
            f"{where}: segmentation '{segmentation.GetName()}' does not overlap volume "
            f"'{volume.GetName()}'; is it the segmentation of this volume (check transforms)?"
        )
    return labelmap


def exportLabelArray(scene: Any, example: LabeledExample, number: int = 1) -> np.ndarray:
    """The example's 0/1 label map on its volume's grid, (K, J, I) uint8; scene unchanged."""
    with temporaryNodes(scene):
        labelmap = checkedLabelmap(scene, example, number)
        scalars = labelmap.GetImageData().GetPointData().GetScalars()
        dimensions = labelmap.GetImageData().GetDimensions()
        return numpy_support.vtk_to_numpy(scalars).reshape(dimensions[::-1]).astype(np.uint8)


def checkLabeledExamples(scene: Any, examples: Sequence[LabeledExample]) -> list[str]:
    """Every problem with the labeled examples, one message each (empty list: all fine)."""
    if not examples:
        return ["No labeled example: add at least one (volume, segmentation, segment) row"]
    problems: list[str] = []
    for number, example in enumerate(examples, start=1):
        try:
            exportLabelArray(scene, example, number)
        except InputError as error:
            problems.append(str(error))
    return problems


def writeVolume(volumeNode: Any, path: str | Path) -> Path:
    """Write a volume (its own grid, without parent transforms) as NRRD; the scene is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(volumeNode):
        raise OSError(f"could not write volume '{volumeNode.GetName()}' to {path}")
    return path


def safeName(text: str, fallback: str = "case") -> str:
    """A file-name-safe version of a node name."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text or "").strip("._")
    return cleaned or fallback
