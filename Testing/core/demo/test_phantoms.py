"""Synthetic phantoms: determinism, one connected chamber of plausible size, a bias field."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from fbanet.data.cases import Case
from fbanet.demo.phantoms import (
    FOREGROUND_FRACTION,
    as_case,
    bias_field,
    make_cohort,
    make_phantom,
)

SMALL = (40, 40, 32)


def _log_trend_range(image: np.ndarray, label: np.ndarray) -> float:
    """Range of a quadratic fit to log intensity of the darker tissue: the low frequencies.

    Bright structures (chamber, distractors) are left out, so what remains is tissue times
    the bias field; without a bias field the fit is nearly flat.
    """
    values = image.astype(np.float64)
    tissue = (label == 0) & (values < 1.4 * np.median(values))
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in image.shape], indexing="ij"))
    columns = [np.ones(int(tissue.sum()))]
    columns += [grid[i][tissue] for i in range(3)] + [grid[i][tissue] ** 2 for i in range(3)]
    design = np.stack(columns, axis=1)
    coefficients, *_ = np.linalg.lstsq(design, np.log(values[tissue]), rcond=None)
    return float(np.ptp(design @ coefficients))


def test_same_seed_same_phantom_other_seed_other_phantom() -> None:
    (a_image, a_label), (_, b_label) = make_cohort(2, seed=3, shape=SMALL)
    (c_image, c_label), _ = make_cohort(2, seed=3, shape=SMALL)
    assert np.array_equal(a_image.array, c_image.array)
    assert np.array_equal(a_label, c_label)
    assert a_image.geometry == c_image.geometry
    assert not np.array_equal(a_label, b_label)
    other, _ = make_cohort(1, seed=4, shape=SMALL)[0]
    assert not np.array_equal(other.array, a_image.array)


def test_phantom_i_does_not_depend_on_the_cohort_size() -> None:
    few = make_cohort(2, seed=1, shape=SMALL)
    many = make_cohort(4, seed=1, shape=SMALL)
    for (image, label), (image2, label2) in zip(few, many[:2], strict=True):
        assert np.array_equal(image.array, image2.array)
        assert np.array_equal(label, label2)


@pytest.mark.parametrize("seed", range(6))
def test_chamber_is_one_component_of_expected_size(seed: int) -> None:
    image, label = make_phantom(np.random.default_rng(seed))
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
    assert label.shape == image.array.shape == (64, 64, 48)
    _, count = ndimage.label(label, structure=np.ones((3, 3, 3)))
    assert count == 1
    low, high = FOREGROUND_FRACTION
    assert low * 0.9 <= label.mean() <= high * 1.05
    # The chamber stays clear of the border, so a crop around the centre holds it.
    assert not label[0].any() and not label[-1].any() and not label[:, :, 0].any()


@pytest.mark.parametrize("seed", range(4))
def test_image_is_finite_and_the_chamber_is_bright(seed: int) -> None:
    image, label = make_phantom(np.random.default_rng(seed), SMALL, (1.0, 1.5, 2.0))
    values = image.array
    assert values.dtype == np.float32 and np.isfinite(values).all()
    assert values.min() >= 0  # magnitude (Rician) data
    assert image.geometry.spacing == (1.0, 1.5, 2.0)
    chamber, rest = values[label == 1], values[label == 0]
    assert np.median(chamber) > 2 * np.median(rest)
    # Distractors: some non-chamber voxels are far brighter than the tissue.
    assert np.percentile(rest, 99.5) > 1.6 * np.median(rest)


@pytest.mark.parametrize("seed", range(4))
def test_bias_field_is_a_measurable_low_frequency_variation(seed: int) -> None:
    biased = make_phantom(np.random.default_rng(seed))
    flat = make_phantom(np.random.default_rng(seed), bias_strength=0.0)
    assert _log_trend_range(biased[0].array, biased[1]) > 0.25
    assert _log_trend_range(flat[0].array, flat[1]) < 0.15


def test_bias_field_is_smooth_and_bounded() -> None:
    field = bias_field(np.random.default_rng(0), (32, 32, 24), strength=0.3)
    assert field.shape == (32, 32, 24) and (field > 0).all()
    assert np.log(field).max() <= 0.3 + 1e-5 and np.log(field).min() >= -0.3 - 1e-5
    assert np.abs(np.diff(np.log(field), axis=0)).max() < 0.05  # no voxel-scale jumps
    assert np.allclose(bias_field(np.random.default_rng(0), (16, 16, 16), strength=0.0), 1.0)


def test_as_case_z_scores_the_image() -> None:
    image, label = make_phantom(np.random.default_rng(0), SMALL)
    case = as_case("p", image, label)
    assert isinstance(case, Case) and case.spacing == image.geometry.spacing
    assert abs(float(case.image.mean())) < 1e-3 and abs(float(case.image.std()) - 1) < 1e-3
    assert case.label is label


@pytest.mark.parametrize(
    ("kwargs", "error", "quoted"),
    [
        ({"shape": (64, 64)}, TypeError, "(64, 64)"),
        ({"shape": (64, 8, 48)}, ValueError, "(64, 8, 48)"),
        ({"shape": (64.0, 64, 48)}, TypeError, "64.0"),
        ({"spacing": (1.0, -1.0, 1.0)}, ValueError, "-1.0"),
        ({"bias_strength": -0.1}, ValueError, "-0.1"),
        ({"bias_strength": "strong"}, TypeError, "strong"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, error: type, quoted: str) -> None:
    with pytest.raises(error, match=quoted.replace("(", r"\(").replace(")", r"\)")):
        make_phantom(np.random.default_rng(0), **kwargs)


def test_bad_cohort_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="seed"):
        make_cohort(2, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        make_cohort(0, seed=1)
    with pytest.raises(TypeError, match="Generator"):
        make_phantom(42)  # type: ignore[arg-type]
