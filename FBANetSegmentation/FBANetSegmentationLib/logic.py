"""Scene side of segmentation: volumes to files for the worker, and its files back into MRML.

Only MRML (``slicer`` VTK classes and storage nodes) is used, no Qt and no application object,
so the same code runs in Slicer, in ``PythonSlicer`` and under pytest with the ``slicer-core``
wheel. Slicer's world is RAS and fbanet's files are LPS; the storage nodes convert volumes and
segmentations, and regions of interest are passed as voxel indices (:func:`roiVoxelBox`).
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Any

from fbanet_slicer.host import DERIVED_MAP_ATTRIBUTE

logger = logging.getLogger(__name__)

TERMINOLOGY_TAG = "TerminologyEntry"
# Node reference from a segmentation FBANet created to the volume it segmented.
INPUT_VOLUME_ROLE = "FBANetInputVolume"


def _slicer() -> Any:
    import slicer

    return slicer


def _requireScene(node: Any) -> Any:
    scene = node.GetScene() if node is not None else None
    if scene is None:
        raise ValueError("the node is not in a scene")
    return scene


def exportVolume(volumeNode: Any, path: str | Path) -> Path:
    """Write a scalar volume node (its own IJK-to-RAS, no parent transform) to a file.

    Raises:
        ValueError: No voxels, or more than one component per voxel.
        RuntimeError: The file could not be written.
    """
    image = volumeNode.GetImageData() if volumeNode is not None else None
    if image is None or image.GetNumberOfPoints() == 0:
        raise ValueError("the input volume has no voxels; load an image first")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"{volumeNode.GetName()!r} has {image.GetNumberOfScalarComponents()} components per "
            "voxel; FBANet segments grayscale volumes (convert color images first)"
        )
    storage = _slicer().vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(volumeNode):
        raise RuntimeError(f"could not write {volumeNode.GetName()!r} to {path}")
    return Path(path)


def _worldToNodeTransform(node: Any) -> Any:
    """A transform from world RAS to ``node``'s local RAS (identity without a parent)."""
    slicer = _slicer()
    import vtk

    transform = vtk.vtkGeneralTransform()
    parent = node.GetParentTransformNode()
    if parent is not None:
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, parent, transform)
    return transform


def roiVoxelBox(roiNode: Any, volumeNode: Any) -> tuple[int, ...]:
    """The voxel box of ``volumeNode`` that holds a markups ROI: ``I0 J0 K0 I1 J1 K1``.

    The ROI's eight corners (it may be rotated, and under a transform) are brought into the
    volume's own space (through its parent transform, if any), then to voxel indices; the box
    of voxels containing them is returned (stop exclusive, clipped to the volume), as
    ``fbanet segment --roi`` takes. Working in the volume's index space keeps the box tight on
    oblique volumes, where a box of RAS/LPS corners would grow twice.

    Raises:
        ValueError: The ROI is empty or does not overlap the volume.
    """
    import vtk

    size = roiNode.GetSize()
    if min(size) <= 0:
        raise ValueError(f"the region of interest {roiNode.GetName()!r} is empty")
    objectToWorld = roiNode.GetObjectToWorldMatrix()
    toVolume = _worldToNodeTransform(volumeNode)
    rasToIjk = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(rasToIjk)
    indices = []
    for signs in itertools.product((-0.5, 0.5), repeat=3):
        offset = [a * n for a, n in zip(signs, size, strict=True)]
        corner = objectToWorld.MultiplyPoint([*offset, 1.0])[:3]
        local = toVolume.TransformPoint(corner)
        indices.append(rasToIjk.MultiplyPoint([*local, 1.0])[:3])
    dims = volumeNode.GetImageData().GetDimensions()
    start = [max(0, math.floor(min(c[a] for c in indices) + 0.5)) for a in range(3)]
    stop = [min(dims[a], math.floor(max(c[a] for c in indices) + 0.5) + 1) for a in range(3)]
    if any(b <= a for a, b in zip(start, stop, strict=True)):
        raise ValueError(
            f"the region of interest {roiNode.GetName()!r} does not overlap "
            f"{volumeNode.GetName()!r}; move it over the heart"
        )
    return (*start, *stop)


def loadScalarVolume(scene: Any, path: str | Path, name: str) -> Any:
    """Read a volume file into a new scalar volume node (no storage node kept)."""
    slicer = _slicer()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise RuntimeError(f"could not read the volume {path}")
    node.CreateDefaultDisplayNodes()
    return node


def loadSegmentationFile(scene: Any, path: str | Path, name: str) -> Any:
    """Read a ``.seg.nrrd`` into a new segmentation node (no storage node kept)."""
    slicer = _slicer()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise RuntimeError(f"could not read the segmentation {path}")
    return node


def saveSegmentation(segmentationNode: Any, path: str | Path) -> Path:
    """Write a segmentation node to a ``.seg.nrrd`` (segment names, colors, terminology kept)."""
    storage = _slicer().vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(True)
    if not storage.WriteData(segmentationNode):
        raise RuntimeError(f"could not write the segmentation to {path}")
    return Path(path)


def loadVolumeFile(scene: Any, path: str | Path, name: str | None = None) -> Any:
    """Read an image file (NRRD, NIfTI, MHA...) into a new scalar volume node."""
    path = Path(path)
    if name is None:
        name = path.name.split(".")[0]
    return loadScalarVolume(scene, path, name)


def segmentTerminology(segment: Any) -> str:
    """A segment's terminology entry string ('' if it has none), across Slicer versions."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology() or ""
    value = ""
    if segment.HasTag(TERMINOLOGY_TAG):
        import vtk

        holder = vtk.reference("")
        segment.GetTag(TERMINOLOGY_TAG, holder)
        value = str(holder)
    return value


def segmentIdsByName(segmentationNode: Any) -> dict[str, str]:
    """Segment name -> segment ID."""
    segmentation = segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    return {segmentation.GetSegment(i).GetName(): i for i in ids}


def replaceSegments(source: Any, target: Any) -> list[str]:
    """Copy every segment of ``source`` into ``target``, replacing segments of the same name.

    Returns the IDs of the copied segments in ``target``.
    """
    sourceSegmentation = source.GetSegmentation()
    targetSegmentation = target.GetSegmentation()
    existing = segmentIdsByName(target)
    copied = []
    for name, segmentId in segmentIdsByName(source).items():
        if name in existing:
            targetSegmentation.RemoveSegment(existing[name])
        before = set(segmentIdsByName(target).values())
        if not targetSegmentation.CopySegmentFromSegmentation(sourceSegmentation, segmentId):
            raise RuntimeError(f"could not copy the segment {name!r}")
        added = set(segmentIdsByName(target).values()) - before
        copied.extend(sorted(added))
    return copied


def placeNextTo(node: Any, reference: Any) -> int:
    """Put ``node`` under the same subject-hierarchy parent as ``reference``; returns its item."""
    scene = _requireScene(node)
    hierarchy = scene.GetSubjectHierarchyNode()
    referenceItem = hierarchy.GetItemByDataNode(reference)
    parent = hierarchy.GetItemParent(referenceItem) if referenceItem else 0
    if not parent:
        parent = hierarchy.GetSceneItemID()
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        item = hierarchy.CreateItem(parent, node)
    return item


def outputSegmentationFor(volumeNode: Any, segmentationNode: Any | None) -> Any | None:
    """The segmentation to write ``volumeNode``'s result into, None for a new one.

    A node FBANet created for another volume (the panel still shows the last result when
    the user picks the next volume) is never overwritten; any other node, one the user made
    or picked, is used as given.
    """
    if segmentationNode is None:
        return None
    madeFor = segmentationNode.GetNodeReferenceID(INPUT_VOLUME_ROLE)
    return None if madeFor and madeFor != volumeNode.GetID() else segmentationNode


def prepareOutputSegmentation(volumeNode: Any, target: Any | None, name: str) -> Any:
    """The segmentation node to fill: ``target``, or a new one; on the volume's geometry."""
    scene = _requireScene(volumeNode)
    if target is None:
        target = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        target.SetNodeReferenceID(INPUT_VOLUME_ROLE, volumeNode.GetID())
    if target.GetDisplayNode() is None:
        target.CreateDefaultDisplayNodes()
    # Transform first: the geometry is set relative to the segmentation's parent transform, and
    # one between the two parents would be baked in (applied twice under a shared transform).
    target.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    target.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    placeNextTo(target, volumeNode)
    return target


def addVolumeNextTo(
    volumeNode: Any, path: str | Path, name: str, unitRange: bool, kind: str = "map"
) -> Any:
    """Load a map computed for ``volumeNode``: same parent transform and hierarchy parent.

    The node is marked as a derived map (:data:`DERIVED_MAP_ATTRIBUTE` = ``kind``), so that
    FBANet Training never offers it as an unlabeled MRI.
    """
    node = loadScalarVolume(_requireScene(volumeNode), path, name)
    node.SetAttribute(DERIVED_MAP_ATTRIBUTE, kind)
    node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    display = node.GetDisplayNode()
    if unitRange and display is not None:
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, 1.0)
    placeNextTo(node, volumeNode)
    return node
