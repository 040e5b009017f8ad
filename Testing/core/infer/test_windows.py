"""Tests for fbanet.infer.windows: window placement and importance maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from authors_protocol import authors_starts

from fbanet.infer import windows


def _coverage(shape: tuple[int, int, int], patch: tuple[int, int, int], starts) -> np.ndarray:
    count = np.zeros(shape, dtype=np.int64)
    for x, y, z in starts:
        count[x : x + patch[0], y : y + patch[1], z : z + patch[2]] += 1
    return count


# --- window placement -----------------------------------------------------------------------


def test_whole_window_rounds_each_side_up_to_the_multiple() -> None:
    # An LA volume at 1.25 mm against the bundled model's 64x64x48 patch.
    assert windows.whole_window((97, 71, 44), (64, 64, 48), 16, 2**21) == (112, 80, 48)
    assert windows.whole_window((96, 65, 48), (64, 64, 48), 16, 2**21) == (96, 80, 48)


def test_whole_window_is_never_smaller_than_the_patch() -> None:
    assert windows.whole_window((9, 20, 7), (16, 16, 16), 16, 10**6) == (16, 32, 16)


def test_whole_window_is_none_past_the_voxel_bound() -> None:
    assert windows.whole_window((97, 71, 44), (64, 64, 48), 16, 112 * 80 * 48) == (112, 80, 48)
    assert windows.whole_window((97, 71, 44), (64, 64, 48), 16, 112 * 80 * 48 - 1) is None


def test_patch_starts_known_values() -> None:
    assert windows.patch_starts((10, 4, 5), (4, 4, 5), 0.5) == [(x, 0, 0) for x in (0, 2, 4, 6)]
    # LA-sized x axis: step 56, n = ceil(63 / 56) + 1 = 3, linspace(0, 63, 3) rounded.
    xs = sorted({s[0] for s in windows.patch_starts((175, 112, 80), (112, 112, 80))})
    assert xs == [0, 32, 63]
    assert windows.patch_starts((8, 8, 8), (8, 8, 8), 0.9) == [(0, 0, 0)]


def test_patch_starts_cover_every_voxel_and_stay_inside() -> None:
    rng = np.random.default_rng(0)
    for _ in range(150):
        patch = tuple(int(v) for v in rng.integers(1, 10, size=3))
        shape = tuple(int(p + rng.integers(0, 3 * p + 6)) for p in patch)
        overlap = float(rng.choice([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]))
        starts = windows.patch_starts(shape, patch, overlap)
        assert len(set(starts)) == len(starts)
        for start in starts:
            assert all(0 <= s <= n - p for s, n, p in zip(start, shape, patch, strict=True))
        assert _coverage(shape, patch, starts).min() >= 1, (shape, patch, overlap)


def test_patch_starts_overlap_controls_count() -> None:
    counts = [len(windows.patch_starts((64, 64, 64), (16, 16, 16), o)) for o in (0.0, 0.5, 0.75)]
    assert counts == [4**3, 7**3, 13**3]


@pytest.mark.parametrize(
    ("shape", "patch", "stride"),
    [
        ((175, 132, 88), (112, 112, 80), (18, 18, 4)),
        ((112, 112, 80), (112, 112, 80), (18, 18, 4)),
        ((130, 113, 81), (112, 112, 80), (18, 18, 4)),
        ((30, 21, 17), (8, 7, 5), (3, 4, 2)),
    ],
)
def test_paper_starts_match_authors_loops(shape, patch, stride) -> None:
    starts = windows.paper_starts(shape, patch, stride)
    assert starts == authors_starts(shape, patch, stride)
    assert _coverage(shape, patch, starts).min() >= 1


def test_paper_starts_la_counts() -> None:
    # (175 - 112) / 18 -> 5 windows, (132 - 112) / 18 -> 3, (88 - 80) / 4 -> 3.
    starts = windows.paper_starts((175, 132, 88), (112, 112, 80), (18, 18, 4))
    assert len(starts) == 5 * 3 * 3
    assert starts[-1] == (63, 20, 8)


# --- importance maps ------------------------------------------------------------------------


@pytest.mark.parametrize("patch", [(9, 7, 5), (8, 6, 4), (112, 112, 80)])
def test_gaussian_map_peak_symmetry_positivity(patch) -> None:
    g = windows.gaussian_importance_map(patch)
    assert g.shape == patch and g.dtype == torch.float32
    assert g.max().item() == 1.0
    centre = tuple(p // 2 for p in patch)
    assert g[centre].item() == 1.0  # for even sides one of the central voxels
    for axis in range(3):
        assert torch.equal(g, torch.flip(g, dims=(axis,)))
    assert g.min().item() > 0
    assert g[0, 0, 0] < 1e-6 or min(patch) < 10


def test_gaussian_map_clamps_underflow_to_smallest_positive() -> None:
    g = windows.gaussian_importance_map((32, 32, 32), sigma_scale=0.02, dtype=torch.float16)
    assert g.min().item() > 0
    assert g.max().item() == 1.0


def test_constant_map_is_ones() -> None:
    assert torch.equal(windows.constant_importance_map((3, 4, 5)), torch.ones(3, 4, 5))


def test_start_helpers_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="smaller than patch size"):
        windows.patch_starts((7, 8, 8), (8, 8, 8))
    with pytest.raises(ValueError, match="overlap must be in"):
        windows.patch_starts((8, 8, 8), (4, 4, 4), -0.1)
    with pytest.raises(ValueError, match=r"stride must be 3 positive ints.*\(18, 18, 0\)"):
        windows.paper_starts((8, 8, 8), (4, 4, 4), (18, 18, 0))
    with pytest.raises(ValueError, match="sigma_scale must be > 0"):
        windows.gaussian_importance_map((4, 4, 4), sigma_scale=0.0)
