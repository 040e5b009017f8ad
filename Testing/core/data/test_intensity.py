"""Tests of fbanet.data.intensity: random regions and the patch normalization they give."""

from __future__ import annotations

import numpy as np
import pytest

from fbanet.data.intensity import (
    RegionNormalization,
    foreground_box,
    random_region,
    region_normalized,
    zscore_coefficients,
)
from fbanet.data.preprocess import IndexBox, zscore


def test_foreground_box_by_hand() -> None:
    label = np.zeros((6, 5, 4), np.uint8)
    label[1, 2, 3] = 1
    label[4, 1, 3] = 2
    box = foreground_box(label)
    assert box == IndexBox((1, 1, 3), (5, 3, 4))
    assert foreground_box(np.zeros((3, 3, 3), np.uint8)) is None


def test_random_region_holds_the_structure_within_the_margins() -> None:
    focus = IndexBox((10, 12, 3), (20, 18, 9))
    rng = np.random.default_rng(0)
    seen_low, seen_high = set(), set()
    for _ in range(300):
        region = random_region((40, 30, 12), focus, (5, 5, 2), rng)
        for axis in range(3):
            assert focus.start[axis] - (5, 5, 2)[axis] <= region.start[axis] <= focus.start[axis]
            assert focus.stop[axis] <= region.stop[axis] <= focus.stop[axis] + (5, 5, 2)[axis]
        assert region.start[2] >= 0 and region.stop[2] <= 12
        seen_low.add(region.start[0])
        seen_high.add(region.stop[0])
    # Every margin from 0 to 5 occurs: tight and wide regions alike.
    assert seen_low == set(range(5, 11)) and seen_high == set(range(20, 26))
    clipped = random_region((22, 18, 9), focus, (50, 50, 50), np.random.default_rng(1))
    assert min(clipped.start) >= 0
    assert all(b <= s for b, s in zip(clipped.stop, (22, 18, 9), strict=True))


def test_random_region_without_a_label_spans_at_least_half_of_each_side() -> None:
    rng = np.random.default_rng(2)
    lengths = []
    for _ in range(300):
        region = random_region((40, 30, 11), None, (5, 5, 2), rng)
        spans = zip(region.start, region.stop, (40, 30, 11), strict=True)
        assert all(0 <= a < b <= s for a, b, s in spans)
        assert region.shape[0] >= 20 and region.shape[1] >= 15 and region.shape[2] >= 6
        lengths.append(region.shape[0])
    assert min(lengths) == 20 and max(lengths) == 40


def test_zscore_coefficients_by_hand() -> None:
    image = np.zeros((4, 1, 1), np.float32)
    image[:, 0, 0] = [1.0, 2.0, 3.0, 100.0]
    a, b = zscore_coefficients(image, IndexBox((0, 0, 0), (3, 1, 1)))
    # Over 1, 2, 3: mean 2, population std sqrt(2/3); the voxel outside plays no part.
    assert a == pytest.approx(1 / np.sqrt(2 / 3)) and b == pytest.approx(-2 / np.sqrt(2 / 3))
    np.testing.assert_allclose(image[:3] * a + b, zscore(image[:3]), rtol=1e-6)
    # A constant region is centred, not divided by zero.
    assert zscore_coefficients(np.full((2, 2, 2), 5.0), IndexBox((0, 0, 0), (2, 2, 2))) == (
        1.0,
        -5.0,
    )


def _bright_structure() -> tuple[np.ndarray, IndexBox]:
    rng = np.random.default_rng(3)
    image = rng.normal(3.0, 2.0, size=(30, 30, 10)).astype(np.float32)
    image[10:20, 10:20, 3:7] += 5.0
    label = np.zeros(image.shape, np.uint8)
    label[10:20, 10:20, 3:7] = 1
    focus = foreground_box(label)
    assert focus is not None
    return image, focus


def test_region_normalized_zscores_a_random_region_of_the_volume() -> None:
    image, focus = _bright_structure()
    exact = RegionNormalization((4, 4, 2), scale=0.0, shift=0.0)
    out = region_normalized(image, focus, exact, np.random.default_rng(4))
    region = random_region(image.shape, focus, (4, 4, 2), np.random.default_rng(4))
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(
        out[region.slices], zscore(image[region.slices]), rtol=1e-4, atol=1e-5
    )
    # Not cropped: the voxels outside follow the same affine map.
    slope, intercept = np.polyfit(image.ravel(), out.ravel(), 1)
    np.testing.assert_allclose(out, image * slope + intercept, atol=1e-4)


def test_region_normalized_scales_and_shifts_within_bounds() -> None:
    image, focus = _bright_structure()
    exact = RegionNormalization((4, 4, 2), scale=0.0, shift=0.0)
    jitter = RegionNormalization((4, 4, 2), scale=0.1, shift=0.2)
    gains = []
    for seed in range(100):
        base = region_normalized(image, focus, exact, np.random.default_rng(seed))
        moved = region_normalized(image, focus, jitter, np.random.default_rng(seed))
        gain, offset = np.polyfit(base.ravel(), moved.ravel(), 1)
        assert 0.9 - 1e-4 <= gain <= 1.1 + 1e-4 and abs(offset) <= 0.2 + 1e-4
        gains.append(gain)
    assert max(gains) - min(gains) > 0.15  # the jitter is used, not a constant


def test_region_normalized_blanks_outside_the_region_as_a_crop() -> None:
    image, focus = _bright_structure()
    crop = RegionNormalization((4, 4, 2), scale=0.0, shift=0.0, crop_probability=1.0)
    out = region_normalized(image, focus, crop, np.random.default_rng(5))
    region = random_region(image.shape, focus, (4, 4, 2), np.random.default_rng(5))
    inside = np.zeros(image.shape, bool)
    inside[region.slices] = True
    assert not out[~inside].any() and (~inside).any()
    np.testing.assert_allclose(out[inside], zscore(image[region.slices]).ravel(), atol=1e-5)
    # Half the time, over many draws.
    half = RegionNormalization((4, 4, 2), crop_probability=0.5)
    rng = np.random.default_rng(6)
    cropped = [not region_normalized(image, focus, half, rng).all() for _ in range(200)]
    assert 70 <= sum(cropped) <= 130


def test_tight_regions_are_common() -> None:
    focus = IndexBox((20, 20, 20), (30, 30, 30))
    rng = np.random.default_rng(7)
    regions = [random_region((50, 50, 50), focus, (20, 20, 20), rng) for _ in range(2000)]
    tight = [min(r.start) >= 16 and max(r.stop) <= 34 for r in regions]
    wide = [min(r.start) <= 5 or max(r.stop) >= 45 for r in regions]
    # One shared width: within 4 voxels of the box on all six sides about a quarter of the
    # time (six independent margins of 0-20 would give (5/21)**6, 2 in 10,000).
    assert 0.15 < np.mean(tight) < 0.35 and np.mean(wide) > 0.15


def test_region_normalization_checks_and_converts_millimetres() -> None:
    settings = RegionNormalization.from_mm(30.0, (1.25, 1.25, 2.5), 0.1, 0.1)
    assert settings.margin == (24, 24, 12)
    with pytest.raises(ValueError, match="margin"):
        RegionNormalization((1, -1, 2))
    with pytest.raises(ValueError, match="scale"):
        RegionNormalization((1, 1, 1), scale=1.0)
    with pytest.raises(ValueError, match="shift"):
        RegionNormalization((1, 1, 1), shift=-0.1)
    with pytest.raises(ValueError, match="crop_probability"):
        RegionNormalization((1, 1, 1), crop_probability=1.5)
