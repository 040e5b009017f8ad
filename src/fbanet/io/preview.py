"""A quick-look PNG of a segmentation: three orthogonal slices with coloured outlines.

Meant for checking a result without opening Slicer (a report, a CI artefact, a remote run).
Slices are taken along the array axes through the segmentation's centre of mass; each panel
is resampled to square pixels so anatomy keeps its physical proportions. Only Pillow is
needed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fbanet.io.segments import default_color
from fbanet.io.volumes import Volume, atomic_write

logger = logging.getLogger(__name__)

Color = tuple[float, float, float]
ColorsArg = Mapping[int, Sequence[float]] | Sequence[Sequence[float]] | None

PANEL_PIXELS = 384  # longest side of the largest panel
MIN_WIDTH = 800  # the three panels together, at least: large enough to inspect
GAP = 6  # pixels between panels
CAPTION_HEIGHT = 14
# The reference (true) outline, when one is drawn: a green no segment colour uses by default.
REFERENCE_COLOR: Color = (0.2, 0.95, 0.35)
# Percentiles are computed on at most about this many voxels: plenty for a display window.
_PERCENTILE_SAMPLE = 2_000_000


def _window(array: np.ndarray) -> tuple[float, float]:
    """The 1st and 99th percentiles of the finite values (a strided sample of big arrays)."""
    step = max(1, int(np.ceil((array.size / _PERCENTILE_SAMPLE) ** (1 / 3))))
    sample = array[::step, ::step, ::step].astype(np.float64, copy=False)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(sample, [1.0, 99.0])
    return float(low), float(high)


def _center(labelmap: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The voxel nearest the segmentation's centre of mass, or the volume centre if empty."""
    if labelmap is not None:
        nonzero = np.nonzero(labelmap)
        if nonzero[0].size:
            x, y, z = (round(float(axis.mean())) for axis in nonzero)
            return x, y, z
    return shape[0] // 2, shape[1] // 2, shape[2] // 2


def _color_lookup(colors: ColorsArg, label_values: Sequence[int]) -> dict[int, Color]:
    """RGB (0-1) per label value; a sequence is indexed by label value, background first."""
    lookup: dict[int, Color] = {}
    for value in label_values:
        color: Sequence[float] | None = None
        if isinstance(colors, Mapping):
            color = colors.get(value)
        elif colors is not None and value < len(colors):
            color = colors[value]
        rgb = [float(c) for c in (color if color is not None else default_color(value))]
        if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
            raise ValueError(f"color for label {value} must be 3 numbers in 0-1, got {color!r}")
        lookup[value] = (rgb[0], rgb[1], rgb[2])
    return lookup


def _panels(center: tuple[int, int, int]) -> list[tuple[str, tuple, int, int, bool]]:
    """(caption, index, horizontal axis, vertical axis, flip vertical) for each panel.

    Screen layout follows the radiological habit for LPS data: +X (patient left) to the
    right, +Y (posterior) downwards on the axial view, +Z (superior) upwards elsewhere.
    """
    x, y, z = center
    return [
        (f"axial z={z}", (slice(None), slice(None), z), 0, 1, False),
        (f"coronal y={y}", (slice(None), y, slice(None)), 0, 2, True),
        (f"sagittal x={x}", (x, slice(None), slice(None)), 1, 2, True),
    ]


def _panel_size(
    shape: tuple[int, int], spacing: tuple[float, float], mm_per_px: float
) -> tuple[int, int]:
    cols, rows = shape
    width = max(1, round(cols * spacing[0] / mm_per_px))
    height = max(1, round(rows * spacing[1] / mm_per_px))
    return width, height


def _scale(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Millimetres per pixel: the largest panel side is PANEL_PIXELS, the row >= MIN_WIDTH.

    Small volumes are enlarged (a 64-voxel crop would otherwise be a thumbnail) and large
    ones reduced, so that every preview can be inspected and stays a modest file.
    """
    extents = [n * s for n, s in zip(shape, spacing, strict=True)]
    mm_per_px = max(extents) / PANEL_PIXELS
    # Panel widths: axial and coronal span X, sagittal spans Y.
    row_mm = 2 * extents[0] + extents[1]
    row_px = row_mm / mm_per_px + GAP * 4
    if row_px < MIN_WIDTH:
        mm_per_px = row_mm / (MIN_WIDTH - GAP * 4)
    return mm_per_px


def _outline(labels: np.ndarray) -> np.ndarray:
    """Mask of labelled pixels with a 4-neighbour of another value (the label boundary)."""
    padded = np.pad(labels, 1, mode="edge")
    edge = np.zeros(labels.shape, dtype=bool)
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        neighbour = padded[1 + dr : 1 + dr + labels.shape[0], 1 + dc : 1 + dc + labels.shape[1]]
        edge |= neighbour != labels
    return edge & (labels != 0)


def _resized(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # Resample the labels to the panel grid first so outlines stay one pixel thin.
    return np.asarray(
        Image.fromarray(labels.astype(np.int32)).resize(size, Image.Resampling.NEAREST)
    )


def _render_panel(
    gray: np.ndarray,
    labels: np.ndarray | None,
    size: tuple[int, int],
    lookup: Mapping[int, Color],
    reference: np.ndarray | None = None,
) -> Image.Image:
    """One panel: ``gray``/``labels``/``reference`` are (rows, cols) oriented for display."""
    image = Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR).convert("RGB")
    if labels is None and reference is None:
        return image
    rgb = np.array(image)
    if reference is not None:  # under the prediction's outline where both run together
        rgb[_outline(_resized(reference, size))] = _rgb8(REFERENCE_COLOR)
    if labels is not None:
        resized = _resized(labels, size)
        edge = _outline(resized)
        for value, color in lookup.items():
            rgb[edge & (resized == value)] = _rgb8(color)
    return Image.fromarray(rgb)


def _rgb8(color: Sequence[float]) -> np.ndarray:
    return np.round(np.asarray(color) * 255).astype(np.uint8)


def _check_inputs(image: Volume, labelmap: Volume | None) -> None:
    if not isinstance(image, Volume):
        raise TypeError(f"image must be a Volume, got {type(image).__name__}")
    if image.array.ndim != 3 or min(image.array.shape) < 1:
        raise ValueError(f"image must be a non-empty 3D array, got shape {image.array.shape}")
    if image.array.dtype.kind not in "biuf":
        raise TypeError(f"image must be numeric, got dtype {image.array.dtype}")
    if labelmap is None:
        return
    if not isinstance(labelmap, Volume):
        raise TypeError(f"labelmap must be a Volume or None, got {type(labelmap).__name__}")
    if labelmap.array.shape != image.array.shape:
        raise ValueError(
            f"labelmap shape {labelmap.array.shape} differs from the image shape "
            f"{image.array.shape}; resample the labelmap onto the image grid first"
        )
    if labelmap.array.dtype.kind not in "biu":
        raise TypeError(f"labelmap must be an integer array, got dtype {labelmap.array.dtype}")
    if not labelmap.geometry.matches(image.geometry):
        logger.warning("labelmap geometry differs from the image's; the preview uses voxel grids")


def save_preview(
    image: Volume,
    labelmap: Volume | None,
    path: str | os.PathLike[str],
    *,
    colors: ColorsArg = None,
    title: str | None = None,
    reference: Volume | None = None,
) -> Path:
    """Save a PNG of axial, coronal and sagittal slices with segment outlines.

    The slices (Z, Y and X slices of the array) pass through the segmentation's centre of
    mass, or the volume centre when there is no segmentation or it is empty. Intensities
    are windowed to the 1st-99th percentile; each label's boundary is drawn in its colour;
    pixels are resampled so that one pixel covers the same millimetres in both directions.

    Args:
        image: The scan (X, Y, Z).
        labelmap: Label values on the same grid as ``image``, or None for no outlines.
        path: Destination ``.png``; written atomically.
        colors: RGB (0-1) per label value: a mapping, or a sequence indexed by label value
            with background first (like ``ModelConfig.class_colors``). Missing labels get
            default colours.
        title: Optional text drawn above the panels.
        reference: A true labelmap on the same grid: its outline is drawn in
            :data:`REFERENCE_COLOR` and a legend names both outlines.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: ``path`` is not a ``.png``, shapes differ, or a colour is invalid.
        TypeError: Non-numeric image or non-integer labelmap.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"preview path must end with .png, got {path.name!r}")
    _check_inputs(image, labelmap)
    if reference is not None:
        _check_inputs(image, reference)
    labels = None if labelmap is None else labelmap.array
    lookup = {} if labels is None else _color_lookup(colors, [int(v) for v in np.unique(labels)])
    lookup.pop(0, None)
    truth = None if reference is None else reference.array
    rendered = _render_panels(image, labels, truth, lookup)
    legend = None
    if reference is not None:
        legend = [
            (f"prediction{'' if len(lookup) == 1 else f' {v}'}", c) for v, c in lookup.items()
        ]
        legend.append(("reference", REFERENCE_COLOR))
    canvas = _compose(rendered, title, legend)

    def write(tmp: Path) -> None:
        canvas.save(tmp, format="PNG")

    atomic_write(path, write)
    logger.info("wrote preview %s (%dx%d)", path, *canvas.size)
    return path


def _render_panels(
    image: Volume,
    labels: np.ndarray | None,
    truth: np.ndarray | None,
    lookup: Mapping[int, Color],
) -> list[tuple[str, Image.Image]]:
    """The three captioned panels: windowed slices with the outlines drawn in."""
    array, spacing = image.array, image.geometry.spacing
    low, high = _window(array)
    scale = 255.0 / (high - low) if high > low else 0.0
    mm_per_px = _scale(array.shape, spacing)
    rendered: list[tuple[str, Image.Image]] = []
    for caption, index, h_axis, v_axis, flip in _panels(_center(labels, array.shape)):
        plane = np.nan_to_num(array[index].astype(np.float64), nan=low)
        gray = np.clip((plane - low) * scale, 0, 255).astype(np.uint8).T  # rows = v_axis
        planes = [None if a is None else a[index].T for a in (labels, truth)]
        if flip:
            gray = gray[::-1]
            planes = [None if p is None else p[::-1] for p in planes]
        size = _panel_size(
            (array.shape[h_axis], array.shape[v_axis]),
            (spacing[h_axis], spacing[v_axis]),
            mm_per_px,
        )
        rendered.append((caption, _render_panel(gray, planes[0], size, lookup, planes[1])))
    return rendered


def _compose(
    panels: Sequence[tuple[str, Image.Image]],
    title: str | None,
    legend: Sequence[tuple[str, Color]] | None = None,
) -> Image.Image:
    """Panels side by side on black, captions below, optional title and legend on top."""
    top = CAPTION_HEIGHT + GAP if title or legend else GAP
    width = sum(p.width for _, p in panels) + GAP * (len(panels) + 1)
    height = top + max(p.height for _, p in panels) + CAPTION_HEIGHT + GAP
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((GAP, 2), title, fill=(255, 255, 255))
    x = width - GAP - sum(24 + 6 * len(name) for name, _ in legend or ())
    for name, color in legend or ():  # a coloured line, then its name, at the top right
        rgb = tuple(int(v) for v in _rgb8(color))
        draw.line((x, 8, x + 12, 8), fill=rgb, width=3)
        draw.text((x + 16, 2), name, fill=rgb)
        x += 24 + 6 * len(name)
    x = GAP
    for caption, panel in panels:
        canvas.paste(panel, (x, top))
        draw.text((x, top + panel.height + 2), caption, fill=(200, 200, 200))
        x += panel.width + GAP
    return canvas
