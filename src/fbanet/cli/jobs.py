"""One background ``fbanet`` command as a job a GUI polls: the panels' one job class.

:class:`WorkerJob` starts a :class:`~fbanet.cli.worker.WorkerProcess`, hands each event of
the worker contract (:mod:`fbanet.protocol`) to :meth:`WorkerJob.handle_event` in order, and
turns the exit code into a :class:`~fbanet.protocol.JobState`. The Slicer panels subclass it
(segmentation, training with stop and resume, review jobs, the device probe); nothing here
imports Qt, Slicer or torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fbanet.cli.environment import python_executable, worker_environment
from fbanet.cli.worker import WorkerProcess, fbanet_command
from fbanet.protocol import JobState, state_for_exit


class WorkerJob:
    """``python -m fbanet <arguments>`` in a background process, followed by polling.

    Args:
        arguments: The ``fbanet`` arguments (``--json`` included by the caller).
        python: Interpreter for the worker (default: :func:`python_executable`).
        env: Extra environment variables for the worker.
        stop_file: A file whose appearance asks the worker to stop cleanly (training);
            :meth:`cancel` creates it and waits before ending the process.
        module: The module ``python -m`` runs (the ``fbanet`` CLI by default).
    """

    def __init__(
        self,
        arguments: Sequence[str | Path],
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        stop_file: str | Path | None = None,
        module: str = "fbanet",
    ) -> None:
        self.module = module
        self.arguments = [str(a) for a in arguments]
        self.python = python or python_executable()
        self.env = worker_environment(env)
        self.stop_file = Path(stop_file) if stop_file is not None else None
        self.worker: WorkerProcess | None = None
        self.state = JobState.IDLE
        self.error_message = ""
        self.started_at: float | None = None
        self._earlier_log: list[str] = []

    # -- starting ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the command (returns at once)."""
        self._launch(self.arguments)

    def _launch(self, arguments: Sequence[str | Path]) -> None:
        if self.running:
            raise RuntimeError("this job is already running")
        if self.worker is not None:
            self._earlier_log += self.worker.log()
        if self.stop_file is not None:
            self.stop_file.unlink(missing_ok=True)
        command = fbanet_command([str(a) for a in arguments], self.python, self.module)
        self.worker = WorkerProcess(command, env=self.env)
        self.error_message = ""
        self.started_at = time.monotonic()
        self.worker.start()
        self.state = JobState.RUNNING

    # -- following -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the worker has not yet been seen to end."""
        return self.state.active

    def poll(self) -> list[dict[str, Any]]:
        """New events since the last call (handled in order); sets :attr:`state` at the end."""
        if self.worker is None:
            return []
        events = self.worker.events()
        ended = self.running and self.worker.returncode is not None
        if ended:
            self.worker.wait(timeout=10)  # the output threads have delivered everything
            events += self.worker.events()
        for event in events:
            self.handle_event(event)
        if ended:
            self.finish(self.worker.returncode or 0)
        return events

    def handle_event(self, event: dict[str, Any]) -> None:
        """Called for each event, in order (subclasses keep what they need)."""

    def finish(self, returncode: int) -> None:
        """The worker exited with ``returncode``: set the final state (subclasses add)."""
        assert self.worker is not None
        self.state = state_for_exit(returncode, self.worker.cancelled)
        if self.state is JobState.FAILED:
            self.error_message = self.worker.error_message()

    def log_lines(self) -> list[str]:
        """Every log line of every start of this job."""
        return self._earlier_log + (self.worker.log() if self.worker is not None else [])

    def log_text(self) -> str:
        """The whole log as one text."""
        return "\n".join(self.log_lines())

    # -- stopping ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask for a clean stop through the stop file (training writes a checkpoint)."""
        if self.running and self.stop_file is not None:
            self.stop_file.parent.mkdir(parents=True, exist_ok=True)
            self.stop_file.touch()
            self.state = JobState.STOPPING

    def cancel(self, grace_seconds: float = 5.0) -> None:
        """End the worker: stop file and grace period first (if any), then its process tree."""
        if self.worker is not None and self.worker.running:
            self.worker.cancel(grace_seconds, stop_file=self.stop_file)
        self.poll()
        if self.running:  # ended between the checks: poll saw no return code yet
            self.state = JobState.CANCELLED

    def wait(
        self,
        timeout: float,
        on_events: Callable[[list[dict[str, Any]]], None] | None = None,
        interval: float = 0.1,
    ) -> JobState:
        """Poll until the job ends (scripts and tests); returns the final state.

        Raises:
            TimeoutError: ``timeout`` seconds passed (the worker is cancelled).
        """
        deadline = time.monotonic() + timeout
        while self.running:
            events = self.poll()
            if on_events is not None and events:
                on_events(events)
            if not self.running:
                break
            if time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"fbanet did not finish within {timeout} s")
            time.sleep(interval)
        return self.state
