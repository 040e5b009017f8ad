"""Worker messages keep their non-ASCII characters whatever the locale (UTF-8 mode)."""

from __future__ import annotations

import sys
from pathlib import Path

from fbanet.cli.jobs import WorkerJob
from fbanet.cli.worker import WorkerProcess
from fbanet.protocol import JobState

# A worker whose launcher left UTF-8 mode off on a locale that is not UTF-8 (PythonSlicer on
# Windows, cp1252): simulated here with the C locale, its coercion and UTF-8 mode turned off.
NOT_UTF8 = {"LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}


def test_every_worker_runs_in_utf8_mode() -> None:
    process = WorkerProcess([sys.executable, "-c", "pass"], env=NOT_UTF8)
    assert process.env["PYTHONUTF8"] == "1" and process.env["LC_ALL"] == "C"


def test_a_non_ascii_path_comes_back_intact_in_the_workers_error(tmp_path: Path) -> None:
    folder = tmp_path / "José"
    folder.mkdir()
    missing = folder / "scan.nrrd"
    job = WorkerJob(["segment", missing, "-o", folder / "out.seg.nrrd", "--json"], env=NOT_UTF8)
    job.start()
    assert job.wait(timeout=120) is JobState.FAILED
    assert str(missing) in job.error_message, job.error_message
