"""One rule for exit codes, shown in ``fbanet --help``: 2 refused, 1 failed, 130 interrupted."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import write_manifest

from fbanet.cli.main import main
from fbanet.protocol import ExitCode


def test_help_states_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit codes (every command): 0 done; 2 refused" in text
    assert "1 failed while working" in text and "130 interrupted (Ctrl-C)" in text


def test_a_folder_that_already_holds_a_run_is_refused_with_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = tmp_path / "demo"
    (demo / "run").mkdir(parents=True)
    (demo / "run" / "train.log").write_text("an earlier demo\n")
    assert main(["demo", "-o", str(demo), "--no-progress"]) == ExitCode.USAGE
    assert "already holds a demo run" in capsys.readouterr().err


def test_a_run_folder_that_holds_a_run_is_refused_with_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "data")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"an earlier run")
    argv = ["train", "--manifest", str(manifest), "-o", str(run), "--iterations", "1"]
    assert main([*argv, "--patch-size", "16", "16", "16", "--base-filters", "4"]) == 2
    assert "already holds a run; resume it (--resume)" in capsys.readouterr().err
