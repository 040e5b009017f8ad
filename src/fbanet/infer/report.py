"""Evaluation reports: per-case metrics with summary rows, as a terminal table and a CSV file.

The metrics themselves are computed in :mod:`fbanet.metrics`; this module only collects and
formats them. Means and standard deviations are over the finite values of each metric: a
case with an empty prediction has infinite distances and is left out of the distance means,
and every summary says how many cases were left out, so a mean never hides them.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fbanet.io.volumes import atomic_write
from fbanet.metrics import METRIC_NAMES, CaseMetrics

logger = logging.getLogger(__name__)

CSV_HEADER = ("case", "dice", "jaccard", "hd95_mm", "asd_mm", "pred_empty", "ref_empty")
_SUMMARY_ROWS = ("mean", "std", "left_out")
_DIGITS = {"dice": 4, "jaccard": 4, "hd95": 2, "asd": 2}


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
            name: Unique case name; ``mean``, ``std`` and ``left_out`` are reserved for the
                summary rows.
            metrics: The case's metrics.

        Raises:
            ValueError: If the name is already in the table or reserved.
        """
        if name in _SUMMARY_ROWS:
            raise ValueError(f"case name {name!r} is reserved for the summary rows")
        if any(existing == name for existing, _ in self.rows):
            raise ValueError(f"case {name!r} is already in the table")
        self.rows.append((name, metrics))

    @property
    def n_pred_empty(self) -> int:
        """Number of cases whose prediction is empty."""
        return sum(metrics.pred_empty for _, metrics in self.rows)

    def left_out(self) -> dict[str, int]:
        """Per metric, the number of cases left out of its mean (value ``inf`` or ``nan``)."""
        return {
            name: sum(not math.isfinite(getattr(m, name)) for _, m in self.rows)
            for name in METRIC_NAMES
        }

    def summary(self) -> dict[str, tuple[float, float]]:
        """Mean and population standard deviation of each metric over its finite values.

        Empty masks are thus left out of the distance statistics (not counted as 0); how
        many is in :meth:`left_out`.

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
        """Writes the table as CSV, atomically (:func:`fbanet.io.volumes.atomic_write`).

        Columns are ``case,dice,jaccard,hd95_mm,asd_mm,pred_empty,ref_empty``; floats are
        written at full precision (``inf``/``nan`` as such) and flags as 1/0. The last three
        rows are ``mean`` and ``std`` of the finite values and ``left_out``, the number of
        cases each mean leaves out; in the ``mean`` row the flag columns hold the number of
        flagged cases, in the others they are blank.

        Args:
            path: Destination file; missing parent folders are created.

        Returns:
            The path written.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        rows = self._csv_rows()

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="", encoding="utf-8") as stream:
                csv.writer(stream).writerows(rows)

        atomic_write(target, write)
        logger.info("wrote metrics of %d cases to %s", len(self.rows), target)
        return target

    def _csv_rows(self) -> list[list[str]]:
        """The header, one row per case and the summary rows, as strings."""
        rows = [list(CSV_HEADER)]
        for name, metrics in self.rows:
            values = [repr(getattr(metrics, metric)) for metric in METRIC_NAMES]
            rows.append([name, *values, str(int(metrics.pred_empty)), str(int(metrics.ref_empty))])
        stats = self.summary()
        left_out = self.left_out()
        n_ref_empty = sum(metrics.ref_empty for _, metrics in self.rows)
        means = [repr(stats[metric][0]) for metric in METRIC_NAMES]
        stds = [repr(stats[metric][1]) for metric in METRIC_NAMES]
        rows.append(["mean", *means, str(self.n_pred_empty), str(n_ref_empty)])
        rows.append(["std", *stds, "", ""])
        rows.append(["left_out", *(str(left_out[m]) for m in METRIC_NAMES), "", ""])
        return rows

    def _summary_cells(self) -> list[str]:
        """'mean ± std' per metric, with the number of cases the mean leaves out."""
        stats, left_out = self.summary(), self.left_out()
        cells = []
        for metric in METRIC_NAMES:
            mean, std = stats[metric]
            digits, missing = _DIGITS[metric], left_out[metric]
            cell = "n/a" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"
            if missing:
                cell += f" ({missing} of {len(self.rows)} left out)"
            cells.append(cell)
        return cells

    def format(self) -> str:
        """A table for the terminal: one line per case, then mean ± std.

        Returns:
            The table as a multi-line string (no trailing newline).
        """
        summary = self._summary_cells()
        case_cells = [
            [f"{getattr(m, metric):.{_DIGITS[metric]}f}" for metric in METRIC_NAMES]
            for _, m in self.rows
        ]
        widths = [
            max(17, len(summary[i]), *(len(row[i]) for row in case_cells))
            for i in range(len(METRIC_NAMES))
        ]
        name_width = max([len("mean ± std"), *(len(name) for name, _ in self.rows)])

        def line(name: str, cells: list[str], flags: str) -> str:
            body = "  ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
            return f"{name:<{name_width}}  {body}{flags}"

        header = line("case", list(CSV_HEADER[1:5]), f"  {'pred_empty':>10}  {'ref_empty':>9}")
        lines = [header, "-" * len(header)]
        for (name, m), cells in zip(self.rows, case_cells, strict=True):
            flags = f"  {'yes' if m.pred_empty else 'no':>10}  {'yes' if m.ref_empty else 'no':>9}"
            lines.append(line(name, cells, flags))
        lines.append("-" * len(header))
        lines.append(line("mean ± std", summary, ""))
        empty = f"empty predictions: {self.n_pred_empty} of {len(self.rows)} cases"
        if any(self.left_out().values()):
            empty += " (means are over the finite values; 'left out' counts the others)"
        lines.append(empty)
        return "\n".join(lines)
