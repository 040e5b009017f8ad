"""Running ``fbanet`` commands in a background process and following their progress.

GUIs (the Slicer panels) must never block on inference or training: they start
``<python> -m fbanet <command> ... --json`` (``fbanet/__main__.py`` runs the command line)
through :class:`WorkerProcess`, read its JSON events (:mod:`fbanet.protocol`) from a timer,
and stop it: first by the stop file a training run watches (it then writes a checkpoint),
then by ending the whole process tree. On Windows no console window opens, for the worker
or for ``taskkill``. Nothing here imports Qt or Slicer, so the same code runs under pytest;
:class:`fbanet.cli.jobs.WorkerJob` is the job the panels build on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from fbanet.protocol import ERROR_MARKER, error_message

logger = logging.getLogger(__name__)

__all__ = ["ERROR_MARKER", "WorkerProcess", "fbanet_command", "kill_command", "popen_options"]

# Windows process-creation flags (subprocess has them only on Windows).
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
# WorkerProcess.cancel: the SIGTERM share of the grace period after a stop file, and how long
# a killed process (and its output threads) may take to go; both short, a GUI waits on them.
TERM_SECONDS = 1.0
KILL_WAIT_SECONDS = 1.0


def fbanet_command(
    arguments: Sequence[str], python: str | None = None, module: str = "fbanet"
) -> list[str]:
    """The command line that runs ``python -m <module>`` (the ``fbanet`` CLI) with ``arguments``."""
    return [python or sys.executable, "-m", module, *[str(a) for a in arguments]]


def popen_options(os_name: str | None = None) -> dict[str, Any]:
    """``subprocess.Popen`` options: a process group of its own, and no console on Windows."""
    if (os_name or os.name) == "nt":
        return {"creationflags": CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}


def kill_command(pid: int) -> list[str]:
    """The Windows command that ends process ``pid`` and its children (no console signals
    reach a worker without a console, so the stop file is the graceful way)."""
    return ["taskkill", "/T", "/F", "/PID", str(pid)]


class WorkerProcess:
    """A child process whose stdout carries JSON lines (events) and stderr the log.

    Args:
        command: The full command line (see :func:`fbanet_command`).
        env: Extra environment variables.
        cwd: Working directory.
    """

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> None:
        self.command = [str(c) for c in command]
        # UTF-8 mode: the pipes are read as UTF-8, whatever the locale (PythonSlicer on Windows
        # does not enable it, and a path such as C:\Users\José would come back garbled).
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", "PYTHONUTF8": "1"}
        self.cwd = cwd
        self._process: subprocess.Popen[str] | None = None
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._log: list[str] = []
        self._log_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.cancelled = False

    def start(self) -> None:
        """Start the process (in its own process group, so cancel reaches its children)."""
        if self._process is not None:
            raise RuntimeError("this worker was already started")
        logger.info("starting worker: %s", " ".join(self.command))
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=self.env,
            cwd=self.cwd,
            **popen_options(),
        )
        for stream, handler in (
            (self._process.stdout, self._on_stdout),
            (self._process.stderr, self._on_stderr),
        ):
            thread = threading.Thread(target=self._pump, args=(stream, handler), daemon=True)
            thread.start()
            self._threads.append(thread)

    @staticmethod
    def _pump(stream: IO[str] | None, handler: Any) -> None:
        if stream is None:
            return
        for line in stream:
            handler(line.rstrip("\n"))
        stream.close()

    def _on_stdout(self, line: str) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = None
        if isinstance(event, dict):
            self._events.put(event)
        else:
            self._on_stderr(line)

    def _on_stderr(self, line: str) -> None:
        with self._log_lock:
            self._log.append(line)

    # -- polling -----------------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        """JSON events received since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def log(self) -> list[str]:
        """Every log line so far."""
        with self._log_lock:
            return list(self._log)

    @property
    def running(self) -> bool:
        """Whether the process is still running."""
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit code, or None while running."""
        return None if self._process is None else self._process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process and its output to end; returns the exit code."""
        if self._process is None:
            raise RuntimeError("the worker was not started")
        code = self._process.wait(timeout)
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    def error_message(self) -> str:
        """The worker's own error message (its ``fbanet <cmd>: error: ...`` line), if any."""
        lines = self.log()
        message = error_message(lines)
        if message is not None:
            return message
        tail = [line for line in lines if line.strip()][-3:]
        return "\n".join(tail) if tail else f"the worker exited with code {self.returncode}"

    # -- stopping ----------------------------------------------------------------------------
    def cancel(
        self,
        grace_seconds: float = 5.0,
        stop_file: str | Path | None = None,
        kill_seconds: float = KILL_WAIT_SECONDS,
    ) -> None:
        """Stop the process and everything it started, waiting at most ``grace_seconds +
        kill_seconds`` in all (a GUI calls this on its main thread).

        With ``stop_file`` (a training run watches one), the file is created and the worker
        gets most of ``grace_seconds`` to write its checkpoint and exit. Then the process
        group is terminated (SIGTERM, which a run also answers with a checkpoint) for the
        rest of the grace period and, if it is still there, killed, with ``kill_seconds`` to
        go. On Windows, which has no SIGTERM for a worker without a console, the second step
        is ``taskkill /T /F`` (without a console window).
        """
        if not self.running:
            return
        self.cancelled = True
        assert self._process is not None
        deadline = time.monotonic() + max(0.0, grace_seconds)
        if stop_file is not None:
            Path(stop_file).parent.mkdir(parents=True, exist_ok=True)
            Path(stop_file).touch()
            if self._wait_until(deadline - min(TERM_SECONDS, grace_seconds / 2)):
                return self._join(time.monotonic() + kill_seconds)
        self._end_tree(force=os.name == "nt")
        ended = self._wait_until(deadline)
        last = time.monotonic() + kill_seconds  # the killing and the last output share this
        if not ended:
            logger.warning("worker %d did not end; killing it", self._process.pid)
            self._end_tree(force=True)
            self._wait_until(last)
        self._join(last)

    def _wait_until(self, deadline: float) -> bool:
        """Wait for the process until ``deadline`` (``time.monotonic``); whether it ended."""
        assert self._process is not None
        try:
            self._process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True

    def _end_tree(self, force: bool) -> None:
        assert self._process is not None
        pid = self._process.pid
        if os.name == "nt":
            subprocess.run(kill_command(pid), check=False, capture_output=True, **popen_options())
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)

    def _join(self, deadline: float) -> None:
        """Let the output threads deliver the last lines, until ``deadline`` at most."""
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
