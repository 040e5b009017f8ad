"""Synthetic "left atrium" phantoms: a small, learnable cohort for demos and tests.

Each phantom is a bright, blob-shaped chamber (a union of overlapping ellipsoids, smoothly
deformed) in darker tissue that holds distractor structures of similar but lower
intensity (blobs and a vessel-like tube), with partial-volume blur, a smooth multiplicative
bias field and Rician noise, as in a contrast-enhanced MRI. Everything is drawn from the
generator that is passed in, so a seed fixes the cohort exactly.

Arrays are (X, Y, Z), like every volume in fbanet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from fbanet.config import check_int
from fbanet.data.cases import Case
from fbanet.data.preprocess import zscore
from fbanet.io.volumes import Geometry, Volume

DEFAULT_SHAPE = (64, 64, 48)
DEFAULT_SPACING = (1.25, 1.25, 1.25)
# Share of the volume the chamber fills; LA scans cropped around the atrium are in this range.
FOREGROUND_FRACTION = (0.035, 0.07)
MIN_SIDE = 16

# Mean intensities before bias and noise: the chamber is clearly the brightest structure, so
# a few minutes of CPU training can learn it, yet distractors make intensity alone imperfect.
_TISSUE = 0.30
_CHAMBER = 1.0
_DISTRACTOR = (0.52, 0.72)
_NOISE_SIGMA = (0.05, 0.08)
_BIAS_STRENGTH = 0.3  # half-range of the log bias field
_SCALE = 1000.0  # MRI-like magnitudes; fbanet z-scores anyway


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    values = tuple(shape)
    if len(values) != 3 or any(
        isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in values
    ):
        raise TypeError(f"shape must be 3 ints (X, Y, Z), got {shape!r}")
    if any(s < MIN_SIDE for s in values):
        raise ValueError(f"every side of shape must be >= {MIN_SIDE} voxels, got {shape!r}")
    return tuple(int(s) for s in values)  # type: ignore[return-value]


def _normalized_grid(shape: tuple[int, int, int]) -> np.ndarray:
    """Coordinates (3, X, Y, Z) in [-1, 1] along each axis."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-8)


def _ellipsoid_distance(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Normalized radius ((x - c) / r) norm: < 1 inside an axis-aligned ellipsoid."""
    offset = (grid - centre[:, None, None, None]) / radii[:, None, None, None]
    return np.sqrt((offset**2).sum(axis=0))


def _chamber(rng: np.random.Generator, grid: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """One connected blob: 2-4 overlapping ellipsoids, deformed, at a random volume share."""
    count = int(rng.integers(2, 5))
    main = rng.uniform(-0.15, 0.15, 3)
    distance = None
    for _ in range(count):
        radii = rng.uniform(0.22, 0.38, 3)
        # Lobes sit within their own radius of the main centre, so the union stays connected.
        centre = main + rng.uniform(-0.5, 0.5, 3) * radii
        d = _ellipsoid_distance(grid, centre, radii)
        distance = d if distance is None else np.minimum(distance, d)
    assert distance is not None
    distance = distance + 0.18 * _smooth_noise(rng, shape, sigma=min(shape) / 8)
    fraction = rng.uniform(*FOREGROUND_FRACTION)
    mask = distance <= np.quantile(distance, fraction)
    components, found = ndimage.label(mask)
    if found > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = components == int(sizes.argmax())
    return ndimage.binary_fill_holes(mask)


def _distractors(
    rng: np.random.Generator, grid: np.ndarray, chamber: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Intensity map of other structures (blobs and a z-running tube) and their mask."""
    shape = chamber.shape
    keep_out = ndimage.binary_dilation(chamber, iterations=3)
    intensity = np.zeros(shape, dtype=np.float32)
    occupied = np.zeros(shape, dtype=bool)
    tube_centre = rng.uniform(-0.8, 0.8, 2)
    tube = np.hypot(grid[0] - tube_centre[0], grid[1] - tube_centre[1]) < rng.uniform(0.1, 0.18)
    shapes = [tube]
    for _ in range(int(rng.integers(3, 6))):
        centre = rng.uniform(-0.85, 0.85, 3)
        shapes.append(_ellipsoid_distance(grid, centre, rng.uniform(0.12, 0.28, 3)) < 1.0)
    for mask in shapes:
        mask = mask & ~keep_out  # distractors touch neither the chamber nor its rim
        intensity[mask] = rng.uniform(*_DISTRACTOR)
        occupied |= mask
    return intensity, occupied


def bias_field(
    rng: np.random.Generator, shape: Sequence[int], strength: float = _BIAS_STRENGTH
) -> np.ndarray:
    """A smooth multiplicative intensity inhomogeneity, like an MRI receive-coil profile.

    Args:
        rng: Source of the field's direction and curvature.
        shape: Grid (X, Y, Z).
        strength: Half-range of the log field; 0 gives a field of ones.

    Returns:
        float32 (X, Y, Z), positive, geometric mean about 1.
    """
    grid = _normalized_grid(_check_shape(shape))
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise TypeError(f"strength must be a number, got {strength!r}")
    if not math.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    linear = np.tensordot(direction, grid, axes=1)
    curvature = rng.uniform(-0.5, 0.5, 3)
    quadratic = np.tensordot(curvature, grid**2, axes=1)
    log_field = linear + quadratic
    log_field -= log_field.mean()
    log_field *= strength / max(float(np.abs(log_field).max()), 1e-8)
    return np.exp(log_field).astype(np.float32)


def make_phantom(
    rng: np.random.Generator,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    *,
    bias_strength: float = _BIAS_STRENGTH,
) -> tuple[Volume, np.ndarray]:
    """One synthetic scan and its chamber label.

    Args:
        rng: Every random choice comes from it.
        shape: Grid (X, Y, Z), each side >= 16.
        spacing: Voxel size (mm); the volume is centred on the physical origin.
        bias_strength: Half-range of the log bias field (0: no inhomogeneity).

    Returns:
        The image (float32, Rician noise, arbitrary MRI-like units) and the label (uint8,
        1 = chamber, one 26-connected component filling 3-8 % of the volume).

    Raises:
        TypeError: ``rng`` is not a numpy Generator, or ``shape`` is not 3 ints.
        ValueError: A side below 16 voxels, or a bad spacing or bias strength.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    size = _check_shape(shape)
    geometry = Geometry((float(spacing[0]), float(spacing[1]), float(spacing[2])))
    x, y, z = (-(n - 1) / 2 * s for n, s in zip(size, geometry.spacing, strict=True))
    geometry = Geometry(geometry.spacing, (x, y, z))
    grid = _normalized_grid(size)
    chamber = _chamber(rng, grid, size)
    others, occupied = _distractors(rng, grid, chamber)
    texture = 0.04 * _smooth_noise(rng, size, sigma=2.0)
    clean = np.where(occupied, others, _TISSUE + texture)
    clean[chamber] = _CHAMBER + 0.03 * _smooth_noise(rng, size, sigma=1.5)[chamber]
    clean = ndimage.gaussian_filter(clean, 0.7)  # partial-volume edges
    clean *= bias_field(rng, size, bias_strength)
    sigma = rng.uniform(*_NOISE_SIGMA)
    real = clean + rng.normal(0.0, sigma, size)
    imaginary = rng.normal(0.0, sigma, size)
    image = (np.hypot(real, imaginary) * _SCALE).astype(np.float32)
    return Volume(image, geometry), chamber.astype(np.uint8)


def make_cohort(
    n: int,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    *,
    bias_strength: float = _BIAS_STRENGTH,
) -> list[tuple[Volume, np.ndarray]]:
    """``n`` independent phantoms; phantom ``i`` depends only on ``seed`` and ``i``.

    Args:
        n: Number of phantoms (>= 1).
        seed: Seed of the cohort (>= 0).
        shape: Grid of every phantom.
        spacing: Voxel size (mm) of every phantom.
        bias_strength: See :func:`make_phantom`.

    Returns:
        (image, label) pairs.
    """
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    children = np.random.SeedSequence(int(seed)).spawn(int(n))
    return [
        make_phantom(np.random.default_rng(child), shape, spacing, bias_strength=bias_strength)
        for child in children
    ]


def as_case(name: str, volume: Volume, label: np.ndarray | None) -> Case:
    """A training case of a phantom: the image z-scored, as ``fbanet train`` loads files."""
    return Case(name, zscore(volume.array), label, volume.geometry.spacing)
