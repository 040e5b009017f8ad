"""``fbanet train --resume``: what a resumed run may and may not change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from builders import write_manifest

from fbanet.cli.main import main

TINY = ["--patch-size", "16", "16", "16", "--base-filters", "4", "--fp32", "--json",
        "--device", "cpu"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("schedule", ["poly", "cosine"])
def test_resume_with_other_iterations_under_a_decaying_schedule_is_refused(
    tmp_path: Path, schedule: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["train", "--manifest", str(manifest), "-o", str(out), *TINY]
    assert main([*argv, "--iterations", "2", "--lr-schedule", schedule]) == 0
    checkpoint = out / "checkpoints" / "last.pt"
    before = _digest(checkpoint)
    capsys.readouterr()
    assert main([*argv, "--resume", "--iterations", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert f"--lr-schedule {schedule} over --iterations 2" in err[0]
    assert "--iterations 4 would re-stretch the schedule" in err[0]
    assert f"--init-model {out}/model.safetensors --iterations 4 -o NEW_FOLDER" in err[0]
    assert _digest(checkpoint) == before
    # The same total resumes (nothing left to do) and exits 0.
    assert main([*argv, "--resume", "--iterations", "2"]) == 0


def test_resume_needs_no_data_flags_and_refuses_other_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--manifest", str(manifest), "-o", str(out), "--iterations", "1",
                 *TINY]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["train", "-o", str(out), "--resume", "--iterations", "2", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["iteration"] for e in events if e["event"] == "iteration"] == [2]

    other = write_manifest(tmp_path / "other")
    argv = ["train", "--manifest", str(other), "-o", str(out), "--resume", "--iterations", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"fbanet train: error: the run in {str(out)!r} was trained with --manifest "
        f"{str(manifest.resolve())!r}, this --resume gives {str(other.resolve())!r}: resume "
        "without data flags (the run folder knows its data), or train on other data in a new "
        "run folder"
    ]
