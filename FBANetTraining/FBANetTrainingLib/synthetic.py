"""Synthetic scenes for the module's tests and self-test: bright ellipsoids in noise.

Every volume has its own geometry (rotation, anisotropic spacing, offset origin) and the
ellipsoid is defined in physical (RAS) coordinates, so a label map that lands on its
volume voxel for voxel can be checked against an independent rasterisation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support


def rotationMatrix(axis: int, degrees: float) -> np.ndarray:
    """3x3 rotation about axis 0 (R), 1 (A) or 2 (S)."""
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    rotation = np.eye(3)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    return rotation


@dataclasses.dataclass(frozen=True)
class GridGeometry:
    """A voxel grid: shape (I, J, K), spacing (mm), origin (RAS) and a rotation."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotationAxis: int = 2
    rotationDegrees: float = 0.0

    def ijkToRas(self) -> np.ndarray:
        """4x4 IJK-to-RAS matrix (numpy)."""
        matrix = np.eye(4)
        rotation = rotationMatrix(self.rotationAxis, self.rotationDegrees)
        matrix[:3, :3] = rotation @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def vtkIjkToRas(self) -> Any:
        """The IJK-to-RAS matrix as a vtkMatrix4x4."""
        matrix = vtk.vtkMatrix4x4()
        for row, values in enumerate(self.ijkToRas()):
            for column, value in enumerate(values):
                matrix.SetElement(row, column, float(value))
        return matrix

    def rasPoints(self) -> np.ndarray:
        """RAS coordinates of every voxel centre, shape (K, J, I, 3)."""
        k, j, i = np.meshgrid(*(np.arange(n) for n in self.shape[::-1]), indexing="ij")
        ijk = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(np.float64)
        return (ijk @ self.ijkToRas().T)[..., :3]


def ellipsoidMask(geometry: GridGeometry, center: Any, radii: Any) -> np.ndarray:
    """Voxels (K, J, I) of ``geometry`` inside the RAS ellipsoid (center, radii in mm)."""
    offsets = (geometry.rasPoints() - np.asarray(center)) / np.asarray(radii)
    return np.asarray((offsets**2).sum(axis=-1) <= 1.0)


def imageDataFromArray(array: np.ndarray, imageData: Any = None) -> Any:
    """A vtkImageData (or the given one) holding ``array`` (K, J, I)."""
    imageData = imageData if imageData is not None else vtk.vtkImageData()
    imageData.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    vtkArray = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    imageData.GetPointData().SetScalars(vtkArray)
    return imageData


def addVolume(
    scene: Any, name: str, geometry: GridGeometry, center: Any, radii: Any, seed: int = 0
) -> Any:
    """A scalar volume (int16) with a bright ellipsoid in noise."""
    rng = np.random.default_rng(seed)
    inside = ellipsoidMask(geometry, center, radii)
    values = 200.0 * inside + 40.0 + rng.normal(0.0, 25.0, inside.shape)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetAndObserveImageData(imageDataFromArray(values.astype(np.int16)))
    node.SetIJKToRASMatrix(geometry.vtkIjkToRas())
    node.CreateDefaultDisplayNodes()
    return node


def addSegmentation(
    scene: Any,
    name: str,
    geometry: GridGeometry,
    center: Any,
    radii: Any,
    segmentName: str = "Left atrium",
) -> tuple[Any, str]:
    """A segmentation with one segment: the ellipsoid rasterised on ``geometry``.

    An empty segment results when ``radii`` is None.
    """
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    if radii is None:
        segmentId = node.GetSegmentation().AddEmptySegment("", segmentName)
        return node, segmentId
    mask = ellipsoidMask(geometry, center, radii).astype(np.uint8)
    image = slicer.vtkOrientedImageData()
    imageDataFromArray(mask, image)
    image.SetImageToWorldMatrix(geometry.vtkIjkToRas())
    segmentId = node.AddSegmentFromBinaryLabelmapRepresentation(
        image, segmentName, [0.85, 0.4, 0.35]
    )
    return node, segmentId


@dataclasses.dataclass
class SyntheticScene:
    """What :func:`buildSyntheticScene` added: (volume, segmentation, segment id) and volumes."""

    labeled: list[tuple[Any, Any, str]]
    unlabeled: list[Any]
    centers: dict[str, np.ndarray]
    radii: tuple[float, float, float] = (7.0, 6.0, 5.5)


# Labeled case 1 is drawn on a finer, unrotated grid than its volume: the export must resample.
LABELED_GEOMETRIES = [
    GridGeometry((26, 24, 18), (1.0, 1.1, 1.6), (12.0, -18.0, 6.0), 2, 25.0),
    GridGeometry((30, 28, 12), (0.9, 0.8, 2.5), (-30.0, 10.0, -9.0), 0, 15.0),
]
UNLABELED_GEOMETRIES = [
    GridGeometry((24, 26, 20), (1.2, 1.0, 1.0), (3.0, 4.0, -5.0), 1, -20.0),
    GridGeometry((22, 22, 16), (1.0, 1.0, 1.8), (-8.0, -6.0, 2.0), 2, 40.0),
]


def gridCenter(geometry: GridGeometry) -> np.ndarray:
    """RAS of the grid's central voxel."""
    middle = [(n - 1) / 2.0 for n in geometry.shape] + [1.0]
    return (geometry.ijkToRas() @ np.array(middle))[:3]


def buildSyntheticScene(
    scene: Any,
    labeledCount: int = 2,
    unlabeledCount: int = 2,
    radii: tuple[float, float, float] = (7.0, 6.0, 5.5),
) -> SyntheticScene:
    """Volumes of different geometry with an ellipsoid each; the labeled ones segmented."""
    labeled: list[tuple[Any, Any, str]] = []
    unlabeled: list[Any] = []
    centers: dict[str, np.ndarray] = {}
    for index in range(labeledCount):
        geometry = LABELED_GEOMETRIES[index % len(LABELED_GEOMETRIES)]
        center = gridCenter(geometry) + np.array([1.5, -1.0, 0.5])
        volume = addVolume(scene, f"Labeled{index + 1}", geometry, center, radii, seed=index)
        drawing = geometry
        if index % 2 == 1:  # segment drawn on another grid than its volume
            drawing = GridGeometry((60, 60, 50), (0.5, 0.5, 0.5), tuple(center - 15.0))
        segmentation, segmentId = addSegmentation(
            scene, f"Labeled{index + 1} segmentation", drawing, center, radii
        )
        labeled.append((volume, segmentation, segmentId))
        centers[volume.GetID()] = center
    for index in range(unlabeledCount):
        geometry = UNLABELED_GEOMETRIES[index % len(UNLABELED_GEOMETRIES)]
        center = gridCenter(geometry)
        volume = addVolume(scene, f"Unlabeled{index + 1}", geometry, center, radii, seed=50 + index)
        unlabeled.append(volume)
        centers[volume.GetID()] = center
    return SyntheticScene(labeled, unlabeled, centers, radii)


def volumeGeometry(volumeNode: Any) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The GridGeometry-like IJK-to-RAS (numpy 4x4) and shape (I, J, K) of a volume node."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    array = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return array, volumeNode.GetImageData().GetDimensions()
