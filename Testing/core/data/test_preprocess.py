"""Geometry-exact preprocessing: regions of interest, cropping and resampling.

Every test uses volumes that are rotated, anisotropic and off the origin, so an index/physical
mix-up, a transposed axis or a lost origin shows up as a wrong number.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from builders import rotation

from fbanet.config import IntensityNormalization
from fbanet.data.preprocess import (
    IndexBox,
    crop,
    normalize,
    physical_roi,
    prepare_input,
    resample,
    resample_onto,
    voxel_roi,
    zscore,
)
from fbanet.io.volumes import Geometry, Volume

SPACING = (0.7, 0.9, 1.6)
ORIGIN = (-31.5, 12.25, 104.0)
SHAPE = (30, 26, 18)


# Oblique: no axis of the grid is parallel to a physical axis.
OBLIQUE = tuple(rotation(0.3, -0.25, 0.6).ravel())
# A 90-degree rotation with a flip: voxel axes map to -Y, +Z, -X.
PERMUTED = (0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def make_volume(direction: tuple[float, ...], seed: int = 0) -> Volume:
    """Random values on a rotated, anisotropic, offset grid."""
    rng = np.random.default_rng(seed)
    array = rng.normal(size=SHAPE).astype(np.float32)
    return Volume(array, Geometry(SPACING, ORIGIN, direction))


def physical_points(geometry: Geometry, indices: np.ndarray) -> np.ndarray:
    """Physical (LPS) positions of continuous indices (N, 3): origin + D @ (spacing * index)."""
    d = np.asarray(geometry.direction).reshape(3, 3)
    return np.asarray(geometry.origin) + (indices * np.asarray(geometry.spacing)) @ d.T


def test_physical_points_helper_matches_simpleitk() -> None:
    volume = make_volume(OBLIQUE)
    image = volume.to_sitk()
    index = np.array([[3.0, 7.5, 11.25]])
    expected = image.TransformContinuousIndexToPhysicalPoint(index[0].tolist())
    np.testing.assert_allclose(physical_points(volume.geometry, index)[0], expected, atol=1e-9)


@pytest.mark.parametrize("direction", [Geometry().direction, PERMUTED], ids=["axial", "permuted"])
def test_physical_roi_of_voxel_box_corners_gives_the_box_back(
    direction: tuple[float, ...],
) -> None:
    volume = make_volume(direction)
    image = volume.to_sitk()
    box = IndexBox((4, 7, 3), (19, 15, 11))
    first = image.TransformIndexToPhysicalPoint(list(box.start))
    last = image.TransformIndexToPhysicalPoint([b - 1 for b in box.stop])
    assert physical_roi(volume, first, last) == box
    # Corners in either order, and each coordinate of either corner, describe the same box.
    assert physical_roi(volume, last, first) == box
    mixed_a = (first[0], last[1], first[2])
    mixed_b = (last[0], first[1], last[2])
    assert physical_roi(volume, mixed_a, mixed_b) == box


def test_physical_roi_on_oblique_volume_covers_exactly_the_voxels_inside() -> None:
    """Rotated grid: the box is the tightest voxel box around the voxel centres inside."""
    volume = make_volume(OBLIQUE)
    image = volume.to_sitk()
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([15.2, 12.6, 8.7]))
    half = np.array([6.0, -5.5, 4.5])
    a, b = centre + half, centre - half
    box = physical_roi(volume, a.tolist(), b.tolist())

    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    points = physical_points(volume.geometry, grid.astype(float))
    low, high = np.minimum(a, b), np.maximum(a, b)
    inside = grid[np.all((points >= low) & (points <= high), axis=1)]
    assert len(inside) > 100
    tight_start, tight_stop = inside.min(axis=0), inside.max(axis=0) + 1
    # Contains every voxel whose centre lies in the physical box ...
    assert np.all(np.asarray(box.start) <= tight_start)
    assert np.all(np.asarray(box.stop) >= tight_stop)
    # ... and at most one voxel more per side (rounding of the corners to the nearest voxel).
    assert np.all(tight_start - np.asarray(box.start) <= 1)
    assert np.all(np.asarray(box.stop) - tight_stop <= 1)


def test_physical_roi_is_clipped_to_the_volume_and_refuses_boxes_outside() -> None:
    volume = make_volume(PERMUTED)
    image = volume.to_sitk()
    inside = image.TransformIndexToPhysicalPoint([5, 5, 5])
    beyond = image.TransformContinuousIndexToPhysicalPoint([-40.0, 60.0, 30.0])
    box = physical_roi(volume, inside, beyond)
    assert box == IndexBox((0, 5, 5), (6, SHAPE[1], SHAPE[2]))
    far_a = image.TransformContinuousIndexToPhysicalPoint([100.0, 100.0, 100.0])
    far_b = image.TransformContinuousIndexToPhysicalPoint([120.0, 110.0, 130.0])
    with pytest.raises(ValueError, match="does not overlap"):
        physical_roi(volume, far_a, far_b)


def test_voxel_roi_clips_and_validates() -> None:
    volume = make_volume(OBLIQUE)
    assert voxel_roi(volume, (-3, 2, 1), (12, 99, 9)) == IndexBox((0, 2, 1), (12, SHAPE[1], 9))
    with pytest.raises(ValueError, match="does not overlap"):
        voxel_roi(volume, (5, 5, 5), (5, 9, 9))
    with pytest.raises(ValueError, match="does not overlap"):
        voxel_roi(volume, (40, 0, 0), (50, 5, 5))
    with pytest.raises(ValueError, match="3 start and 3 stop"):
        voxel_roi(volume, (0, 0), (5, 5))


@pytest.mark.parametrize("direction", [OBLIQUE, PERMUTED], ids=["oblique", "permuted"])
def test_crop_keeps_every_voxel_in_place(direction: tuple[float, ...]) -> None:
    volume = make_volume(direction)
    box = IndexBox((5, 3, 7), (21, 20, 15))
    cropped = crop(volume, box)
    assert cropped.array.shape == box.shape
    np.testing.assert_array_equal(cropped.array, volume.array[5:21, 3:20, 7:15])
    assert cropped.geometry.spacing == volume.geometry.spacing
    assert cropped.geometry.direction == volume.geometry.direction

    source, target = volume.to_sitk(), cropped.to_sitk()
    np.testing.assert_allclose(
        target.TransformIndexToPhysicalPoint([0, 0, 0]),
        source.TransformIndexToPhysicalPoint(list(box.start)),
        atol=1e-9,
    )
    for index in itertools.product((0, 4), (0, 11), (0, 7)):
        shifted = [i + s for i, s in zip(index, box.start, strict=True)]
        np.testing.assert_allclose(
            target.TransformIndexToPhysicalPoint(list(index)),
            source.TransformIndexToPhysicalPoint(shifted),
            atol=1e-9,
        )


def smooth_field(points: np.ndarray) -> np.ndarray:
    """A smooth function of physical position (wavelengths of 25-60 mm)."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return np.sin(x / 7.0 + 0.3) * np.cos(y / 9.0) + 0.5 * np.sin(z / 5.0 - 1.0)


def field_volume(direction: tuple[float, ...]) -> Volume:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    geometry = Geometry(SPACING, ORIGIN, direction)
    values = smooth_field(physical_points(geometry, grid.reshape(-1, 3).astype(float)))
    return Volume(values.reshape(SHAPE).astype(np.float32), geometry)


def test_resample_puts_values_at_their_physical_places_and_keeps_extent() -> None:
    volume = field_volume(OBLIQUE)
    new_spacing = (1.0, 1.0, 1.0)
    resampled = resample(volume, new_spacing)

    assert resampled.geometry.spacing == new_spacing
    assert resampled.geometry.origin == volume.geometry.origin
    assert resampled.geometry.direction == volume.geometry.direction
    extent_old = np.asarray(SHAPE) * np.asarray(SPACING)
    extent_new = np.asarray(resampled.array.shape) * np.asarray(new_spacing)
    assert resampled.array.shape == (21, 23, 29)
    assert np.all(np.abs(extent_new - extent_old) <= np.asarray(new_spacing) / 2 + 1e-9)

    # Inside the source grid, each resampled voxel holds the field at its own physical point.
    shape = resampled.array.shape
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    expected = smooth_field(physical_points(resampled.geometry, grid.reshape(-1, 3).astype(float)))
    expected = expected.reshape(shape)
    interior = (slice(1, -2), slice(1, -2), slice(1, -2))
    error = np.abs(resampled.array[interior] - expected[interior])
    assert error.max() < 0.02


def test_resample_there_and_back_preserves_a_smooth_field() -> None:
    volume = field_volume(OBLIQUE)
    coarse = resample(volume, (1.1, 1.2, 1.1))
    back = resample_onto(coarse, volume.geometry, volume.array.shape)

    assert back.array.shape == volume.array.shape
    assert back.geometry == volume.geometry
    interior = (slice(2, -2), slice(2, -2), slice(2, -2))
    error = np.abs(back.array[interior] - volume.array[interior])
    assert error.max() < 0.03
    assert error.mean() < 0.008
    # Nearest-edge extrapolation: no frame of zeros at the rim.
    assert np.abs(back.array - volume.array).max() < 0.15


def test_resample_to_the_same_spacing_returns_the_volume() -> None:
    volume = make_volume(OBLIQUE)
    assert resample(volume, SPACING) is volume


def test_label_resampled_nearest_keeps_its_values() -> None:
    rng = np.random.default_rng(3)
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[3:14, 4:15, 2:9] = 1
    label[16:27, 10:22, 8:16] = 3
    label[5:12, 17:24, 11:17] = 7
    noise = rng.random(SHAPE) < 0.02
    label[noise & (label == 0)] = 7
    volume = Volume(label, Geometry(SPACING, ORIGIN, OBLIQUE))

    fine = resample(volume, (0.5, 0.5, 0.5), sitk.sitkNearestNeighbor)
    assert fine.array.dtype == np.uint8
    assert set(np.unique(fine.array).tolist()) == {0, 1, 3, 7}
    back = resample_onto(fine, volume.geometry, SHAPE, sitk.sitkNearestNeighbor)
    assert set(np.unique(back.array).tolist()) == {0, 1, 3, 7}
    # Fine grid and back: nearly every voxel gets its own label again.
    assert np.mean(back.array == label) > 0.97

    coarse = resample(volume, (1.3, 1.4, 2.0), sitk.sitkNearestNeighbor)
    assert set(np.unique(coarse.array).tolist()) <= {0, 1, 3, 7}
    assert {1, 3}.issubset(set(np.unique(coarse.array).tolist()))


def test_zscore_by_hand() -> None:
    out = zscore(np.array([[[1.0, 2.0, 3.0, 4.0]]]))
    # mean 2.5, population std sqrt(1.25)
    np.testing.assert_allclose(out.ravel(), np.array([-1.5, -0.5, 0.5, 1.5]) / np.sqrt(1.25))
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="constant"):
        zscore(np.full((2, 2, 2), 7.0))


def test_prepare_input_zscores_the_region_it_is_given_then_resamples() -> None:
    array = np.arange(8 * 6 * 4, dtype=np.float32).reshape(8, 6, 4)
    volume = Volume(array, Geometry((1.0, 1.0, 2.0), (5.0, 0.0, 0.0)))
    box = IndexBox((2, 0, 0), (6, 6, 4))
    prepared = prepare_input(
        volume, normalization=IntensityNormalization.ZSCORE, spacing=(2.0, 2.0, 2.0), roi=box
    )
    # The statistics are those of the region, not of what lies around it: the same voxels
    # given as a file of their own come out the same.
    np.testing.assert_allclose(prepared.region.array, zscore(array[2:6]), rtol=1e-6)
    alone = prepare_input(
        Volume(array[2:6].copy(), prepared.region.geometry),
        normalization=IntensityNormalization.ZSCORE, spacing=(2.0, 2.0, 2.0),
    )  # fmt: skip
    np.testing.assert_array_equal(alone.network.array, prepared.network.array)
    assert prepared.region.geometry.origin == (7.0, 0.0, 0.0)
    assert prepared.network.array.shape == (2, 3, 4)
    assert prepared.network.geometry.spacing == (2.0, 2.0, 2.0)
    # A z-scored model z-scores even an image marked as normalized: scale and shift go.
    marked = prepare_input(
        Volume(array * 3 + 5, volume.geometry), normalization=IntensityNormalization.ZSCORE,
        spacing=None, normalized=True,
    )  # fmt: skip
    np.testing.assert_allclose(marked.region.array, zscore(array), rtol=1e-5, atol=1e-6)


def test_prepare_input_as_stored_keeps_the_hdf5_layout_and_zscores_other_files_whole() -> None:
    array = np.arange(8 * 6 * 4, dtype=np.float32).reshape(8, 6, 4)
    volume = Volume(array, Geometry((1.0, 1.0, 2.0), (5.0, 0.0, 0.0)))
    box = IndexBox((2, 0, 0), (6, 6, 4))
    stored = prepare_input(
        volume, normalization=IntensityNormalization.AS_STORED, spacing=None, normalized=True
    )
    assert stored.network is stored.region
    np.testing.assert_array_equal(stored.region.array, array)
    other = prepare_input(
        volume, normalization=IntensityNormalization.AS_STORED, spacing=None, roi=box
    )
    # As the LA HDF5 files were made: z-scored over the whole scan, then cropped.
    np.testing.assert_allclose(other.region.array, zscore(array)[2:6], rtol=1e-6)
    assert normalize(array, IntensityNormalization.AS_STORED).dtype == np.float32
