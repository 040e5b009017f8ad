"""Background workers: events and log, a clean stop through the stop file, Windows details."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from fbanet.cli import worker as workerModule
from fbanet.cli.jobs import WorkerJob
from fbanet.cli.worker import CREATE_NO_WINDOW, WorkerProcess, kill_command, popen_options
from fbanet.protocol import ExitCode, JobState

# A stand-in for `fbanet train --json --stop-file`: it polls its stop file between "iterations"
# and ends with the STOPPED event and exit code (a checkpoint would be written there); SIGTERM
# kills it at once, as it would an unprepared worker.
FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: os._exit(99))
    stop = sys.argv[1]
    print(json.dumps({"event": "iteration", "iteration": 1}), flush=True)
    print("training...", file=sys.stderr, flush=True)
    while not os.path.exists(stop):
        time.sleep(0.05)
    time.sleep(0.3)  # writing the checkpoint
    print(json.dumps({"event": "stopped", "iteration": 1}), flush=True)
    sys.exit(130)
    """
)


def _fakeTrainer(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "trainer.py"
    script.write_text(FAKE_TRAINER)
    stop = tmp_path / "run" / "stop"
    return [sys.executable, str(script), str(stop)], stop


def _started(process: WorkerProcess) -> None:
    process.start()
    deadline = 100
    while not process.log() and deadline:  # the worker is up and has installed its handler
        deadline -= 1
        import time

        time.sleep(0.05)


def test_cancel_gives_the_stop_file_its_grace_before_any_signal(tmp_path: Path) -> None:
    command, stop = _fakeTrainer(tmp_path)
    process = WorkerProcess(command)
    _started(process)
    process.cancel(grace_seconds=20, stop_file=stop)
    # A clean stop (130), not SIGTERM's 99 nor a kill: the checkpoint was written.
    assert process.returncode == ExitCode.STOPPED
    assert [e["event"] for e in process.events()] == ["iteration", "stopped"]
    assert stop.is_file() and process.cancelled


def test_without_a_stop_file_cancel_ends_the_process_group(tmp_path: Path) -> None:
    command, _ = _fakeTrainer(tmp_path)
    process = WorkerProcess(command)
    _started(process)
    process.cancel(grace_seconds=5)
    assert process.returncode == 99 and not process.running


def test_a_job_with_a_stop_file_stops_cleanly_when_cancelled(tmp_path: Path) -> None:
    command, stop = _fakeTrainer(tmp_path)

    seen: list[str] = []

    class FakeTraining(WorkerJob):
        def handle_event(self, event: dict[str, Any]) -> None:
            seen.append(event["event"])

    job = FakeTraining([], stop_file=stop)
    job.worker = WorkerProcess(command)
    _started(job.worker)
    job.state = JobState.RUNNING
    job.cancel(grace_seconds=20)
    assert job.state is JobState.CANCELLED and job.worker.returncode == ExitCode.STOPPED
    assert seen == ["iteration", "stopped"]


def test_windows_workers_and_taskkill_open_no_console(monkeypatch: pytest.MonkeyPatch) -> None:
    assert popen_options("nt")["creationflags"] & CREATE_NO_WINDOW
    assert popen_options("posix") == {"start_new_session": True}
    assert kill_command(123) == ["taskkill", "/T", "/F", "/PID", "123"]
    calls: list[tuple[list[str], dict[str, Any]]] = []
    monkeypatch.setattr(workerModule.subprocess, "run", lambda c, **k: calls.append((c, k)))

    def noKillpg(*args: Any) -> None:
        raise AssertionError("os.killpg does not exist on Windows")

    monkeypatch.setattr(workerModule.os, "killpg", noKillpg, raising=False)
    process = WorkerProcess(["x"])
    process._process = type("P", (), {"pid": 123})()  # type: ignore[assignment]
    monkeypatch.setattr(workerModule.os, "name", "nt")
    process._end_tree(force=False)
    monkeypatch.undo()
    assert calls == [(kill_command(123), {"check": False, "capture_output": True,
                                          **popen_options("nt")})]  # fmt: skip


class StubbornProcess:
    """A Popen that ignores the stop file, SIGTERM and SIGKILL; each wait runs out its timeout
    on a fake clock (``monotonic``), which therefore tells the total time waited."""

    pid = 4321

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def poll(self) -> None:
        return None

    def wait(self, timeout: float | None = None) -> int:
        assert timeout is not None, "cancel must never wait without a timeout"
        self.waits.append(timeout)
        self.now += timeout
        raise subprocess.TimeoutExpired("worker", timeout)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("with_stop_file", [True, False])
def test_cancel_waits_a_bounded_time_in_all_for_a_worker_that_ignores_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_stop_file: bool
) -> None:
    signals: list[int] = []
    monkeypatch.setattr(workerModule.os, "killpg", lambda pid, sig: signals.append(sig))
    process = WorkerProcess(["x"])
    stubborn = StubbornProcess()
    monkeypatch.setattr(workerModule, "time", stubborn)  # the worker's clock only
    process._process = stubborn  # type: ignore[assignment]
    stop = tmp_path / "run" / "stop" if with_stop_file else None
    process.cancel(grace_seconds=3.0, stop_file=stop, kill_seconds=0.5)
    # Before: 3 s after the stop file, 3 s after SIGTERM and 3 s after SIGKILL (9 s).
    assert stubborn.now - 1000.0 == pytest.approx(3.0 + 0.5)
    assert len(stubborn.waits) == (3 if with_stop_file else 2)
    assert signals == [signal.SIGTERM, signal.SIGKILL]
    assert stop is None or stop.is_file()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_worker_that_ignores_the_stop_file_and_sigterm_is_killed(tmp_path: Path) -> None:
    script = "import signal, sys, time\n"
    script += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    script += "print('up', file=sys.stderr, flush=True)\ntime.sleep(120)\n"
    process = WorkerProcess([sys.executable, "-c", script])
    _started(process)
    process.cancel(grace_seconds=1.0, stop_file=tmp_path / "stop", kill_seconds=2.0)
    assert process.returncode == -signal.SIGKILL and not process.running
