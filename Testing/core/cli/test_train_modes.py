"""``fbanet train --mode supervised`` needs no unlabeled scan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import write_manifest

from fbanet.cli.main import main

TINY = ["--patch-size", "16", "16", "16", "--base-filters", "4", "--fp32", "--json",
        "--device", "cpu", "--iterations", "1"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_supervised_training_without_unlabeled_scans_uses_an_all_labeled_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "data", labeled=2, unlabeled=0)
    out = tmp_path / "run"
    argv = ["train", "--manifest", str(manifest), "-o", str(out), "--mode", "supervised", *TINY]
    assert main(argv) == 0, capsys.readouterr().err
    train = json.loads((out / "config.json").read_text())["train"]
    assert train["labeled_batch_size"] == train["batch_size"] == 4


def test_a_supervised_run_reports_only_its_dice_terms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fbanet.train.curves as curves

    legends: list[list[str]] = []
    draw_legend = curves._legend
    monkeypatch.setattr(
        curves, "_legend",
        lambda draw, box, font, items: legends.append([n for n, _ in items])
        or draw_legend(draw, box, font, items),
    )  # fmt: skip
    notes: list[str | None] = []
    note = curves.gradient_note
    monkeypatch.setattr(curves, "gradient_note", lambda n: notes.append(note(n)) or notes[-1])
    manifest = write_manifest(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["train", "--manifest", str(manifest), "-o", str(out), "--mode", "supervised", *TINY]
    assert main(argv) == 0, capsys.readouterr().err
    events = [json.loads(line) for line in (out / "progress.jsonl").open()]
    step = next(e for e in events if e["event"] == "iteration")
    assert {"loss", "dice_loss"} <= set(step)
    assert not {"consistency_loss", "contrastive_loss", "contrastive_grad_norm"} & set(step)
    assert legends and legends[-1] == ["loss", "dice"]  # curves.png: no other term
    assert notes and notes[-1] is None  # no "contrastive gradient 0" line


def test_a_labeled_share_the_user_set_is_kept_and_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "data", labeled=2, unlabeled=0)
    argv = ["train", "--manifest", str(manifest), "-o", str(tmp_path / "run"),
            "--mode", "supervised", "--labeled-batch-size", "2", *TINY]  # fmt: skip
    assert main(argv) == 2
    assert "reserves 2 places for unlabeled patches" in capsys.readouterr().err


def test_a_misspelt_mode_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--mode", "supervized", "-o", "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "fbanet train: error: --mode 'supervized' is not valid; valid values: "
        "'semi-supervised', 'supervised'"
    ]
