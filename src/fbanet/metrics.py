"""Segmentation metrics for binary 3D masks: Dice, Jaccard, 95% Hausdorff and average surface
distance, with the exact definitions of ``medpy.metric.binary`` (``dc``, ``jc``, ``hd95``,
``asd``) but without depending on medpy, and with explicit flags for empty masks.

Surfaces are the foreground voxels removed by one erosion with the 6-connected (face)
structuring element, where everything outside the volume counts as background, so a mask
touching the volume border has its border voxels on the surface. Distances are Euclidean in mm
(``spacing`` is the voxel size per axis) from each surface voxel of one mask to the nearest
surface voxel of the other.

medpy raises on an empty mask; here an empty mask never yields a (perfect) zero distance: one
empty mask gives ``inf`` distances, both empty give ``nan``, and :class:`CaseMetrics` says
which mask was empty.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

# The metrics that MetricsTable summarises, in column order.
METRIC_NAMES: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")
CSV_HEADER = ("case", "dice", "jaccard", "hd95_mm", "asd_mm", "pred_empty", "ref_empty")
# Erosion with border_value=0 already treats everything outside the crop as background, which
# is what lies there (the crop holds both masks), so margin 0 would be exact too; one voxel of
# real background around the masks just keeps that argument independent of scipy's border rule.
_CROP_MARGIN = 1
_RESERVED_CASE_NAMES = frozenset({"mean", "std"})


@dataclass(frozen=True)
class CaseMetrics:
    """The metrics of one predicted mask against its reference.

    Attributes:
        dice: Dice coefficient in [0, 1] (1.0 when both masks are empty).
        jaccard: Jaccard index in [0, 1] (1.0 when both masks are empty).
        hd95: 95th percentile of the surface distances of both directions, in mm; ``inf`` when
            exactly one mask is empty, ``nan`` when both are.
        asd: Mean distance from the prediction's surface to the reference's, in mm; ``inf``
            when exactly one mask is empty, ``nan`` when both are.
        pred_empty: The prediction has no foreground voxel.
        ref_empty: The reference has no foreground voxel.
    """

    dice: float
    jaccard: float
    hd95: float
    asd: float
    pred_empty: bool
    ref_empty: bool

    def __post_init__(self) -> None:
        # Plain Python types, so that repr/CSV output never shows numpy scalar wrappers.
        for name in METRIC_NAMES:
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "pred_empty", bool(self.pred_empty))
        object.__setattr__(self, "ref_empty", bool(self.ref_empty))

    def as_dict(self) -> dict[str, float | bool]:
        """Returns the fields as a plain dictionary, in declaration order."""
        return dataclasses.asdict(self)


def _as_masks(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checks that both arrays are 3D of the same shape and returns them as boolean masks."""
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(
            f"pred and ref must have the same shape, got pred {pred.shape} and ref {ref.shape}"
        )
    if pred.ndim != 3:
        raise ValueError(f"pred and ref must be 3D masks, got shape {pred.shape}")
    return pred.astype(bool, copy=False), ref.astype(bool, copy=False)


def _as_spacing(spacing: Sequence[float] | np.ndarray) -> np.ndarray:
    """Checks that spacing is three positive finite numbers and returns it as float64."""
    message = f"spacing must be 3 positive finite numbers (voxel size in mm), got {spacing!r}"
    try:
        values = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(message) from error
    if values.shape != (3,) or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise ValueError(message)
    return values


def _union_crop(a: np.ndarray, b: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of ``a | b`` grown by ``margin`` voxels, clipped to the volume."""
    union = a | b
    box = []
    for axis in range(union.ndim):
        other_axes = tuple(i for i in range(union.ndim) if i != axis)
        present = np.flatnonzero(np.any(union, axis=other_axes))
        start = max(int(present[0]) - margin, 0)
        stop = min(int(present[-1]) + 1 + margin, union.shape[axis])
        box.append(slice(start, stop))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background face neighbour (outside the array is background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, iterations=1, border_value=0)
    return mask ^ eroded


def _distances_to(surface: np.ndarray, targets: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from every voxel of ``targets`` to the nearest voxel of ``surface``."""
    # The EDT measures the distance to the nearest zero, so the surface must be the zeros.
    field_mm = ndimage.distance_transform_edt(~surface, sampling=spacing)
    return field_mm[targets]


def _cropped_surfaces(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Surfaces of two non-empty boolean masks, on the bounding box of both.

    The distance transforms then run on this crop only: every surface voxel of either mask lies
    inside it, so the nearest surface voxel found in the crop is the nearest one in the whole
    volume and the distances are identical to a full-volume run (a large speed-up on LA scans).
    """
    crop = _union_crop(pred, ref, _CROP_MARGIN)
    logger.debug("surface distances on crop %s of volume %s", crop, pred.shape)
    return _surface(pred[crop]), _surface(ref[crop])


def _empty_distance(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float | None:
    """The distance convention for empty masks (nan both, inf one), None if neither is empty."""
    pred_empty, ref_empty = not pred_mask.any(), not ref_mask.any()
    if pred_empty and ref_empty:
        return math.nan
    return math.inf if pred_empty or ref_empty else None


def _overlap(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[float, float]:
    """(Dice, Jaccard) of two boolean masks; (1.0, 1.0) when both are empty, as medpy."""
    n_pred = np.count_nonzero(pred_mask)
    n_ref = np.count_nonzero(ref_mask)
    if n_pred + n_ref == 0:
        return 1.0, 1.0
    n_both = np.count_nonzero(pred_mask & ref_mask)
    # Same arithmetic as medpy's dc/jc (|P|+|R|-|P∩R| is exactly |P∪R|), so the floats agree.
    return 2.0 * n_both / float(n_pred + n_ref), float(n_both) / float(n_pred + n_ref - n_both)


def _hd95_asd(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: np.ndarray
) -> tuple[float, float]:
    """(hd95, asd) of two validated boolean masks, with the empty-mask conventions."""
    empty = _empty_distance(pred_mask, ref_mask)
    if empty is not None:
        return empty, empty
    pred_surface, ref_surface = _cropped_surfaces(pred_mask, ref_mask)
    pred_to_ref = _distances_to(ref_surface, pred_surface, spacing)
    ref_to_pred = _distances_to(pred_surface, ref_surface, spacing)
    hd95_mm = float(np.percentile(np.hstack((pred_to_ref, ref_to_pred)), 95))
    return hd95_mm, float(pred_to_ref.mean())


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2|P∩R| / (|P| + |R|)``, as ``medpy.metric.binary.dc``.

    Args:
        pred: Predicted mask, 3D, nonzero is foreground.
        ref: Reference mask of the same shape.

    Returns:
        The Dice coefficient; 1.0 when both masks are empty.

    Raises:
        ValueError: If the masks are not 3D arrays of the same shape.
    """
    return _overlap(*_as_masks(pred, ref))[0]


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index ``|P∩R| / |P∪R|``, as ``medpy.metric.binary.jc``.

    Args and Raises as :func:`dice`.

    Returns:
        The Jaccard index; 1.0 when both masks are empty.
    """
    return _overlap(*_as_masks(pred, ref))[1]


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Distance from each surface voxel of ``pred`` to the nearest surface voxel of ``ref``.

    The values (in the C order of the surface voxels) equal medpy's internal
    ``__surface_distances(pred, ref, spacing, connectivity=1)``.

    Args:
        pred: Predicted mask, 3D, nonzero is foreground.
        ref: Reference mask of the same shape.
        spacing: Voxel size in mm along each of the three axes.

    Returns:
        A float64 array with one distance (mm) per surface voxel of ``pred``: empty when
        ``pred`` is empty, all ``inf`` when only ``ref`` is empty.

    Raises:
        ValueError: If the masks are not 3D arrays of the same shape, or the spacing is bad.
    """
    pred_mask, ref_mask = _as_masks(pred, ref)
    spacing_mm = _as_spacing(spacing)
    if _empty_distance(pred_mask, ref_mask) is not None:
        return np.full(np.count_nonzero(_surface(pred_mask)), np.inf)
    pred_surface, ref_surface = _cropped_surfaces(pred_mask, ref_mask)
    return _distances_to(ref_surface, pred_surface, spacing_mm)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th percentile of the pooled surface distances of both directions, in mm.

    Equals ``medpy.metric.binary.hd95(pred, ref, voxelspacing=spacing)`` for non-empty masks.
    Args and Raises as :func:`surface_distances`.

    Returns:
        The distance in mm; ``inf`` when exactly one mask is empty, ``nan`` when both are.
    """
    pred_mask, ref_mask = _as_masks(pred, ref)
    return _hd95_asd(pred_mask, ref_mask, _as_spacing(spacing))[0]


def asd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Mean distance from the surface of ``pred`` to the surface of ``ref``, in mm.

    Equals ``medpy.metric.binary.asd(pred, ref, voxelspacing=spacing)`` for non-empty masks
    (one direction only, not the symmetric ``assd``). Args and Raises as
    :func:`surface_distances`.

    Returns:
        The distance in mm; ``inf`` when exactly one mask is empty, ``nan`` when both are.
    """
    pred_mask, ref_mask = _as_masks(pred, ref)
    empty = _empty_distance(pred_mask, ref_mask)
    if empty is not None:
        _as_spacing(spacing)  # still reject a bad spacing, whatever the masks
        return empty
    return float(surface_distances(pred_mask, ref_mask, spacing).mean())


def compute_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> CaseMetrics:
    """Computes all four metrics of one case, sharing the surface extraction between them.

    Args:
        pred: Predicted mask, 3D, any dtype, nonzero is foreground.
        ref: Reference mask of the same shape.
        spacing: Voxel size in mm along each of the three axes.

    Returns:
        The metrics, with the empty-mask flags; see :class:`CaseMetrics` for the conventions.

    Raises:
        ValueError: If the masks are not 3D arrays of the same shape, or the spacing is not
            three positive finite numbers.
    """
    pred_mask, ref_mask = _as_masks(pred, ref)
    spacing_mm = _as_spacing(spacing)
    dice_value, jaccard_value = _overlap(pred_mask, ref_mask)
    hd95_mm, asd_mm = _hd95_asd(pred_mask, ref_mask, spacing_mm)
    return CaseMetrics(
        dice_value, jaccard_value, hd95_mm, asd_mm, not pred_mask.any(), not ref_mask.any()
    )


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std of the finite values; (nan, nan) when there are none."""
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    if finite.size == 0:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std())


@dataclass
class MetricsTable:
    """Per-case metrics of an evaluation run, with summary statistics and CSV export.

    Attributes:
        rows: (case name, metrics) pairs in the order they were added.
    """

    rows: list[tuple[str, CaseMetrics]] = field(default_factory=list)

    def add(self, name: str, metrics: CaseMetrics) -> None:
        """Appends one case.

        Args:
            name: Unique case name; ``mean`` and ``std`` are reserved for the summary rows.
            metrics: The case's metrics.

        Raises:
            ValueError: If the name is already in the table or reserved.
        """
        if name in _RESERVED_CASE_NAMES:
            raise ValueError(f"case name {name!r} is reserved for the summary rows")
        if any(existing == name for existing, _ in self.rows):
            raise ValueError(f"case {name!r} is already in the table")
        self.rows.append((name, metrics))

    @property
    def n_pred_empty(self) -> int:
        """Number of cases whose prediction is empty."""
        return sum(metrics.pred_empty for _, metrics in self.rows)

    def summary(self) -> dict[str, tuple[float, float]]:
        """Mean and population standard deviation of each metric over its finite values.

        Empty masks are thus left out of the distance statistics (not counted as 0); their
        number is reported instead.

        Returns:
            ``{"dice": (mean, std), "jaccard": ..., "hd95": ..., "asd": ...}`` with distances
            in mm, ``(nan, nan)`` for a metric with no finite value, plus
            ``"pred_empty": (number of empty predictions, number of cases)``.
        """
        result = {
            name: _mean_std([getattr(metrics, name) for _, metrics in self.rows])
            for name in METRIC_NAMES
        }
        result["pred_empty"] = (float(self.n_pred_empty), float(len(self.rows)))
        return result

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Writes the table as CSV, atomically (a temporary file in the same folder, renamed).

        Columns are ``case,dice,jaccard,hd95_mm,asd_mm,pred_empty,ref_empty``; floats are
        written at full precision (``inf``/``nan`` as such) and flags as 1/0. The last two
        rows are ``mean`` and ``std`` of the finite values; in the ``mean`` row the flag
        columns hold the number of flagged cases and in the ``std`` row they are blank.

        Args:
            path: Destination file; missing parent folders are created.

        Returns:
            The path written.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(handle, "w", newline="", encoding="utf-8") as stream:
                csv.writer(stream).writerows(self._csv_rows())
            os.replace(temp_name, target)
        except BaseException:
            # Never leave a half-written temporary file behind, whatever interrupted us.
            Path(temp_name).unlink(missing_ok=True)
            raise
        logger.info("wrote metrics of %d cases to %s", len(self.rows), target)
        return target

    def _csv_rows(self) -> list[list[str]]:
        """The header, one row per case and the mean/std rows, as strings."""
        rows = [list(CSV_HEADER)]
        for name, metrics in self.rows:
            values = [repr(getattr(metrics, metric)) for metric in METRIC_NAMES]
            rows.append([name, *values, str(int(metrics.pred_empty)), str(int(metrics.ref_empty))])
        stats = self.summary()
        n_ref_empty = sum(metrics.ref_empty for _, metrics in self.rows)
        means = [repr(stats[metric][0]) for metric in METRIC_NAMES]
        stds = [repr(stats[metric][1]) for metric in METRIC_NAMES]
        rows.append(["mean", *means, str(self.n_pred_empty), str(n_ref_empty)])
        rows.append(["std", *stds, "", ""])
        return rows

    def format(self) -> str:
        """A fixed-width table for the terminal: one line per case, then mean ± std.

        Returns:
            The table as a multi-line string (no trailing newline).
        """
        name_width = max([len("mean ± std"), *(len(name) for name, _ in self.rows)])
        header = (
            f"{'case':<{name_width}}  {'dice':>17}  {'jaccard':>17}  {'hd95_mm':>17}  "
            f"{'asd_mm':>17}  {'pred_empty':>10}  {'ref_empty':>9}"
        )
        lines = [header, "-" * len(header)]
        for name, m in self.rows:
            lines.append(
                f"{name:<{name_width}}  {m.dice:>17.4f}  {m.jaccard:>17.4f}  {m.hd95:>17.2f}  "
                f"{m.asd:>17.2f}  {'yes' if m.pred_empty else 'no':>10}  "
                f"{'yes' if m.ref_empty else 'no':>9}"
            )
        stats = self.summary()
        cells = [
            f"{stats[metric][0]:.{digits}f} ± {stats[metric][1]:.{digits}f}"
            for metric, digits in zip(METRIC_NAMES, (4, 4, 2, 2), strict=True)
        ]
        lines.append("-" * len(header))
        lines.append(f"{'mean ± std':<{name_width}}  " + "  ".join(f"{c:>17}" for c in cells))
        lines.append(f"empty predictions: {self.n_pred_empty} of {len(self.rows)} cases")
        return "\n".join(lines)
