"""Training curves as a PNG, drawn with Pillow only (no plotting library needed).

Reads a run's ``progress.jsonl`` and draws the loss terms (left) and the validation Dice
(right) against the iteration, so a run can be judged from a report, a CI artefact or a
remote machine without opening anything else.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fbanet.io.volumes import atomic_write
from fbanet.protocol import Event, event_kind

logger = logging.getLogger(__name__)

SIZE = (960, 380)  # the whole chart, (width, height) in pixels
LOSS_KEYS = ("loss", "dice_loss", "consistency_loss", "contrastive_loss")
GRADIENT_KEY = "contrastive_grad_norm"  # what the contrastive term sends to the network
LOSS_COLORS = ((20, 20, 20), (214, 39, 40), (31, 119, 180), (44, 160, 44))
VALIDATION_COLOR = (148, 103, 189)
_FAINT = 0.25  # opacity of the raw values behind the moving average
_MARGIN = (62, 34, 14, 46)  # left, top, right, bottom of each panel's plot area
_BACKGROUND = (255, 255, 255)
_AXIS = (60, 60, 60)
_GRID = (228, 228, 228)


Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def read_progress(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Loss terms per iteration and validation Dice per iteration from a progress file.

    A repeated iteration (a resumed run re-doing steps after its last checkpoint) keeps its
    last value; unreadable lines (a line still being written) are skipped.

    Returns:
        ``{"iteration": ..., "loss": ..., ...}`` arrays sorted by iteration (NaN where a term
        is missing or not a number), and validation (n, 2) rows of (iteration, dice).
    """
    losses: dict[int, list[float]] = {}
    validation: dict[int, float] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                event = json.loads(line)
                kind, iteration = event_kind(event), int(event["iteration"])
            except (ValueError, TypeError, KeyError, AttributeError):
                logger.debug("%s:%d: skipping an unreadable line", path, number)
                continue
            if kind is Event.ITERATION:
                losses[iteration] = [_number(event.get(key)) for key in (*LOSS_KEYS, GRADIENT_KEY)]
            elif kind is Event.VALIDATION:
                validation[iteration] = _number(event.get("dice"))
    steps = sorted(losses)
    table = np.array([losses[i] for i in steps], dtype=np.float64)
    table = table.reshape(len(steps), len(LOSS_KEYS) + 1)
    series = {"iteration": np.array(steps, dtype=np.float64)}
    series.update({key: table[:, k] for k, key in enumerate((*LOSS_KEYS, GRADIENT_KEY))})
    rows = [(i, validation[i]) for i in sorted(validation)]
    return series, np.array(rows, dtype=np.float64).reshape(-1, 2)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values, ignoring NaN (NaN where a window has none)."""
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    upper = np.arange(1, len(values) + 1)
    lower = np.maximum(upper - window, 0)
    count = counts[upper] - counts[lower]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, (sums[upper] - sums[lower]) / np.maximum(count, 1), np.nan)


def nice_ticks(low: float, high: float, count: int = 5, min_step: float = 0.0) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten, >= ``min_step`` apart) in [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = max((high - low) / max(count - 1, 1), min_step)
    power = 10.0 ** math.floor(math.log10(raw))
    # The round step nearest the ideal one (in ratio), so about ``count`` ticks show.
    step = min((m * power for m in (1, 2, 5, 10)), key=lambda s: abs(math.log(s / raw)))
    step = max(step, min_step)
    first = math.ceil(low / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(high / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}" if value != 0 else "0"


class _Axes:
    """One panel's plot area: maps data to pixels (linear, or log10 in y) and draws axes."""

    def __init__(
        self,
        box: tuple[int, int, int, int],
        x: tuple[float, float],
        y: tuple[float, float],
        log_y: bool,
    ) -> None:
        self.box, self.log_y = box, log_y
        self.x0, self.x1 = _padded(*x, relative=0.0, minimum_span=1.0)
        low, high = (math.log10(v) for v in y) if log_y else y
        self.y0, self.y1 = _padded(low, high, relative=0.05)

    def point(self, x: float, y: float) -> tuple[float, float]:
        left, top, right, bottom = self.box
        yv = math.log10(y) if self.log_y else y
        px = left + (x - self.x0) / (self.x1 - self.x0) * (right - left)
        py = bottom - (yv - self.y0) / (self.y1 - self.y0) * (bottom - top)
        return px, py

    def draw_frame(self, draw: ImageDraw.ImageDraw, font: Font, xlabel: str, ylabel: str) -> None:
        left, top, right, bottom = self.box
        # Iterations are whole numbers: never a fractional tick.
        x_ticks = [t for t in nice_ticks(self.x0, self.x1, min_step=1) if self.x0 <= t <= self.x1]
        if self.log_y:
            y_values = [10.0**e for e in range(math.ceil(self.y0), math.floor(self.y1) + 1)]
            if len(y_values) < 2:  # under a decade: linear ticks read better
                y_values = [v for v in nice_ticks(10**self.y0, 10**self.y1) if v > 0]
        else:
            y_values = nice_ticks(self.y0, self.y1)
        for value in y_values:
            py = self.point(self.x0, value)[1]
            if top - 0.5 <= py <= bottom + 0.5:
                draw.line([(left, py), (right, py)], fill=_GRID)
                draw.text((left - 5, py), _label(value), fill=_AXIS, font=font, anchor="rm")
        for value in x_ticks:
            px = self.point(value, 10**self.y0 if self.log_y else self.y0)[0]
            draw.line([(px, bottom), (px, bottom + 4)], fill=_AXIS)
            draw.text((px, bottom + 6), _label(value), fill=_AXIS, font=font, anchor="mt")
        draw.rectangle(self.box, outline=_AXIS)
        draw.text(((left + right) / 2, bottom + 22), xlabel, fill=_AXIS, font=font, anchor="mt")
        draw.text((left, top - 4), ylabel, fill=_AXIS, font=font, anchor="ld")

    def draw_series(
        self,
        draw: ImageDraw.ImageDraw,
        x: np.ndarray,
        y: np.ndarray,
        color: tuple[int, ...],
        width: int,
    ) -> None:
        """A polyline broken at NaN (and at non-positive values on a log axis)."""
        valid = np.isfinite(y) & ((y > 0) if self.log_y else True)
        run: list[tuple[float, float]] = []
        for xi, yi, ok in zip(x, y, valid, strict=True):
            if ok:
                run.append(self.point(float(xi), float(yi)))
                continue
            self._flush(draw, run, color, width)
            run = []
        self._flush(draw, run, color, width)

    @staticmethod
    def _flush(
        draw: ImageDraw.ImageDraw,
        run: Sequence[tuple[float, float]],
        color: tuple[int, ...],
        width: int,
    ) -> None:
        if len(run) > 1:
            draw.line(list(run), fill=color, width=width, joint="curve")
        elif run:  # a lone point still shows
            (px, py), r = run[0], width + 1
            draw.ellipse([px - r, py - r, px + r, py + r], fill=color)


def _padded(
    low: float, high: float, relative: float, minimum_span: float = 0.0
) -> tuple[float, float]:
    if high <= low:  # one point or a constant: give the axis some extent
        span = max(abs(low) * 0.1, minimum_span) or 1.0
        return low - span, high + span
    pad = (high - low) * relative
    return low - pad, high + pad


def _blend(color: tuple[int, ...], alpha: float) -> tuple[int, ...]:
    return tuple(
        round(c * alpha + b * (1 - alpha)) for c, b in zip(color, _BACKGROUND, strict=True)
    )


def _plot_box(panel: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    left, top, right, bottom = panel
    m_left, m_top, m_right, m_bottom = _MARGIN
    return left + m_left, top + m_top, right - m_right, bottom - m_bottom


def _loss_panel(
    draw: ImageDraw.ImageDraw,
    panel: tuple[int, int, int, int],
    series: dict[str, np.ndarray],
    font: Font,
) -> None:
    x = series["iteration"]
    window = max(1, len(x) // 25)
    smooth = {key: moving_average(series[key], window) for key in LOSS_KEYS}
    values = np.concatenate([series[key] for key in LOSS_KEYS])
    values = values[np.isfinite(values)]
    if values.size == 0:
        values = np.array([0.0, 1.0])
    positive = values[values > 0]
    # Log scale only when it helps: all positive and spanning well over a decade.
    log_y = positive.size == values.size and positive.max() / positive.min() > 30
    axes = _Axes(_plot_box(panel), (x.min(), x.max()), (values.min(), values.max()), log_y)
    title = f"losses (moving average of {window})" if window > 1 else "losses"
    axes.draw_frame(draw, font, "iteration", title + (", log scale" if log_y else ""))
    if window > 1:
        for key, color in zip(LOSS_KEYS, LOSS_COLORS, strict=True):
            axes.draw_series(draw, x, series[key], _blend(color, _FAINT), 1)
    for key, color in zip(LOSS_KEYS, LOSS_COLORS, strict=True):
        axes.draw_series(draw, x, smooth[key], color, 2)
    logged = [  # a supervised run logs no consistency or contrastive term: no legend for them
        (k.replace("_loss", ""), c)
        for k, c in zip(LOSS_KEYS, LOSS_COLORS, strict=True)
        if np.isfinite(series[k]).any()
    ]
    _legend(draw, axes.box, font, logged)
    note = gradient_note(series.get(GRADIENT_KEY, np.array([])))
    if note:
        left, _, _, bottom = axes.box
        draw.text((left + 6, bottom - 18), note, fill=LOSS_COLORS[3], font=font)


def gradient_note(norms: np.ndarray) -> str | None:
    """A line that says whether the contrastive term still teaches the network anything.

    Args:
        norms: The logged gradient norms of the contrastive term, one per iteration (NaN
            where a run did not log them).

    Returns:
        E.g. "contrastive gradient 0 at 99 of the last 100 steps (last 0)", or None when no
        norm was logged.
    """
    finite = norms[np.isfinite(norms)]
    if finite.size == 0:
        return None
    recent = finite[-100:]
    zeros = int(np.count_nonzero(recent == 0))
    return (
        f"contrastive gradient 0 at {zeros} of the last {recent.size} steps "
        f"(last {_label(float(recent[-1]))})"
    )


def _legend(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    font: Font,
    entries: Sequence[tuple[str, tuple[int, ...]]],
) -> None:
    x, y = box[2] - 110, box[1] + 6
    # An opaque backdrop keeps the legend readable where a curve passes under it.
    draw.rectangle(
        [x - 6, y - 3, box[2] - 4, y + 15 * len(entries)], fill=_BACKGROUND, outline=_GRID
    )
    for name, color in entries:
        draw.line([(x, y + 6), (x + 18, y + 6)], fill=color, width=3)
        draw.text((x + 24, y + 6), name, fill=_AXIS, font=font, anchor="lm")
        y += 15


def _validation_panel(
    draw: ImageDraw.ImageDraw,
    panel: tuple[int, int, int, int],
    rows: np.ndarray,
    x_range: tuple[float, float],
    font: Font,
) -> None:
    box = _plot_box(panel)
    if not np.isfinite(rows[:, 1]).any():
        draw.rectangle(box, outline=_GRID)
        message = "no validation" if rows.size == 0 else "validation Dice not a number"
        center = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        draw.text(center, message, fill=_AXIS, font=font, anchor="mm")
        return
    low = min(x_range[0], rows[:, 0].min())
    axes = _Axes(box, (low, max(x_range[1], rows[:, 0].max())), (0.0, 1.0), log_y=False)
    axes.draw_frame(draw, font, "iteration", "validation Dice")
    axes.draw_series(draw, rows[:, 0], rows[:, 1], VALIDATION_COLOR, 2)
    best = int(np.nanargmax(rows[:, 1]))
    px, py = axes.point(rows[best, 0], rows[best, 1])
    draw.ellipse([px - 4, py - 4, px + 4, py + 4], outline=VALIDATION_COLOR, width=2)
    text = f"best {rows[best, 1]:.3f} at {int(rows[best, 0])}"
    draw.text((box[2] - 6, box[3] - 6), text, fill=_AXIS, font=font, anchor="rd")


def plot_training_curves(
    progress_jsonl: str | os.PathLike[str], out_png: str | os.PathLike[str]
) -> Path | None:
    """Draw a run's loss terms and validation Dice against the iteration.

    Args:
        progress_jsonl: A run's ``progress.jsonl``.
        out_png: Destination ``.png`` (written atomically), :data:`SIZE` pixels.

    Returns:
        ``out_png`` as a Path, or None (nothing written) when the file holds no iteration.

    Raises:
        FileNotFoundError: ``progress_jsonl`` does not exist.
        ValueError: ``out_png`` does not end with ``.png``.
    """
    source, target = Path(progress_jsonl), Path(out_png)
    if target.suffix.lower() != ".png":
        raise ValueError(f"the curves file must end with .png, got {target.name!r}")
    if not source.is_file():
        raise FileNotFoundError(f"progress file {str(source)!r} does not exist")
    series, validation = read_progress(source)
    if series["iteration"].size == 0:
        logger.info("%s holds no iteration yet; no curves drawn", source)
        return None
    canvas = Image.new("RGB", SIZE, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    half = SIZE[0] // 2
    x = series["iteration"]
    _loss_panel(draw, (0, 0, half, SIZE[1]), series, font)
    _validation_panel(draw, (half, 0, SIZE[0], SIZE[1]), validation, (x.min(), x.max()), font)
    atomic_write(target, lambda tmp: canvas.save(tmp, format="PNG"))
    logger.info("wrote training curves %s", target)
    return target
