"""Intensity normalization of training patches, as inference will see the user's region.

At inference an image is z-scored over the region the network is given: the file, or the
region of interest in it (:func:`fbanet.data.preprocess.prepare_input`). How much lies around
the structure in that region is the user's choice, and it moves the mean and spread that the
z-score divides out. So training z-scores each patch over a random region around the
structure, from tight to the whole volume, and then scales and shifts it a little: the network
learns the intensities of every crop a user may give, not of one. Often it also blanks what
lies outside that region to 0, as inference pads a small crop, so a tight crop's missing
context is no surprise either.

Arrays are (X, Y, Z). Everything here is a pure function of its inputs and a random generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fbanet.data.preprocess import IndexBox

Triple = tuple[int, int, int]

# Without a label, a region keeps at least this fraction of each side of the volume: a user's
# region of interest is chosen around the structure, never a sliver of the scan.
UNLABELED_MIN_FRACTION = 0.5


@dataclass(frozen=True)
class RegionNormalization:
    """How a training patch is normalized: over a random region, then scaled and shifted.

    Attributes:
        margin: Largest margin (voxels, X, Y, Z) added on each side of the label's box to
            make the region, each side drawn uniformly from 0 to it; clipped to the volume.
        scale: Multiply by a factor drawn uniformly from [1 - scale, 1 + scale].
        shift: Then add an offset drawn uniformly from [-shift, shift].
        crop_probability: How often the voxels outside the region are set to 0 (inference
            pads a region with 0 up to its window), as if the user had cropped there.
    """

    margin: Triple
    scale: float = 0.1
    shift: float = 0.1
    crop_probability: float = 0.0

    def __post_init__(self) -> None:
        if len(self.margin) != 3 or any(int(m) != m or m < 0 for m in self.margin):
            raise ValueError(f"margin must be 3 voxel counts >= 0, got {self.margin!r}")
        if not 0 <= self.scale < 1:
            raise ValueError(f"scale must be in [0, 1), got {self.scale!r}")
        if not self.shift >= 0:
            raise ValueError(f"shift must be >= 0, got {self.shift!r}")
        if not 0 <= self.crop_probability <= 1:
            raise ValueError(f"crop_probability must be in [0, 1], got {self.crop_probability!r}")

    @classmethod
    def from_mm(
        cls,
        margin_mm: float,
        spacing: Sequence[float],
        scale: float,
        shift: float,
        crop_probability: float = 0.0,
    ) -> RegionNormalization:
        """The margin given in millimetres, at the training volumes' ``spacing`` (X, Y, Z)."""
        margin = tuple(round(margin_mm / float(s)) for s in spacing)
        return cls(margin, scale, shift, crop_probability)  # type: ignore[arg-type]


def foreground_box(label: np.ndarray) -> IndexBox | None:
    """The smallest box holding every voxel of ``label`` above 0, or None if there is none."""
    found = np.nonzero(label)
    if not found[0].size:
        return None
    start = tuple(int(axis.min()) for axis in found)
    stop = tuple(int(axis.max()) + 1 for axis in found)
    return IndexBox(start, stop)  # type: ignore[arg-type]


def random_region(
    shape: Sequence[int], focus: IndexBox | None, margin: Sequence[int], rng: np.random.Generator
) -> IndexBox:
    """A random region of a volume of ``shape``, as a user might give it.

    Args:
        shape: The volume (X, Y, Z).
        focus: The structure's box: the region holds it, with a random margin on each side.
            The margins share one random width, a fraction of ``margin`` drawn uniformly, so
            tight regions are as common as wide ones; each side then draws from 0 to that
            width. None (no label): each side of the region spans between half and all of
            the volume, at a random place.
        margin: Largest margin per axis (voxels).
        rng: Random generator.
    """
    start, stop = [], []
    width = float(rng.uniform())
    for axis, size in enumerate(shape):
        if focus is None:
            length = int(rng.integers(int(np.ceil(size * UNLABELED_MIN_FRACTION)), size + 1))
            low = int(rng.integers(0, size - length + 1))
            high = low + length
        else:
            most = round(margin[axis] * width)
            low = max(0, focus.start[axis] - int(rng.integers(0, most + 1)))
            high = min(size, focus.stop[axis] + int(rng.integers(0, most + 1)))
        start.append(low)
        stop.append(high)
    return IndexBox(tuple(start), tuple(stop))  # type: ignore[arg-type]


def zscore_coefficients(image: np.ndarray, region: IndexBox) -> tuple[float, float]:
    """``(a, b)`` such that ``image * a + b`` is z-scored over ``region``.

    A constant region (std 0) gives ``a = 1`` and centres it at 0.
    """
    values = image[region.slices].astype(np.float64)
    mean, std = float(values.mean()), float(values.std())
    if not std > 0:
        return 1.0, -mean
    return 1.0 / std, -mean / std


def region_normalized(
    image: np.ndarray,
    focus: IndexBox | None,
    settings: RegionNormalization,
    rng: np.random.Generator,
) -> np.ndarray:
    """``image`` z-scored over a random region, scaled and shifted at random, maybe cropped.

    Args:
        image: The whole training volume (X, Y, Z).
        focus: The structure's box (see :func:`random_region`), or None.
        settings: Margins, scale, shift and how often to crop.
        rng: Random generator.

    Returns:
        A new float32 array of ``image``'s shape; with probability
        ``settings.crop_probability`` every voxel outside the region is 0.
    """
    region = random_region(image.shape, focus, settings.margin, rng)
    a, b = zscore_coefficients(image, region)
    gain = float(rng.uniform(1 - settings.scale, 1 + settings.scale))
    a, b = np.float32(a * gain), np.float32(b * gain + rng.uniform(-settings.shift, settings.shift))
    if rng.uniform() < settings.crop_probability:
        out = np.zeros(image.shape, dtype=np.float32)
        out[region.slices] = image[region.slices] * a + b
        return out
    return (image * a + b).astype(np.float32, copy=False)
