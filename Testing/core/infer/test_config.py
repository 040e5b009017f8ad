"""Tests for fbanet.infer.config: the inference settings and their checks at the boundary."""

from __future__ import annotations

import pytest

from fbanet.infer.config import MIRROR_AXES, InferenceConfig, Mirroring, Window
from fbanet.infer.segmenter import paper_config


def test_defaults_are_one_whole_region_window_mirrored_along_each_in_plane_axis() -> None:
    config = InferenceConfig()
    assert config.window is Window.VOLUME
    assert config.flips is Mirroring.AXES
    assert MIRROR_AXES[config.flips] == ((), (2,), (3,))
    assert config.max_window_voxels == 2_097_152


def test_the_paper_protocol_neither_mirrors_nor_widens_its_windows() -> None:
    config = paper_config()
    assert config.flips is Mirroring.NONE
    assert config.window is Window.PATCH


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, Mirroring.ALL),  # the old on/off option meant all four mirrorings
        (False, Mirroring.NONE),
        ("axes", Mirroring.AXES),
        ("ALL", Mirroring.ALL),
        (Mirroring.NONE, Mirroring.NONE),
    ],
)
def test_flips_accepts_names_members_and_the_old_booleans(value, expected) -> None:
    assert InferenceConfig(flips=value).flips is expected


def test_every_mirroring_starts_with_the_input_as_is() -> None:
    assert [len(MIRROR_AXES[m]) for m in Mirroring] == [1, 3, 4]
    assert all(MIRROR_AXES[m][0] == () for m in Mirroring)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"flips": "xy"}, ValueError, r"'xy' is not a valid Mirroring; valid values: 'none'"),
        ({"window": "tile"}, ValueError, r"'tile' is not a valid Window; valid values: 'volume'"),
        ({"max_window_voxels": 0}, ValueError, "max_window_voxels must be >= 1, got 0"),
        ({"max_window_voxels": 1e6}, TypeError, "max_window_voxels must be an int, got 1000000.0"),
    ],
)
def test_bad_values_are_refused_quoting_them(kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        InferenceConfig(**kwargs)
