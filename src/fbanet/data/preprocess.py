"""Preprocessing, in one place: intensity normalization, region of interest, resampling.

:func:`prepare_input` is the one path from a scan to what the network sees, for the segmenter
and the ranking; training cases are z-scored by :func:`normalize` and their patches
re-normalized over random regions (:mod:`fbanet.data.intensity`).
Arrays are (X, Y, Z), as everywhere in fbanet. Physical coordinates are SimpleITK's (LPS).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from fbanet.config import IntensityNormalization
from fbanet.io.volumes import Geometry, Volume

logger = logging.getLogger(__name__)


def zscore(array: np.ndarray) -> np.ndarray:
    """Z-score an array over all its voxels.

    Args:
        array: Any shape, any real dtype.

    Returns:
        ``(array - mean) / std`` as float32, same shape (statistics in float64).

    Raises:
        ValueError: The array is empty or constant (std 0).
    """
    values = np.asarray(array, dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot z-score an empty array")
    mean = values.mean()
    std = values.std()
    if not std > 0:
        raise ValueError(f"the image is constant (every voxel = {mean:g}); cannot z-score it")
    return ((values - mean) / std).astype(np.float32)


def normalize(array: np.ndarray, mode: IntensityNormalization) -> np.ndarray:
    """Intensities as the model expects them, float32, same shape.

    Args:
        array: The image (X, Y, Z).
        mode: ``ZSCORE`` (over all voxels) or ``AS_STORED`` (already normalized, e.g. the LA
            HDF5 layout).

    Raises:
        ValueError: ``ZSCORE`` of an empty or constant array.
    """
    if mode is IntensityNormalization.AS_STORED:
        return np.ascontiguousarray(array, dtype=np.float32)
    return zscore(array)


@dataclass(frozen=True)
class PreparedInput:
    """A scan made ready for the network.

    Attributes:
        region: The normalized region of interest, on the scan's grid.
        network: ``region`` resampled to the model's spacing (``region`` itself when the
            model has no spacing or the spacings agree).
    """

    region: Volume
    network: Volume


@dataclass(frozen=True)
class IndexBox:
    """A box of voxel indices: ``start`` inclusive, ``stop`` exclusive, per axis (X, Y, Z)."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Slices selecting the box from an (X, Y, Z) array."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Size of the box."""
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]


def voxel_roi(volume: Volume, start: Sequence[int], stop: Sequence[int]) -> IndexBox:
    """A region of interest in voxel indices, clipped to the volume.

    Raises:
        ValueError: The box is empty or lies outside the volume.
    """
    if len(start) != 3 or len(stop) != 3:
        raise ValueError(f"a voxel ROI needs 3 start and 3 stop indices, got {start!r}, {stop!r}")
    shape = volume.array.shape
    lo = tuple(max(0, int(a)) for a in start)
    hi = tuple(min(s, int(b)) for s, b in zip(shape, stop, strict=True))
    if any(b <= a for a, b in zip(lo, hi, strict=True)):
        raise ValueError(
            f"the region of interest {list(start)}..{list(stop)} does not overlap the volume "
            f"of shape {shape}; give indices inside it"
        )
    return IndexBox(lo, hi)  # type: ignore[arg-type]


def physical_roi(volume: Volume, corner_a: Sequence[float], corner_b: Sequence[float]) -> IndexBox:
    """The voxel box covering a physical box (two opposite corners, mm, LPS).

    The eight corners are mapped to continuous indices (the volume may be rotated), and the
    box of voxels containing them is taken, clipped to the volume.
    """
    if len(corner_a) != 3 or len(corner_b) != 3:
        raise ValueError(f"a physical ROI needs two 3-D corners, got {corner_a!r}, {corner_b!r}")
    reference = volume.geometry.to_sitk(sitk.Image([1, 1, 1], sitk.sitkUInt8))
    indices = []
    for corner in itertools.product(*zip(corner_a, corner_b, strict=True)):
        indices.append(
            reference.TransformPhysicalPointToContinuousIndex([float(c) for c in corner])
        )
    points = np.array(indices)
    start = np.floor(points.min(axis=0) + 0.5).astype(int)
    stop = np.floor(points.max(axis=0) + 0.5).astype(int) + 1
    return voxel_roi(volume, start.tolist(), stop.tolist())


def crop(volume: Volume, box: IndexBox) -> Volume:
    """The sub-volume in ``box``, with the geometry that keeps it in place physically."""
    image = volume.to_sitk()
    origin = image.TransformIndexToPhysicalPoint([int(i) for i in box.start])
    geometry = Geometry(volume.geometry.spacing, tuple(origin), volume.geometry.direction)
    return Volume(np.ascontiguousarray(volume.array[box.slices]), geometry)


def resample(
    volume: Volume, spacing: Sequence[float], interpolator: int = sitk.sitkLinear
) -> Volume:
    """Resample ``volume`` to ``spacing`` over the same physical extent.

    The new grid keeps origin and direction; its size is round(size * old / new) per axis.
    """
    old = np.asarray(volume.geometry.spacing, dtype=float)
    new = np.asarray(spacing, dtype=float)
    if np.allclose(old, new, rtol=1e-5, atol=0):
        return volume
    size = np.maximum(1, np.round(np.asarray(volume.array.shape) * old / new)).astype(int)
    geometry = Geometry(
        (float(new[0]), float(new[1]), float(new[2])),
        volume.geometry.origin,
        volume.geometry.direction,
    )
    return resample_onto(volume, geometry, tuple(size.tolist()), interpolator)


def resample_onto(
    volume: Volume,
    geometry: Geometry,
    shape: Sequence[int],
    interpolator: int = sitk.sitkLinear,
    default: float = 0.0,
    extrapolate: bool = True,
) -> Volume:
    """Resample ``volume`` onto the grid (``geometry``, ``shape``).

    Args:
        volume: The source.
        geometry: Target grid's spacing, origin and direction.
        shape: Target grid's size (X, Y, Z).
        interpolator: A SimpleITK interpolator.
        default: Value outside the source when not extrapolating.
        extrapolate: Extend the nearest edge value beyond the source instead of ``default``.
    """
    source = volume.to_sitk()
    reference = geometry.to_sitk(sitk.Image([int(s) for s in shape], source.GetPixelID()))
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetInterpolator(interpolator)
    resampler.SetDefaultPixelValue(default)
    # Grids of different spacing over one extent differ by a fraction of a voxel at the rim;
    # extending the edge values there avoids a frame of default values.
    resampler.SetUseNearestNeighborExtrapolator(extrapolate)
    return Volume.from_sitk(resampler.Execute(source))


def resample_channels(
    channels: np.ndarray, source: Geometry, target: Geometry, shape: Sequence[int]
) -> np.ndarray:
    """Linearly resample each channel of (C, X, Y, Z) from one grid onto another."""
    out = np.empty((channels.shape[0], *shape), dtype=np.float32)
    for c in range(channels.shape[0]):
        moved = resample_onto(Volume(channels[c].astype(np.float32), source), target, shape)
        out[c] = moved.array
    return out


def prepare_input(
    volume: Volume,
    *,
    normalization: IntensityNormalization,
    spacing: Sequence[float] | None,
    normalized: bool = False,
    roi: IndexBox | None = None,
) -> PreparedInput:
    """What the network sees of ``volume``: cropped, normalized, resampled.

    ``ZSCORE`` z-scores the region the network is given (the ROI, or the whole volume), so the
    result does not depend on what lies outside it; training z-scores its patches over random
    regions to match (:mod:`fbanet.data.intensity`). ``AS_STORED`` models (the LA HDF5 layout,
    for the paper) take an already normalized image as it is, and z-score any other over the
    whole volume before cropping, as that layout was made.

    Args:
        volume: The scan, any size, spacing and orientation.
        normalization: The model's intensity normalization.
        spacing: The model's voxel size (mm, X, Y, Z), or None to keep the scan's.
        normalized: The image is in the LA HDF5 layout, already normalized as stored. Only
            ``AS_STORED`` models use it as it is; z-scoring a region is the same for any
            image that differs from it by scale and shift.
        roi: Region to keep (default: the whole volume).
    """
    if normalization is IntensityNormalization.ZSCORE:
        region = crop(volume, roi) if roi is not None else volume
        region = Volume(zscore(region.array), region.geometry)
    else:
        mode = IntensityNormalization.AS_STORED if normalized else IntensityNormalization.ZSCORE
        whole = Volume(normalize(volume.array, mode), volume.geometry)
        region = crop(whole, roi) if roi is not None else whole
    network = resample(region, spacing) if spacing is not None else region
    return PreparedInput(region, network)
