"""A preview with a reference: both outlines, and a legend that names them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fbanet.io.preview import REFERENCE_COLOR, save_preview
from fbanet.io.volumes import Geometry, Volume

COLOR = (0.85, 0.4, 0.35)


def _count(rgb: np.ndarray, color: tuple[float, float, float]) -> int:
    target = np.round(np.asarray(color) * 255).astype(np.uint8)
    return int(np.all(rgb == target, axis=-1).sum())


def _ball(shape: tuple[int, int, int], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
    return inside.astype(np.uint8)


def test_the_reference_outline_and_a_legend_are_drawn(tmp_path: Path) -> None:
    shape = (40, 40, 30)
    image = Volume(np.random.default_rng(0).normal(size=shape).astype(np.float32), Geometry())
    predicted = Volume(_ball(shape, (20, 20, 15), 8), Geometry())
    truth = Volume(_ball(shape, (22, 20, 15), 9), Geometry())
    plain = save_preview(image, predicted, tmp_path / "plain.png", colors={1: COLOR})
    both = save_preview(image, predicted, tmp_path / "both.png", colors={1: COLOR}, reference=truth)
    plain_rgb = np.asarray(Image.open(plain).convert("RGB"))
    both_rgb = np.asarray(Image.open(both).convert("RGB"))
    assert _count(plain_rgb, REFERENCE_COLOR) == 0
    assert _count(both_rgb, REFERENCE_COLOR) > 100  # three panels of outline and the legend
    assert _count(both_rgb, COLOR) > 100  # the prediction's outline is still there
    top = both_rgb[:14]  # the legend's row: both colours appear in it
    assert _count(top, REFERENCE_COLOR) > 0 and _count(top, COLOR) > 0
