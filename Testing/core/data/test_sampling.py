"""Tests of fbanet.data.sampling: augmentation, crops, the two-stream sampler, the batcher."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from fbanet.data.cases import Case
from fbanet.data.intensity import RegionNormalization
from fbanet.data.preprocess import zscore
from fbanet.data.sampling import (
    PatchBatcher,
    TwoStreamSampler,
    crop_views,
    rot_flip_views,
    window_start,
    window_views,
)


def _pair(shape: tuple[int, int, int] = (9, 7, 5), seed: int = 0) -> tuple[np.ndarray, ...]:
    image = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return image, (image > 0).astype(np.uint8)


def test_rot_flip_keeps_correspondence() -> None:
    image, label = _pair()
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(64):
        out_image, out_label = rot_flip_views(image, label, rng)
        assert out_label is not None
        np.testing.assert_array_equal(out_label, (out_image > 0).astype(np.uint8))
        assert out_image.shape[2] == 5  # Z is never touched
        assert sorted(out_image.shape[:2]) == [7, 9]
        # Same multiset of values: a permutation of voxels, nothing interpolated.
        np.testing.assert_array_equal(np.sort(out_image, axis=None), np.sort(image, axis=None))
        seen.add(out_image.tobytes())
    # A rotation followed by a flip is always a reflection, and the square's symmetry group
    # has exactly 4 of them: (k, axis) pairs collapse onto 4 distinct results.
    assert len(seen) == 4
    out_image, out_label = rot_flip_views(image, None, rng)
    assert out_label is None and out_image.shape[2] == 5


def test_rot_flip_is_seeded() -> None:
    image, label = _pair()
    a = rot_flip_views(image, label, np.random.default_rng(11))
    b = rot_flip_views(image, label, np.random.default_rng(11))
    np.testing.assert_array_equal(a[0], b[0])


def test_crop_from_larger_volume() -> None:
    image, label = _pair((20, 18, 12))
    out_image, out_label = crop_views(image, label, (8, 8, 4), np.random.default_rng(0))
    assert out_image.shape == out_label.shape == (8, 8, 4)
    np.testing.assert_array_equal(out_label, (out_image > 0).astype(np.uint8))
    # The patch is a contiguous window of the original.
    windows = np.lib.stride_tricks.sliding_window_view(image, (8, 8, 4))
    hits = np.argwhere((windows == out_image).all(axis=(3, 4, 5)))
    assert len(hits) == 1


def test_crop_pads_small_volume() -> None:
    image = np.ones((3, 10, 4), np.float32)
    label = np.ones((3, 10, 4), np.uint8)
    out_image, out_label = crop_views(image, label, (8, 6, 4), np.random.default_rng(5))
    assert out_image.shape == out_label.shape == (8, 6, 4)
    # X: 5 voxels of padding split 2 before / 3 after; every crop keeps all 3 real rows.
    np.testing.assert_array_equal(out_image[:, 0, 0], [0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(out_label[:, 0, 0], [0, 0, 1, 1, 1, 0, 0, 0])
    assert float(out_image.sum()) == 3 * 6 * 4
    bad = Case("bad", image, label[:, :, :3], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"label shape \(3, 10, 3\) differs"):
        PatchBatcher([bad], [], (8, 6, 4), 1, 0, seed=0)
    good = Case("good", image, label, (1.0, 1.0, 1.0))
    with pytest.raises(TypeError, match="patch_size must be 3 ints"):
        PatchBatcher([good], [], (8, 6), 1, 0, seed=0)


def test_crop_positions_uniform() -> None:
    image = np.arange(6, dtype=np.float32)[:, None, None].repeat(2, 1).repeat(2, 2)
    rng = np.random.default_rng(2)
    starts = Counter(int(crop_views(image, None, (3, 2, 2), rng)[0][0, 0, 0]) for _ in range(4000))
    assert sorted(starts) == [0, 1, 2, 3]
    assert all(abs(n - 1000) < 120 for n in starts.values())


def test_window_start_ranges() -> None:
    rng = np.random.default_rng(0)

    def seen(size: int, patch: int, positions: int) -> list[int]:
        return sorted({window_start(size, patch, positions, rng) for _ in range(3000)})

    # The LA case: 44 slices, patch 48. Inside-only starts are -4..0 (5 positions); 16 asked:
    # 11 more, 5 before and 6 after.
    assert seen(44, 48, 16) == list(range(-9, 7))
    assert seen(44, 48, 1) == list(range(-4, 1))
    # Enough room already (17 positions): unchanged, never outside the volume.
    assert seen(80, 64, 16) == list(range(0, 17))
    # The overhang stops at a quarter of the patch (1 voxel for a patch of 4).
    assert seen(4, 4, 16) == [-1, 0, 1]


def test_window_views_pads_outside_with_zeros() -> None:
    array = np.arange(1, 25, dtype=np.float32).reshape(2, 3, 4)
    inside = window_views(array, (0, 1, 1), (2, 2, 3))
    assert np.shares_memory(inside, array)  # a view where it fits
    np.testing.assert_array_equal(inside, array[:, 1:3, 1:4])
    out = window_views(array, (-1, 0, 2), (3, 3, 4))
    assert out.shape == (3, 3, 4) and out.dtype == array.dtype
    np.testing.assert_array_equal(out[0], 0)  # the row before the volume
    np.testing.assert_array_equal(out[1:, :, :2], array[:, :, 2:])
    np.testing.assert_array_equal(out[1:, :, 2:], 0)  # past the last slice
    assert float(out.sum()) == float(array[:, :, 2:].sum())


def test_crop_positions_cover_the_grid() -> None:
    # 6 slices in a patch of 8: the authors' crop always puts them at slices 1-6; with 16
    # positions asked (capped at a quarter of the patch, 2 voxels of overhang), they move.
    image = np.arange(1, 7, dtype=np.float32)[None, None, :].repeat(2, 0).repeat(2, 1)
    label = (image > 3).astype(np.uint8)
    rng = np.random.default_rng(1)
    centred = {crop_views(image, label, (2, 2, 8), rng)[0][0, 0].tobytes() for _ in range(50)}
    assert len(centred) == 1
    windows = Counter()
    for _ in range(2000):
        out, out_label = crop_views(image, label, (2, 2, 8), rng, positions=16)
        assert out.shape == out_label.shape == (2, 2, 8)
        np.testing.assert_array_equal(out_label, (out > 3).astype(np.uint8))
        windows[tuple(int(v) for v in out[0, 0])] += 1
    # Window starts -4..2 in volume slices: slice k of the window holds volume slice start + k.
    expected = {
        tuple(v + 1 if 0 <= v < 6 else 0 for v in range(start, start + 8)) for start in range(-4, 3)
    }
    assert set(windows) == expected
    assert all(abs(n - 2000 / 7) < 60 for n in windows.values())


def test_sampler_each_pass_is_a_permutation() -> None:
    sampler = TwoStreamSampler(6, 10, 2, 2, np.random.default_rng(0))
    labeled = [i for _ in range(9) for i in sampler.next_batch()[0]]  # 18 = 3 passes of 6
    passes = [labeled[k : k + 6] for k in range(0, 18, 6)]
    for chunk in passes:
        assert sorted(chunk) == list(range(6))
    assert len({tuple(c) for c in passes}) == 3  # reshuffled between passes


def test_sampler_streams_independent() -> None:
    runs = []
    for num_unlabeled, per_batch in ((10, 2), (3, 3), (0, 0)):
        sampler = TwoStreamSampler(5, num_unlabeled, 2, per_batch, np.random.default_rng(7))
        batches = [sampler.next_batch() for _ in range(12)]
        runs.append([b[0] for b in batches])
        assert all(len(b[1]) == per_batch for b in batches)
        assert all(i < num_unlabeled for b in batches for i in b[1])
    assert runs[0] == runs[1] == runs[2]


def test_sampler_state_round_trip() -> None:
    sampler = TwoStreamSampler(4, 7, 3, 2, np.random.default_rng(1))
    for _ in range(5):
        sampler.next_batch()
    state = json.loads(json.dumps(sampler.state_dict()))
    expected = [sampler.next_batch() for _ in range(10)]
    resumed = TwoStreamSampler(4, 7, 3, 2, np.random.default_rng(999))
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(10)] == expected
    with pytest.raises(ValueError, match="covers 4 cases, this one 5"):
        TwoStreamSampler(5, 7, 3, 2, np.random.default_rng(1)).load_state_dict(state)


def test_sampler_rejects_bad_counts() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="no unlabeled cases; add unlabeled cases or"):
        TwoStreamSampler(4, 0, 2, 2, rng)
    with pytest.raises(ValueError, match="no labeled cases"):
        TwoStreamSampler(0, 4, 2, 2, rng)
    with pytest.raises(TypeError, match=r"labeled_per_batch must be an int, got 2\.0"):
        TwoStreamSampler(4, 4, 2.0, 2, rng)  # type: ignore[arg-type]


def _cases(count: int, labeled: bool, offset: int = 0) -> list[Case]:
    cases = []
    for i in range(count):
        image, label = _pair((20 + i, 16, 10), seed=offset + i)
        cases.append(Case(f"c{offset + i}", image, label if labeled else None, (1.0, 1.0, 1.0)))
    return cases


def test_batcher_shapes_and_labels() -> None:
    batcher = PatchBatcher(_cases(3, True), _cases(4, False, 10), (16, 16, 8), 2, 2, seed=4)
    images, labels = batcher.next()
    assert images.shape == (4, 1, 16, 16, 8) and images.dtype == np.float32
    assert labels.shape == (2, 16, 16, 8) and labels.dtype == np.int64
    # Labels were built as image > 0, so the labeled patches must still agree.
    np.testing.assert_array_equal(labels, (images[:2, 0] > 0).astype(np.int64))
    supervised = PatchBatcher(_cases(2, True), [], (32, 20, 12), 2, 0, seed=0, augment=False)
    images, labels = next(iter(supervised))
    assert images.shape == (2, 1, 32, 20, 12) and labels.shape == (2, 32, 20, 12)
    # Y is padded 16 -> 20 as 2 before and 2 after; Z 10 -> 12 as 1 and 1.
    assert float(np.abs(images[:, 0, :, :2]).sum() + np.abs(images[:, 0, :, 18:]).sum()) == 0
    assert float(np.abs(images[:, 0, :, :, [0, 11]]).sum()) == 0.0
    # Cases are 20 or 21 voxels long in X: every real voxel is inside the patch.
    assert np.count_nonzero(images[0, 0, :, 2:18, 1:11]) in (20 * 16 * 10, 21 * 16 * 10)
    with pytest.raises(ValueError, match="labeled case 'c0' has no label"):
        PatchBatcher(_cases(1, False), [], (8, 8, 8), 1, 0, seed=0)


def test_batcher_state_round_trip() -> None:
    def make(seed: int) -> PatchBatcher:
        return PatchBatcher(_cases(3, True), _cases(2, True, 5), (12, 12, 8), 1, 2, seed=seed)

    batcher = make(1)
    batcher.next()
    state = json.loads(json.dumps(batcher.state_dict()))
    expected = [batcher.next() for _ in range(3)]
    resumed = make(2)
    resumed.load_state_dict(state)
    for (images, labels), (want_images, want_labels) in zip(
        [resumed.next() for _ in range(3)], expected, strict=True
    ):
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
    assert not np.array_equal(make(2).next()[0], expected[0][0])


def test_batcher_normalizes_each_patch_over_a_random_region() -> None:
    exact = RegionNormalization((2, 2, 1), scale=0.0, shift=0.0)
    cases = _cases(2, True)
    for case in cases:
        case.image[:] = case.image * 3.0 + 7.0  # far from z-scored
    plain = PatchBatcher(cases, [], (32, 20, 12), 2, 0, seed=0, augment=False)
    region = PatchBatcher(cases, [], (32, 20, 12), 2, 0, seed=0, augment=False, intensity=exact)
    (raw, raw_labels), (normed, labels) = plain.next(), region.next()
    np.testing.assert_array_equal(labels, raw_labels)  # same cases, same crops
    for row in range(2):
        real = raw[row, 0] != 0
        # Padding stays 0, as in inference; the voxels are an affine map of the originals
        # with the spread of a z-score over a region (about 1, not 3).
        assert float(np.abs(normed[row, 0][~real]).sum()) == 0.0
        slope, intercept = np.polyfit(raw[row, 0][real], normed[row, 0][real], 1)
        assert 0.2 < slope < 0.5 and abs(np.std(normed[row, 0][real]) - 1.0) < 0.2
        np.testing.assert_allclose(
            normed[row, 0][real], raw[row, 0][real] * slope + intercept, atol=1e-4
        )
    # The whole volume as the region reproduces a plain z-score of the case.
    whole = RegionNormalization((99, 99, 99), scale=0.0, shift=0.0)
    one = PatchBatcher(cases[:1], [], (32, 20, 12), 1, 0, seed=0, augment=False, intensity=whole)
    image = one.next()[0][0, 0]
    np.testing.assert_allclose(image[6:26, 2:18, 1:11], zscore(cases[0].image), atol=1e-5)


def test_batcher_intensity_stream_is_restored_with_the_state() -> None:
    jitter = RegionNormalization((2, 2, 1), scale=0.1, shift=0.1)

    def make(seed: int) -> PatchBatcher:
        return PatchBatcher(_cases(3, True), [], (12, 12, 8), 2, 0, seed=seed, intensity=jitter)

    batcher = make(1)
    batcher.next()
    state = json.loads(json.dumps(batcher.state_dict()))
    expected = batcher.next()[0]
    resumed = make(2)
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(resumed.next()[0], expected)
    # A checkpoint of fbanet 0.2 has no intensity stream: it still loads.
    old = {k: v for k, v in state.items() if k != "intensity_rng"}
    make(2).load_state_dict(old)
