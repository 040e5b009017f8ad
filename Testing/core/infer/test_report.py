"""Tests for fbanet.infer.report: the summary (with the cases each mean leaves out), the CSV
file (atomic, through fbanet.io.volumes.atomic_write) and the terminal table."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

import fbanet.io.atomic
from fbanet.infer.report import CSV_HEADER, MetricsTable
from fbanet.metrics import CaseMetrics


def _table() -> MetricsTable:
    table = MetricsTable()
    table.add("case_a", CaseMetrics(0.8, 0.6, 2.0, 1.0, False, False))
    table.add("case_b", CaseMetrics(0.9, 0.7, 4.0, 3.0, False, False))
    table.add("case_c", CaseMetrics(0.0, 0.0, math.inf, math.inf, True, False))
    return table


def test_table_summary_by_hand() -> None:
    summary = _table().summary()
    # Dice is finite everywhere: mean of (0.8, 0.9, 0.0) = 0.5668 ...; population std.
    assert summary["dice"][0] == pytest.approx(1.7 / 3)
    assert summary["dice"][1] == pytest.approx(
        math.sqrt((0.8**2 + 0.9**2 + 0.0) / 3 - (1.7 / 3) ** 2)
    )
    assert summary["jaccard"] == pytest.approx((1.3 / 3, np.std([0.6, 0.7, 0.0])))
    # The empty prediction's inf distances are left out, not averaged in.
    assert summary["hd95"] == pytest.approx((3.0, 1.0))
    assert summary["asd"] == pytest.approx((2.0, 1.0))
    assert summary["pred_empty"] == (1.0, 3.0)


def test_empty_table_summary_is_nan() -> None:
    summary = MetricsTable().summary()
    assert all(math.isnan(v) for name in ("dice", "hd95") for v in summary[name])
    assert summary["pred_empty"] == (0.0, 0.0)


def test_table_rejects_duplicate_and_reserved_names() -> None:
    table = _table()
    with pytest.raises(ValueError, match="already"):
        table.add("case_a", CaseMetrics(1.0, 1.0, 0.0, 0.0, False, False))
    with pytest.raises(ValueError, match="reserved"):
        table.add("mean", CaseMetrics(1.0, 1.0, 0.0, 0.0, False, False))


def test_csv_round_trip_is_atomic(tmp_path: Path) -> None:
    table = _table()
    target = tmp_path / "out" / "metrics.csv"
    assert table.to_csv(target) == target
    assert [p.name for p in target.parent.iterdir()] == ["metrics.csv"]  # no temp file left
    with target.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.reader(stream))
    assert tuple(rows[0]) == CSV_HEADER
    assert [row[0] for row in rows[1:]] == [
        "case_a", "case_b", "case_c", "mean", "std", "left_out",
    ]  # fmt: skip
    for row, (name, metrics) in zip(rows[1:4], table.rows, strict=True):
        read_back = CaseMetrics(*map(float, row[1:5]), row[5] == "1", row[6] == "1")
        assert row[0] == name and read_back == metrics
    summary = table.summary()
    assert float(rows[4][3]) == summary["hd95"][0] and float(rows[5][4]) == summary["asd"][1]
    assert rows[4][5:] == ["1", "0"] and rows[5][5:] == ["", ""]
    assert rows[6] == ["left_out", "0", "0", "1", "1", "", ""]
    # Overwriting an existing file also goes through a rename and leaves nothing behind.
    MetricsTable().to_csv(target)
    assert [p.name for p in target.parent.iterdir()] == ["metrics.csv"]
    assert len(target.read_text(encoding="utf-8").splitlines()) == 4


def test_format_is_a_fixed_width_table() -> None:
    text = _table().format()
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["case", "dice", "jaccard", "hd95_mm", "asd_mm"]
    assert "case_b" in text and "0.9000" in text and "inf" in text
    assert "mean ± std" in text and "3.00 ± 1.00" in text
    assert len({len(line) for line in lines[:5]}) == 1  # header, rule and rows line up
    assert lines[-1].startswith("empty predictions: 1 of 3 cases")


def test_mean_says_how_many_cases_it_leaves_out() -> None:
    # One empty prediction: its inf distances are not in the hd95/asd means, and the
    # summary says so next to them instead of showing a mean that looks complete.
    table = _table()
    assert table.left_out() == {"dice": 0, "jaccard": 0, "hd95": 1, "asd": 1}
    mean_line = next(line for line in table.format().splitlines() if line.startswith("mean"))
    assert "3.00 ± 1.00 (1 of 3 left out)" in mean_line
    assert "2.00 ± 1.00 (1 of 3 left out)" in mean_line
    assert "0.5667 ± " in mean_line and "0.5667 ± 0.4028 (" not in mean_line


def test_all_empty_predictions_give_no_nan_mean() -> None:
    table = MetricsTable()
    for name in ("a", "b"):
        table.add(name, CaseMetrics(0.0, 0.0, math.inf, math.inf, True, False))
    text = table.format()
    assert "nan" not in text
    assert text.count("n/a (2 of 2 left out)") == 2
    rows = table._csv_rows()
    assert rows[-1] == ["left_out", "0", "0", "2", "2", "", ""]


def test_csv_goes_through_the_shared_atomic_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    original = fbanet.io.atomic._write_temporary

    def spy(path: Path, write_fn: object) -> Path:
        calls.append(path)
        return original(path, write_fn)  # type: ignore[arg-type]

    monkeypatch.setattr(fbanet.io.atomic, "_write_temporary", spy)
    _table().to_csv(tmp_path / "m.csv")
    assert calls == [tmp_path / "m.csv"]
