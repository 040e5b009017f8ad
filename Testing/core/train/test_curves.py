"""Training curves PNG: size, no file without iterations, NaN and single-point robustness."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fbanet.train.curves import (
    LOSS_COLORS,
    SIZE,
    VALIDATION_COLOR,
    gradient_note,
    moving_average,
    nice_ticks,
    plot_training_curves,
    read_progress,
)


def _iteration(i: int, **values: float) -> dict:
    loss = {"loss": 2.0 / i, "dice_loss": 1.5 / i, "consistency_loss": 0.1, "contrastive_loss": 0.4}
    return {"event": "iteration", "iteration": i, "total": 100, "lr": 0.01, **loss, **values}


def _write(path: Path, events: list[dict], tail: str = "") -> Path:
    lines = [json.dumps(e, allow_nan=True) for e in events]
    path.write_text("\n".join(lines) + "\n" + tail, encoding="utf-8")
    return path


def _pixels(png: Path) -> np.ndarray:
    with Image.open(png) as image:
        assert image.size == SIZE and image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _has_color(pixels: np.ndarray, color: tuple[int, ...]) -> bool:
    return bool((np.abs(pixels.astype(int) - color).sum(axis=-1) <= 6).any())


def test_losses_and_validation_are_drawn(tmp_path: Path) -> None:
    events = [_iteration(i) for i in range(1, 101)]
    for i in (25, 50, 75, 100):
        events.append({"event": "validation", "iteration": i, "dice": i / 120, "best_dice": 0})
    events.append({"event": "finished", "iteration": 100, "best_dice": 0.83})
    out = plot_training_curves(_write(tmp_path / "progress.jsonl", events), tmp_path / "c.png")
    assert out == tmp_path / "c.png"
    pixels = _pixels(out)
    left, right = pixels[:, : SIZE[0] // 2], pixels[:, SIZE[0] // 2 :]
    for color in LOSS_COLORS:
        assert _has_color(left, color)
    assert _has_color(right, VALIDATION_COLOR) and not _has_color(left, VALIDATION_COLOR)
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file


def test_no_validation_panel_without_validation_events(tmp_path: Path) -> None:
    progress = _write(tmp_path / "p.jsonl", [_iteration(i) for i in range(1, 30)])
    pixels = _pixels(plot_training_curves(progress, tmp_path / "c.png"))
    assert not _has_color(pixels, VALIDATION_COLOR)


def test_no_iteration_no_file(tmp_path: Path) -> None:
    only_validation = [{"event": "validation", "iteration": 5, "dice": 0.5}]
    for name, events in (("empty", []), ("only-validation", only_validation)):
        progress = _write(tmp_path / f"{name}.jsonl", events)
        assert plot_training_curves(progress, tmp_path / f"{name}.png") is None
        assert not (tmp_path / f"{name}.png").exists()


def test_nan_values_single_points_and_a_partial_line(tmp_path: Path) -> None:
    events = [
        _iteration(1, dice_loss=math.nan, consistency_loss=0.0),
        {"event": "validation", "iteration": 1, "dice": math.nan},
    ]
    progress = _write(tmp_path / "p.jsonl", events, tail='{"event": "iter')
    pixels = _pixels(plot_training_curves(progress, tmp_path / "one.png"))
    assert _has_color(pixels, LOSS_COLORS[0])  # the lone total-loss point is drawn

    many = [_iteration(i, loss=math.nan if i % 7 == 0 else 1.0 / i) for i in range(1, 60)]
    many[10]["contrastive_loss"] = "oops"  # a non-number reads as NaN
    many += [{"event": "validation", "iteration": 30, "dice": 0.7}]
    pixels = _pixels(plot_training_curves(_write(tmp_path / "q.jsonl", many), tmp_path / "q.png"))
    assert _has_color(pixels, VALIDATION_COLOR)  # a single validation point still shows


def test_all_losses_nan_still_draws(tmp_path: Path) -> None:
    nan = dict.fromkeys(("loss", "dice_loss", "consistency_loss", "contrastive_loss"), math.nan)
    progress = _write(tmp_path / "p.jsonl", [_iteration(i, **nan) for i in (1, 2, 3)])
    pixels = _pixels(plot_training_curves(progress, tmp_path / "c.png"))
    # The frame is drawn; each colour shows in its legend swatch only (57 pixels), never as a
    # line: there is no finite value to draw.
    assert (pixels.sum(axis=-1) < 3 * 128).any()
    for color in LOSS_COLORS[1:]:
        assert int((np.abs(pixels.astype(int) - color).sum(axis=-1) <= 6).sum()) < 80


def test_resumed_iterations_keep_the_last_value(tmp_path: Path) -> None:
    events = [_iteration(i) for i in (1, 2, 3)] + [_iteration(2, loss=9.0), _iteration(3)]
    series, validation = read_progress(_write(tmp_path / "p.jsonl", events))
    assert series["iteration"].tolist() == [1, 2, 3]
    assert series["loss"][1] == 9.0
    assert validation.shape == (0, 2)


def test_bad_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "c.png")
    progress = _write(tmp_path / "p.jsonl", [_iteration(1)])
    with pytest.raises(ValueError, match=r"'c\.jpg'"):
        plot_training_curves(progress, tmp_path / "c.jpg")


def test_moving_average_ignores_nan() -> None:
    values = np.array([1.0, np.nan, 3.0, np.nan, np.nan, np.nan])
    averaged = moving_average(values, 2)
    assert averaged[:4].tolist() == [1.0, 1.0, 3.0, 3.0]
    assert np.isnan(averaged[4:]).all()


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(1.0, 300.0) == [100.0, 200.0, 300.0]
    assert nice_ticks(-0.05, 1.05) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0.5, 1.5, min_step=1) == [1.0]
    assert nice_ticks(2.0, 2.0) == [2.0]


def test_a_dead_contrastive_term_is_named_on_the_chart(tmp_path: Path) -> None:
    events = [
        {"event": "iteration", "iteration": i, "loss": 1.0, "contrastive_grad_norm": g}
        for i, g in enumerate([0.5, 0.0, 0.0, 0.0], start=1)
    ]
    series, _ = read_progress(_write(tmp_path / "p.jsonl", events))
    assert list(series["contrastive_grad_norm"]) == [0.5, 0.0, 0.0, 0.0]
    assert gradient_note(series["contrastive_grad_norm"]) == (
        "contrastive gradient 0 at 3 of the last 4 steps (last 0)"
    )
    # Runs from before the norm was logged read as NaN and get no note.
    older = [{"event": "iteration", "iteration": 1, "loss": 1.0}]
    series, _ = read_progress(_write(tmp_path / "q.jsonl", older))
    assert gradient_note(series["contrastive_grad_norm"]) is None
