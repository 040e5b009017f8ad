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
