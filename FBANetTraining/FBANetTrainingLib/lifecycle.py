"""The training panel's background jobs as a whole: starting, stopping, scene close, exit.

A mixin of :class:`FBANetTrainingLib.logic.FBANetTrainingLogic` (which sets the attributes);
Qt-free. Nothing here waits long: the GUI calls it on its main thread.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from fbanet.protocol import JobState
from FBANetTrainingLib.dataset import InputError
from FBANetTrainingLib.runfolders import discardRunFolder

# Slicer exits: how long in all the GUI waits for the background processes to end (the run
# folder is deleted, so no checkpoint is worth a longer freeze).
EXIT_WAIT_SECONDS = 2.0
# The scene closes: review jobs (whose results would go into the closed scene) are ended.
REVIEW_CANCEL_SECONDS = 1.0


class JobLifecycle:
    """Start guard, stop, exit and scene-close handling of the training panel's jobs."""

    scene: Any
    run: Any
    segmentJob: Any
    rankJob: Any
    isStarting: bool
    labeledExamples: list[Any]
    unlabeledVolumeIds: list[str]
    reviewNodes: list[Any]
    chart: Any
    dataset: Any
    ranking: list[Any]
    rankingVersion: int
    writer: Any
    runsFolder: Any
    registrationError: str

    def summary(self) -> str:
        raise NotImplementedError  # FBANetTrainingLogic: the run's figures

    _closeObserver: int | None

    def discardRun(self) -> None:
        raise NotImplementedError  # FBANetTrainingLogic deletes the run folder

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """The panel's Start at work (installing packages, exporting, which let Qt process
        clicks): a second Start or Resume inside is refused, and their buttons are off.

        Raises:
            InputError: Training is already starting or running.
        """
        if self.isStarting or self.busy():
            raise InputError("Training is already starting or running; wait for it")
        self.isStarting = True
        try:
            yield
        finally:
            self.isStarting = False

    def requestStop(self) -> None:
        """Stop cleanly after the current iteration (the checkpoint is kept); while the
        dataset is still being written, stop writing it (the run never starts)."""
        if self.writing():
            self.writer.cancel()
            self._pollWriter()
        if self.run is not None:
            self.run.request_stop()

    def writing(self) -> bool:
        """Whether Start is writing the dataset (in the background; the run starts after)."""
        return self.writer is not None and self.writer.running

    def _pollWriter(self) -> None:
        """Write more of the dataset; once written, start the run. A dataset that fails or
        is cancelled ends the run (FAILED with the writer's message, or CANCELLED) before it
        started, and its folder is deleted."""
        writer, run = self.writer, self.run
        if writer is None or run is None:
            return
        writer.poll()
        if writer.running:
            return
        self.writer = None
        if writer.state is JobState.SUCCEEDED:
            self.dataset = writer.dataset
            run.start()
            return
        run.state, run.error_message = writer.state, writer.error_message
        discardRunFolder(run.runDir, self.runsFolder)

    def progressView(self) -> tuple[int, int, str]:
        """(value, maximum, status line) for the panel: the dataset's files while Start
        writes them, then the run's iterations."""
        if self.writer is not None and self.writer.running:
            writer = self.writer
            return writer.done, max(writer.total, 1), writer.progressText()
        if self.run is None:
            return 0, 1, ""
        progress = self.run.progress
        return progress.iteration, max(progress.total, 1), self.run.statusText()

    def endOfRunReport(self) -> tuple[str, str, bool]:
        """Once the run ended: (summary for the panel, error to show or '', whether FBANet
        Segmentation should list the new model)."""
        if self.run is None:
            return "", "", False
        summary = self.summary() or self.run.statusText()
        if self.run.state is JobState.FAILED:
            return summary, f"Training failed:\n{self.run.error_message}", False
        if self.run.state is JobState.SUCCEEDED:
            return summary, self.registrationError, not self.registrationError
        return summary, "", False

    def busy(self) -> bool:
        """Whether a background job runs (or Start writes the dataset)."""
        jobs = (self.run, self.segmentJob, self.rankJob)
        return self.writing() or any(job is not None and job.running for job in jobs)

    def cleanup(self, seconds: float = EXIT_WAIT_SECONDS) -> None:
        """End every background process, waiting about ``seconds`` in all (Slicer exits).

        Every job is asked at once (training's stop file), then each is ended within what is
        left of ``seconds`` (terminated, and killed if it still runs: a second more each).
        The GUI waits on this, so it never waits the full checkpoint grace period.
        """
        deadline = time.monotonic() + seconds
        self.requestStop()
        for job in (self.run, self.segmentJob, self.rankJob):
            if job is not None and job.running:
                job.cancel(max(0.0, deadline - time.monotonic()))

    def shutDown(self) -> None:
        """Slicer exits or the module is unloaded: end the processes and delete the run folder
        (Resume ends with it). Calling it again does nothing."""
        self.cleanup()
        self.discardRun()

    def observeScene(self) -> None:
        """Stop every background process when the scene starts to close."""
        if self._closeObserver is None:
            self._closeObserver = self.scene.AddObserver(
                self.scene.StartCloseEvent, lambda caller, event: self.onSceneClosed()
            )

    def stopObservingScene(self) -> None:
        """Undo :meth:`observeScene`."""
        if self._closeObserver is not None:
            self.scene.RemoveObserver(self._closeObserver)
            self._closeObserver = None

    def onSceneClosed(self) -> None:
        """Forget nodes of the closed scene; training is only asked to stop (no waiting).

        The run folder is not part of the scene: polling goes on while training writes its
        checkpoint, and Resume works afterwards. The review jobs, which load their results
        into the scene, are ended. Whatever holds node IDs goes too (the dataset's cases,
        the ranking): ``vtkMRMLScene::Clear`` resets its ID counters, so the next scene hands
        the same IDs to other patients' volumes.
        """
        self.requestStop()
        for job in (self.segmentJob, self.rankJob):
            if job is not None and job.running:
                job.cancel(REVIEW_CANCEL_SECONDS)
        self.labeledExamples, self.unlabeledVolumeIds, self.reviewNodes = [], [], []
        self.chart, self.dataset, self.ranking = None, None, []
        self.rankingVersion += 1  # the panel redraws its (now empty) ranking
