"""The module's self-test, shared by Slicer's ScriptedLoadableModuleTest and by pytest.

A synthetic scene (two labeled, two unlabeled volumes of different geometry) trains a
tiny FBA-Net for a few iterations through the panel's logic: start, a clean stop after
the first iteration, resume to the end, registration of the model, then ranking of the
unlabeled volumes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fbanet.protocol import JobState
from FBANetTrainingLib import synthetic
from FBANetTrainingLib.logic import FBANetTrainingLogic
from FBANetTrainingLib.runner import TrainingRun
from FBANetTrainingLib.settings import START_SCRATCH, SettingsChoice, TrainingSettings

TINY_SETTINGS: dict[str, Any] = {
    "iterations": 100, "patchSize": (16, 16, 16), "batchSize": 2, "labeledBatchSize": 1,
    "learningRate": 0.01, "validationCases": 1, "validateEvery": 50, "checkpointEvery": 50,
    "device": "cpu", "startFrom": START_SCRATCH, "baseFilters": 4,
    # The custom fields, run to the end (no fine-tune preset, no time budget).
    "settingsChoice": SettingsChoice.CUSTOM, "useTimeBudget": False,
    "extraArguments": ("--fp32", "--log-every", "1", "--seed", "3"),
}  # fmt: skip


def tinyLogic(
    scene: Any,
    modelsFolder: str | Path,
    modelName: str = "SelfTestModel",
    workerEnvironment: dict[str, str] | None = None,
) -> tuple[FBANetTrainingLogic, synthetic.SyntheticScene]:
    """A logic on ``scene`` with the synthetic cases as inputs and tiny settings."""
    built = synthetic.buildSyntheticScene(scene)
    logic = FBANetTrainingLogic(scene, workerEnvironment=workerEnvironment)
    logic.settings = TrainingSettings(
        **TINY_SETTINGS, modelName=modelName, modelsFolder=str(modelsFolder)
    )
    for volume, segmentation, segmentId in built.labeled:
        logic.addLabeledExample(volume, segmentation, segmentId)
    logic.takeUnusedVolumes()
    return logic, built


def waitFor(
    logic: FBANetTrainingLogic,
    condition: Callable[[], bool],
    timeout: float,
    log: Callable[[str], None] | None = None,
    events: list[dict[str, Any]] | None = None,
) -> None:
    """Poll the logic until ``condition()`` holds; collects the training events."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        new = logic.poll()
        if events is not None:
            events.extend(new)
        if log is not None and new:
            log(logic.run.statusText() if logic.run else "")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout} s; log:\n{logic.run.log_text() if logic.run else ''}"
            )
        time.sleep(0.1)
    new = logic.poll()
    if events is not None:
        events.extend(new)


def runTrainingSelfTest(
    scene: Any,
    workFolder: str | Path,
    log: Callable[[str], None] = print,
    timeout: float = 240,
    rank: bool = True,
    workerEnvironment: dict[str, str] | None = None,
) -> tuple[FBANetTrainingLogic, list[dict[str, Any]]]:
    """Train through the panel's logic on a synthetic scene; raise AssertionError on failure.

    Returns the logic and the training events, for further checks.
    """
    workFolder = Path(workFolder)
    logic, _ = tinyLogic(scene, workFolder / "models", workerEnvironment=workerEnvironment)
    problems = logic.checkInputs()
    assert not problems, problems
    events: list[dict[str, Any]] = []
    run = logic.startTraining(workFolder / "run")
    log("Training started")
    waitFor(logic, lambda: run.progress.iteration >= 1, timeout, log, events)
    logic.requestStop()
    waitFor(logic, lambda: not run.running, timeout, log, events)
    assert _state(run) is JobState.STOPPED, (run.state, run.error_message)
    assert run.checkpointPath.is_file(), "no checkpoint after a clean stop"
    log(f"Stopped at iteration {run.progress.iteration}; resuming")
    logic.resumeTraining()
    waitFor(logic, lambda: not run.running, timeout, log, events)
    assert _state(run) is JobState.SUCCEEDED, (run.state, run.error_message, run.log_text())
    registered = logic.registeredModelPath
    assert registered is not None and registered.is_file(), logic.registrationError
    from fbanet.model.header import read_model_header

    header = read_model_header(registered)
    assert header.iterations == TINY_SETTINGS["iterations"], header.iterations
    log(logic.summary())
    if rank:
        rankJob = logic.rankUnlabeled()
        waitFor(logic, lambda: not rankJob.running, timeout)
        assert rankJob.state is JobState.SUCCEEDED, rankJob.error_message
        assert len(logic.ranking) == 2, logic.ranking
        log("Annotate these next: " + "; ".join(r.describe() for r in logic.ranking))
    return logic, events


def _state(run: TrainingRun) -> JobState:
    """The run's state now (a call, so that a type checker does not keep an earlier one)."""
    return run.state


def runModuleSelfTest(test: Any, scene: Any, temporaryFolder: str | Path) -> None:
    """The module's ScriptedLoadableModuleTest: train on a synthetic scene, check the events
    and the chart (``test`` is the test case: its asserts and its delayDisplay)."""
    import logging
    import tempfile

    from fbanet.protocol import Event, event_kind

    test.delayDisplay("Training a tiny FBA-Net on a synthetic scene")
    with tempfile.TemporaryDirectory(dir=temporaryFolder) as folder:
        logic, events = runTrainingSelfTest(scene, folder, log=logging.info)
        test.assertTrue(any(event_kind(e) is Event.VALIDATION for e in events))
        test.assertIsNotNone(logic.chart)
        logic.cleanup()
    test.delayDisplay("Test passed")
