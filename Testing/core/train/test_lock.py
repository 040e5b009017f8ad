"""One training per run folder: the second is refused; a killed owner's lock is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import write_manifest

from fbanet.cli.main import main
from fbanet.train.lock import LOCK_NAME, RunFolderLock

TINY = ["--patch-size", "16", "16", "16", "--base-filters", "4", "--fp32", "--json",
        "--device", "cpu"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_a_second_lock_is_refused_naming_the_folder_and_the_owner(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "a"
    with RunFolderLock(run):
        assert (run / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(ValueError) as caught:
            RunFolderLock(run).acquire()
        assert f"the run folder {str(run)!r} is in use by another training (pid " in str(
            caught.value
        )
    assert not (tmp_path / "runs").exists()  # made for the lock, empty: removed again


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_second_training_is_refused_and_a_killed_run_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["train", "--manifest", str(manifest), "-o", str(run), *TINY]
    owner = subprocess.Popen(
        [sys.executable, "-m", "fbanet", *argv, "--iterations", "100000", "--checkpoint-every",
         "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        assert json.loads(owner.stdout.readline())["event"] == "iteration"  # it trains
        assert main([*argv, "--iterations", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"fbanet train: error: the run folder {str(run)!r} is in use by another training "
            f"(pid {owner.pid}); wait for it to end or stop it, resume it later with --resume, "
            "or give another -o folder"
        ]
        assert main([*argv, "--resume", "--iterations", "2"]) == 2  # resume is refused too
        assert "is in use by another training" in capsys.readouterr().err
        deadline = time.monotonic() + 60
        while not (run / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # a checkpoint to resume from
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=60)
    # The lock died with its owner: --resume continues (and stops at once: the stop file).
    assert main([*argv, "--resume", "--iterations", "100000", "--stop-file", str(run)]) == 130
    stopped = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert stopped["event"] == "stopped" and stopped["iteration"] >= 1  # from its checkpoint
    assert not (run / LOCK_NAME).exists()
