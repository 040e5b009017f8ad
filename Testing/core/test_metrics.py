"""Tests for fbanet.metrics: agreement with medpy (test-only dependency), hand-computed cases,
empty-mask conventions and input validation (the tables are in infer/test_report.py)."""

from __future__ import annotations

import math

import medpy.metric.binary as medpy_binary
import numpy as np
import pytest
from scipy import ndimage

from fbanet.metrics import (
    CaseMetrics,
    asd,
    compute_metrics,
    dice,
    hd95,
    jaccard,
    surface_distances,
)

# medpy's private helper; a module-level dunder name is not mangled, so getattr finds it.
medpy_surface_distances = getattr(medpy_binary, "__surface_distances")

ANISOTROPIC = (0.625, 0.8, 2.5)
TOLERANCE = 1e-6


def _blob(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float) -> np.ndarray:
    """Thresholded smoothed noise: irregular blobs, several components, touching the border."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma)
    return field > 0.3 * field.std()


def _blob_pair(seed: int, shape: tuple[int, int, int] = (40, 36, 24)) -> tuple[np.ndarray, ...]:
    """A reference blob and a prediction that mostly overlaps it."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=3.0)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    ref = base > 0.2 * base.std()
    pred = (base + 0.6 * noise * base.std() / noise.std()) > 0.2 * base.std()
    return pred, ref


def _medpy_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    return np.array(
        [
            medpy_binary.dc(pred, ref),
            medpy_binary.jc(pred, ref),
            medpy_binary.hd95(pred, ref, voxelspacing=spacing),
            medpy_binary.asd(pred, ref, voxelspacing=spacing),
        ]
    )


def _ours(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    m = compute_metrics(pred, ref, spacing)
    return np.array([m.dice, m.jaccard, m.hd95, m.asd])


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), ANISOTROPIC])
@pytest.mark.parametrize("seed", range(5))
def test_matches_medpy_on_random_blobs(seed: int, spacing: tuple[float, ...]) -> None:
    pred, ref = _blob_pair(seed)
    assert 0.3 < dice(pred, ref) < 0.99  # a meaningful, imperfect overlap
    np.testing.assert_allclose(
        _ours(pred, ref, spacing), _medpy_metrics(pred, ref, spacing), rtol=0, atol=TOLERANCE
    )
    # The individual functions agree with compute_metrics exactly.
    m = compute_metrics(pred, ref, spacing)
    assert (dice(pred, ref), jaccard(pred, ref)) == (m.dice, m.jaccard)
    assert (hd95(pred, ref, spacing), asd(pred, ref, spacing)) == (m.hd95, m.asd)


@pytest.mark.parametrize("seed", range(3))
def test_surface_distances_match_medpy_elementwise(seed: int) -> None:
    pred, ref = _blob_pair(seed)
    for a, b in ((pred, ref), (ref, pred)):
        ours = surface_distances(a, b, ANISOTROPIC)
        theirs = medpy_surface_distances(a, b, ANISOTROPIC)
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE)


def test_matches_medpy_when_masks_touch_the_volume_border() -> None:
    rng = np.random.default_rng(7)
    shape = (20, 18, 12)
    ref = np.ones(shape, dtype=bool)
    ref[5:9, 4:10, 3:7] = False  # a hole: the surface is the volume border plus the hole wall
    pred = _blob(rng, shape, sigma=1.5) | ~_blob(rng, shape, sigma=2.0)
    corner = np.zeros(shape, dtype=bool)
    corner[:6, -5:, :4] = True  # one corner block, touching three faces
    cases = [(pred, ref), (ref, pred), (corner, ref), (np.ones(shape, bool), corner)]
    for a, b in cases:
        for spacing in ((1.0, 1.0, 1.0), ANISOTROPIC):
            np.testing.assert_allclose(
                _ours(a, b, spacing), _medpy_metrics(a, b, spacing), rtol=0, atol=TOLERANCE
            )


def test_small_masks_in_a_large_volume_match_medpy() -> None:
    # The distance transforms run on a crop here; medpy runs on the whole volume.
    rng = np.random.default_rng(3)
    shape = (120, 110, 40)
    pred = np.zeros(shape, dtype=bool)
    ref = np.zeros(shape, dtype=bool)
    ref[30:50, 60:75, 10:22] = _blob(rng, (20, 15, 12), sigma=1.5)
    ref[31, 61, 11] = True
    pred[33:52, 58:70, 12:25] = _blob(rng, (19, 12, 13), sigma=1.5)
    pred[90, 5, 39] = True  # an isolated false positive far away, at the volume border
    np.testing.assert_allclose(
        _ours(pred, ref, ANISOTROPIC),
        _medpy_metrics(pred, ref, ANISOTROPIC),
        rtol=0,
        atol=TOLERANCE,
    )


def _shifted_cubes() -> tuple[np.ndarray, np.ndarray]:
    """A 4x4x4 reference cube and the same cube shifted by one voxel along axis 0."""
    ref = np.zeros((10, 10, 10), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = 1
    pred[3:7, 2:6, 2:6] = 1
    return pred, ref


def test_shifted_cubes_by_hand() -> None:
    pred, ref = _shifted_cubes()
    m = compute_metrics(pred, ref)
    # Overlap 3x4x4 = 48 of 64 voxels each: Dice 96/128, Jaccard 48/80.
    assert m.dice == pytest.approx(0.75, abs=1e-12)
    assert m.jaccard == pytest.approx(0.6, abs=1e-12)
    # Each cube has 64 - 2^3 = 56 surface voxels. Of pred's: the 16 in the outer face (x=6)
    # are 1 voxel from ref's face x=5, the 4 inner voxels of face x=3 are 1 from ref's ring,
    # the other 36 lie on ref's surface. So asd = 20/56 and 40 of the 112 pooled are 1.
    assert m.asd == pytest.approx(20 / 56, abs=1e-12)
    assert m.hd95 == pytest.approx(1.0, abs=1e-12)
    distances = surface_distances(pred, ref)
    assert distances.size == 56
    assert sorted(np.unique(distances).tolist()) == [0.0, 1.0]
    assert np.count_nonzero(distances) == 20


def test_shifted_cubes_anisotropic_by_hand() -> None:
    pred, ref = _shifted_cubes()
    sx, sy, sz = ANISOTROPIC
    m = compute_metrics(pred, ref, spacing=(sx, sy, sz))
    # The outer face is one step along axis 0 (sx) away; the 4 inner voxels of face x=3 reach
    # ref's surface one step along axis 1 (sy=0.625), the shortest step.
    assert m.asd == pytest.approx((16 * sx + 4 * min(sx, sy, sz)) / 56, abs=1e-12)
    assert m.dice == pytest.approx(0.75, abs=1e-12)


def test_identical_masks_are_perfect() -> None:
    _, ref = _shifted_cubes()
    m = compute_metrics(ref, ref, ANISOTROPIC)
    assert (m.dice, m.jaccard, m.hd95, m.asd) == (1.0, 1.0, 0.0, 0.0)
    assert not m.pred_empty and not m.ref_empty


def test_any_dtype_nonzero_is_foreground() -> None:
    pred, ref = _blob_pair(11, shape=(20, 20, 12))
    expected = compute_metrics(pred, ref, ANISOTROPIC)
    labels = pred.astype(np.int16) * 3  # label value 3, not 1
    floats = ref.astype(np.float32) * 0.5
    assert compute_metrics(labels, floats, ANISOTROPIC) == expected


def test_empty_prediction_is_flagged_with_infinite_distances() -> None:
    _, ref = _shifted_cubes()
    pred = np.zeros_like(ref)
    m = compute_metrics(pred, ref)
    assert (m.dice, m.jaccard) == (0.0, 0.0)
    assert math.isinf(m.hd95) and math.isinf(m.asd)
    assert m.pred_empty and not m.ref_empty
    assert math.isinf(hd95(pred, ref)) and math.isinf(asd(pred, ref))
    assert surface_distances(pred, ref).size == 0


def test_empty_reference_is_flagged_with_infinite_distances() -> None:
    pred, _ = _shifted_cubes()
    ref = np.zeros_like(pred)
    m = compute_metrics(pred, ref)
    assert (m.dice, m.jaccard) == (0.0, 0.0)
    assert m.hd95 == math.inf and m.asd == math.inf
    assert m.ref_empty and not m.pred_empty
    distances = surface_distances(pred, ref)
    assert distances.size == 56 and np.all(np.isinf(distances))


def test_both_empty_gives_perfect_overlap_and_undefined_distances() -> None:
    empty = np.zeros((8, 8, 8), dtype=bool)
    m = compute_metrics(empty, empty)
    assert (m.dice, m.jaccard) == (1.0, 1.0)
    assert math.isnan(m.hd95) and math.isnan(m.asd)
    assert m.pred_empty and m.ref_empty
    assert (dice(empty, empty), jaccard(empty, empty)) == (1.0, 1.0)
    assert math.isnan(hd95(empty, empty)) and math.isnan(asd(empty, empty))


def test_shape_mismatch_names_both_shapes() -> None:
    a = np.zeros((4, 5, 6), dtype=bool)
    b = np.zeros((4, 5, 7), dtype=bool)
    for function in (compute_metrics, dice, jaccard, hd95, asd, surface_distances):
        with pytest.raises(ValueError, match=r"\(4, 5, 6\).*\(4, 5, 7\)"):
            function(a, b)


def test_non_3d_masks_are_rejected() -> None:
    flat = np.ones((5, 5), dtype=bool)
    with pytest.raises(ValueError, match="3D"):
        compute_metrics(flat, flat)


@pytest.mark.parametrize(
    "spacing",
    [
        (1.0, 1.0),
        (1.0, 1.0, 1.0, 1.0),
        (1.0, 0.0, 1.0),
        (1.0, -0.5, 1.0),
        (math.nan, 1.0, 1.0),
        (1.0, math.inf, 1.0),
        ("a", "b", "c"),
        None,
    ],
)
def test_bad_spacing_is_rejected(spacing: object) -> None:
    _, ref = _shifted_cubes()
    with pytest.raises(ValueError, match="spacing must be 3 positive finite numbers"):
        compute_metrics(ref, ref, spacing)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spacing"):
        hd95(ref, ref, spacing)  # type: ignore[arg-type]


def test_case_metrics_as_dict_and_plain_types() -> None:
    m = CaseMetrics(np.float64(0.5), 0.25, np.float32(2.0), 1.5, np.bool_(False), False)
    assert m.as_dict() == {
        "dice": 0.5,
        "jaccard": 0.25,
        "hd95": 2.0,
        "asd": 1.5,
        "pred_empty": False,
        "ref_empty": False,
    }
    assert type(m.dice) is float and type(m.hd95) is float and type(m.pred_empty) is bool
    with pytest.raises(AttributeError):
        m.dice = 1.0  # type: ignore[misc]
