"""Background ``fbanet`` processes for the panel: training runs (stop/resume) and review jobs.

Nothing here imports Qt or MRML: the panel polls :meth:`BackgroundJob.poll` from a timer,
and the pytest suite drives the very same classes.
"""

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

from fbanet.cli.worker import WorkerProcess, fbanet_command

EXIT_STOPPED = 130
LOSS_KEYS = ("loss", "dice_loss", "consistency_loss", "contrastive_loss")


def pythonExecutable():
    """The Python that runs ``fbanet``: PythonSlicer inside Slicer, else this interpreter."""
    try:
        import slicer
    except ImportError:
        return sys.executable
    if getattr(slicer, "app", None) is None:  # slicer-core outside the Slicer application
        return sys.executable
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    found = shutil.which("PythonSlicer") or str(Path(sys.executable).with_name(name))
    return found if Path(found).exists() else sys.executable


def workerEnvironment(extra=None):
    """Environment additions for workers: the fbanet this process uses first on PYTHONPATH."""
    import fbanet

    parent = str(Path(fbanet.__file__).resolve().parent.parent)
    existing = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys([parent, *existing])), **(extra or {})}


class BackgroundJob:
    """One ``fbanet`` command in a background process, followed through its JSON events.

    States: 'idle', 'running', then 'succeeded', 'failed' or 'cancelled'
    (subclasses add their own).
    """

    def __init__(self, arguments, python=None, env=None):
        self.arguments = [str(a) for a in arguments]
        self.python = python or pythonExecutable()
        self.env = workerEnvironment(env)
        self.worker = None
        self.state = "idle"
        self.errorMessage = ""
        self.startedAt = None
        self._earlierLog = []

    def _start(self, arguments):
        if self.running:
            raise RuntimeError("this job is already running")
        if self.worker is not None:
            self._earlierLog += self.worker.log()
        self.worker = WorkerProcess(fbanet_command(arguments, self.python), env=self.env)
        self.errorMessage = ""
        self.startedAt = time.monotonic()
        self.worker.start()
        self.state = "running"

    def start(self):
        """Start the command."""
        self._start(self.arguments)

    @property
    def running(self):
        """Whether the process has not yet been seen to end."""
        return self.state in ("running", "stopping")

    def poll(self):
        """New events since the last call; updates :attr:`state` once the process has ended."""
        if self.worker is None:
            return []
        events = self.worker.events()
        if self.running and self.worker.returncode is not None:
            self.worker.wait(timeout=10)  # the output threads have delivered everything
            events += self.worker.events()
            for event in events:
                self.handleEvent(event)
            self._finish(self.worker.returncode)
            return events
        for event in events:
            self.handleEvent(event)
        return events

    def handleEvent(self, event):
        """Called for each event, in order (subclasses keep state)."""

    def _finish(self, returncode):
        if self.worker.cancelled:
            self.state = "cancelled"
        elif returncode == 0:
            self.state = "succeeded"
        else:
            self.state = "failed"
            self.errorMessage = self.worker.error_message()

    def logText(self):
        """The whole log (every start of this job), as one text."""
        lines = self._earlierLog + (self.worker.log() if self.worker is not None else [])
        return "\n".join(lines)

    def cancel(self, graceSeconds=5.0):
        """End the process tree (terminate, then kill after the grace period)."""
        if self.worker is not None and self.worker.running:
            self.worker.cancel(graceSeconds)
        self.poll()

    def waitUntilDone(self, timeout, onEvents=None, interval=0.1):
        """Poll until the job ends (for scripts and tests); returns the final state."""
        deadline = time.monotonic() + timeout
        while self.running:
            events = self.poll()
            if onEvents is not None and events:
                onEvents(events)
            if not self.running:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"fbanet did not finish within {timeout} s")
            time.sleep(interval)
        return self.state


@dataclasses.dataclass
class TrainingProgress:
    """What the events of a training run said so far."""

    iteration: int = 0
    total: int = 0
    etaSeconds: float | None = None
    losses: dict = dataclasses.field(default_factory=dict)
    validationDice: float | None = None
    bestDice: float | None = None
    seconds: float | None = None
    modelPath: str | None = None

    @property
    def fraction(self):
        """Done, 0..1."""
        return min(1.0, self.iteration / self.total) if self.total else 0.0


def formatDuration(seconds):
    """'1 h 02 min', '3 min 05 s' or '12 s'."""
    if seconds is None:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


class TrainingRun(BackgroundJob):
    """``fbanet train`` on one run folder: start, stop cleanly (stop file), resume.

    States: 'idle', 'running', 'stopping', then 'finished', 'stopped' (resumable),
    'failed' or 'cancelled'.
    """

    def __init__(self, runDir, arguments, python=None, env=None):
        super().__init__(arguments, python, env)
        self.runDir = Path(runDir)
        self.progress = TrainingProgress()

    @property
    def stopFile(self):
        """Creating this file asks the run to stop after the current iteration."""
        return self.runDir / "stop"

    @property
    def checkpointPath(self):
        """The run's resumable state."""
        return self.runDir / "checkpoints" / "last.pt"

    def _command(self, resume):
        command = [
            "train",
            *self.arguments,
            "-o",
            self.runDir,
            "--json",
            "--stop-file",
            self.stopFile,
        ]
        return command + (["--resume"] if resume else [])

    def start(self, resume=False):
        """Start training, or continue the run folder's checkpoint with ``resume``."""
        self.runDir.mkdir(parents=True, exist_ok=True)
        self.stopFile.unlink(missing_ok=True)
        self._start(self._command(resume))

    def resume(self):
        """Continue from the latest checkpoint (from scratch if none was written)."""
        if self.running:
            raise RuntimeError("the run is still going; stop it first")
        self.start(resume=True)

    def requestStop(self):
        """Ask for a clean stop: the run ends after this iteration, with a checkpoint."""
        if self.running:
            self.stopFile.parent.mkdir(parents=True, exist_ok=True)
            self.stopFile.touch()
            self.state = "stopping"

    @property
    def canResume(self):
        """Stopped, failed or cancelled, with a run folder to continue."""
        return self.state in ("stopped", "failed", "cancelled") and self.runDir.is_dir()

    def handleEvent(self, event):
        progress = self.progress
        kind = event.get("event")
        if "iteration" in event:
            progress.iteration = int(event["iteration"])
        if kind == "iteration":
            progress.total = int(event.get("total", progress.total))
            progress.etaSeconds = event.get("eta_s")
            progress.losses = {k: event[k] for k in LOSS_KEYS if event.get(k) is not None}
        elif kind == "validation":
            progress.validationDice = event.get("dice")
            progress.bestDice = event.get("best_dice")
        elif kind in ("finished", "stopped"):
            progress.bestDice = event.get("best_dice", progress.bestDice)
            progress.seconds = event.get("seconds")
            progress.modelPath = event.get("model")
            progress.etaSeconds = 0.0 if kind == "finished" else progress.etaSeconds

    def _finish(self, returncode):
        if returncode == EXIT_STOPPED:
            self.state = "stopped"
        elif returncode == 0:
            self.state = "finished"
        else:
            super()._finish(returncode)

    def cancel(self, graceSeconds=10.0):
        """Stop now: stop file, then terminate (the run checkpoints on SIGTERM), then kill."""
        if self.running:
            self.requestStop()
        super().cancel(graceSeconds)

    def statusText(self):
        """One line for the panel."""
        p = self.progress
        texts = {
            "idle": "Not started",
            "running": f"Iteration {p.iteration} / {p.total or '?'}, "
            f"about {formatDuration(p.etaSeconds)} left",
            "stopping": f"Stopping after iteration {p.iteration} (writing a checkpoint)...",
            "finished": f"Finished: {p.iteration} iterations",
            "stopped": f"Stopped at iteration {p.iteration}; Resume continues from the checkpoint",
            "failed": f"Failed: {self.errorMessage}",
            "cancelled": f"Cancelled at iteration {p.iteration}",
        }
        if self.state == "running" and not p.total:
            return "Preparing the data..."
        return texts.get(self.state, self.state)

    def bestModelPath(self):
        """best_model.safetensors when validation ran, else model.safetensors (or None)."""
        for name in ("best_model.safetensors", "model.safetensors"):
            path = self.runDir / name
            if path.is_file():
                return path
        return None
