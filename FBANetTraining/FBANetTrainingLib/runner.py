"""Training runs for the panel: ``fbanet train`` with stop and resume, and its progress.

The job class is fbanet's own :class:`fbanet.cli.jobs.WorkerJob` (shared with FBANet
Segmentation); the events and states are the worker contract of :mod:`fbanet.protocol`.
Nothing here imports Qt or MRML: the panel polls :meth:`TrainingRun.poll` from a timer, and
the pytest suite drives the very same classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fbanet.cli.jobs import WorkerJob
from fbanet.protocol import LOSS_FIELDS, Event, ExitCode, JobState, event_kind

# A run that stops writes its checkpoint first: give it this long before ending the process.
STOP_GRACE_SECONDS = 30.0


@dataclasses.dataclass
class TrainingProgress:
    """What the events of a training run said so far."""

    iteration: int = 0
    total: int = 0
    etaSeconds: float | None = None
    losses: dict[str, float] = dataclasses.field(default_factory=dict)
    validationDice: float | None = None
    bestDice: float | None = None
    seconds: float | None = None
    modelPath: str | None = None

    @property
    def fraction(self) -> float:
        """Done, 0..1."""
        return min(1.0, self.iteration / self.total) if self.total else 0.0


def formatDuration(seconds: float | None) -> str:
    """'1 h 02 min', '3 min 05 s' or '12 s'."""
    if seconds is None:
        return "?"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class TrainingRun(WorkerJob):
    """``fbanet train`` on one run folder: start, stop cleanly (stop file), resume.

    States (:class:`JobState`): idle, running, stopping, then succeeded, stopped
    (resumable), failed or cancelled.
    """

    def __init__(
        self,
        runDir: str | Path,
        arguments: Sequence[str | Path],
        python: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.runDir = Path(runDir)
        super().__init__(arguments, python, env, stop_file=self.runDir / "stop")
        self.progress = TrainingProgress()

    @property
    def checkpointPath(self) -> Path:
        """The run's resumable state."""
        return self.runDir / "checkpoints" / "last.pt"

    def _command(self, resume: bool) -> list[str | Path]:
        assert self.stop_file is not None
        command: list[str | Path] = ["train", *self.arguments, "-o", self.runDir, "--json"]
        command += ["--stop-file", self.stop_file]
        return command + (["--resume"] if resume else [])

    def start(self, resume: bool = False) -> None:
        """Start training, or continue the run folder's checkpoint with ``resume``."""
        self.runDir.mkdir(parents=True, exist_ok=True)
        self._launch(self._command(resume))

    def resume(self) -> None:
        """Continue from the latest checkpoint (from scratch if none was written)."""
        if self.running:
            raise RuntimeError("the run is still going; stop it first")
        self.start(resume=True)

    @property
    def canResume(self) -> bool:
        """Stopped, failed or cancelled, with a run folder to continue."""
        resumable = (JobState.STOPPED, JobState.FAILED, JobState.CANCELLED)
        return self.state in resumable and self.runDir.is_dir()

    def handle_event(self, event: dict[str, Any]) -> None:
        progress = self.progress
        kind = event_kind(event)
        if "iteration" in event:
            progress.iteration = int(event["iteration"])
        if kind is Event.ITERATION:
            progress.total = int(event["total"])
            progress.etaSeconds = event["eta_s"]
            progress.losses = {k: event[k] for k in LOSS_FIELDS if event.get(k) is not None}
        elif kind is Event.VALIDATION:
            progress.validationDice = event["dice"]
            progress.bestDice = event["best_dice"]
        elif kind in (Event.FINISHED, Event.STOPPED):
            progress.bestDice = event["best_dice"]
            progress.seconds = event["seconds"]
            progress.modelPath = event["model"]
            progress.etaSeconds = 0.0 if kind is Event.FINISHED else progress.etaSeconds

    def finish(self, returncode: int) -> None:
        super().finish(returncode)
        if returncode == ExitCode.STOPPED:  # a clean stop, even one that cancel asked for
            self.state = JobState.STOPPED

    def cancel(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """Stop now: the stop file and a grace period (checkpoint), then end the process."""
        super().cancel(grace_seconds)

    def statusText(self) -> str:
        """One line for the panel."""
        p = self.progress
        if self.state is JobState.RUNNING and not p.total:
            return "Preparing the data..."
        texts = {
            JobState.IDLE: "Not started",
            JobState.RUNNING: f"Iteration {p.iteration} / {p.total or '?'}, "
            f"about {formatDuration(p.etaSeconds)} left",
            JobState.STOPPING: f"Stopping after iteration {p.iteration} (writing a checkpoint)...",
            JobState.SUCCEEDED: f"Finished: {p.iteration} iterations",
            JobState.STOPPED: f"Stopped at iteration {p.iteration}; "
            "Resume continues from the checkpoint",
            JobState.FAILED: f"Failed: {self.error_message}",
            JobState.CANCELLED: f"Cancelled at iteration {p.iteration}",
        }
        return texts[self.state]

    def bestModelPath(self) -> Path | None:
        """best_model.safetensors when validation ran, else model.safetensors (or None)."""
        for name in ("best_model.safetensors", "model.safetensors"):
            path = self.runDir / name
            if path.is_file():
                return path
        return None


class LogFollower:
    """What a log view has shown of a job's log, so that it appends only the new lines.

    (Rewriting the whole log every poll is slow once the view holds thousands of lines, and
    a view that keeps only its last lines, like the panel's, would never equal the log.)
    """

    def __init__(self) -> None:
        self.job: Any = None
        self.shown = 0

    def update(self, job: Any) -> tuple[bool, list[str]]:
        """``(restart, lines)``: clear the view first when ``restart`` (another job), then
        append ``lines``; ``job`` has ``log_lines()`` (a :class:`WorkerJob`), or is None."""
        restart = job is not self.job
        if restart:
            self.job, self.shown = job, 0
        lines = job.log_lines()[self.shown :] if job is not None else []
        self.shown += len(lines)
        return restart, lines
