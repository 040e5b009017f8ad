"""Running ``fbanet`` commands in a background process and following their progress.

GUIs (the Slicer panels) must never block on inference or training: they start
``python -m fbanet <command> ... --json`` through :class:`WorkerProcess`, poll its JSON
events from a timer, and can cancel the whole process tree. Nothing here imports Qt or
Slicer, so the same runner is tested under pytest.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

ERROR_MARKER = ": error: "


def fbanet_command(arguments: Sequence[str], python: str | None = None) -> list[str]:
    """The command line that runs ``fbanet`` with ``arguments`` in ``python``."""
    return [python or sys.executable, "-m", "fbanet", *[str(a) for a in arguments]]


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
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
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
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            kwargs["start_new_session"] = True
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
            **kwargs,
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
        for line in reversed(lines):
            if ERROR_MARKER in line:
                return line.split(ERROR_MARKER, 1)[1].strip()
        tail = [line for line in lines if line.strip()][-3:]
        return "\n".join(tail) if tail else f"the worker exited with code {self.returncode}"

    # -- stopping ----------------------------------------------------------------------------
    def cancel(self, grace_seconds: float = 5.0) -> None:
        """Stop the process and everything it started: terminate, then kill after a grace."""
        if not self.running:
            return
        self.cancelled = True
        assert self._process is not None
        pid = self._process.pid
        try:
            if os.name == "nt":
                subprocess.run(
                    ["taskkill", "/T", "/F", "/PID", str(pid)], check=False, capture_output=True
                )
            else:
                os.killpg(pid, signal.SIGTERM)
            self._process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            logger.warning("worker %d ignored SIGTERM; killing it", pid)
            os.killpg(pid, signal.SIGKILL)
            self._process.wait(grace_seconds)
        except ProcessLookupError:
            pass
        for thread in self._threads:
            thread.join(timeout=2)
