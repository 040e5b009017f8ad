"""Start training writes the dataset off the GUI thread, with progress, and Stop cancels it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import training_support as support
from training_support import logic, runner, synthetic, writer

from fbanet.protocol import JobState


@pytest.fixture
def panel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    scene = support.newScene()
    built = synthetic.buildSyntheticScene(scene)
    trainingLogic = logic.FBANetTrainingLogic(scene, runsFolder=tmp_path / "runs")
    for volume, segmentation, segmentId in built.labeled:
        trainingLogic.addLabeledExample(volume, segmentation, segmentId)
    trainingLogic.takeUnusedVolumes()
    trainingLogic.settings.modelsFolder = str(tmp_path / "models")
    trainingLogic.settings.startFrom = "scratch"
    started: list[Any] = []
    monkeypatch.setattr(
        runner.TrainingRun, "start", lambda self, resume=False: started.append(self)
    )
    trainingLogic.started = started
    return trainingLogic


class Gate:
    """Holds the writer thread until opened; records which threads wrote files."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open, self.threads = threading.Event(), []
        write = writer.writeNrrd

        def gated(voxels: Any, path: Path) -> Path:
            self.threads.append(threading.current_thread())
            assert self.open.wait(timeout=60), "the gate was never opened"
            return write(voxels, path)

        monkeypatch.setattr(writer, "writeNrrd", gated)


def _pollUntil(panel: Any, done: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        panel.poll()
        time.sleep(0.01)
    assert done()


def test_start_returns_at_once_and_the_files_are_written_off_the_gui_thread(
    panel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    run = panel.startTraining(background=True)  # returns while no file can be written
    assert panel.writing() and panel.busy() and run.state is JobState.IDLE
    assert panel.buttonStates()["stopButton"] and not panel.buttonStates()["startButton"]
    before = time.monotonic()
    panel.poll()  # the GUI's timer: never waits for a file
    assert time.monotonic() - before < 5.0 and panel.writer.done == 0 and not panel.started
    total = panel.writer.total
    assert total == 4 and panel.writer.progressText() == (
        "Writing the dataset: 0 of 4 volumes written..."
    )
    gate.open.set()
    seen: list[int] = []
    _pollUntil(panel, lambda: seen.append(panel.writer.done if panel.writer else total)
               or bool(panel.started))  # fmt: skip
    assert seen == sorted(seen) and seen[-1] == total  # the progress moves to the end
    assert panel.started == [run] and panel.dataset is not None and panel.writer is None
    # The panel's default holds the last labeled example out for validation.
    dataset = panel.dataset
    assert (len(dataset.labeled), len(dataset.validation), len(dataset.unlabeled)) == (1, 1, 2)
    assert all(t is not threading.main_thread() for t in gate.threads) and len(gate.threads) == 6


def test_stop_while_writing_cancels_and_deletes_the_run_folder(
    panel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    run = panel.startTraining(background=True)
    panel.poll()
    threading.Timer(0.2, gate.open.set).start()  # the file being written finishes
    panel.requestStop()
    assert not panel.writing() and not panel.busy() and panel.started == []
    assert run.state is JobState.CANCELLED and not run.runDir.exists() and not run.canResume
    assert panel.buttonStates()["startButton"]


def test_a_bad_example_found_while_writing_fails_the_run_with_its_message(
    panel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(monkeypatch)
    second = panel.labeledExamples[1]
    segmentation = panel.scene.GetNodeByID(second.segmentationNodeId)
    run = panel.startTraining(background=True)  # the cheap checks pass; one file at a time
    segmentation.GetSegmentation().RemoveSegment(second.segmentId)  # the user deletes it
    gate.open.set()
    _pollUntil(panel, lambda: not panel.busy())
    assert run.state is JobState.FAILED and "Labeled example 2" in run.error_message
    assert panel.started == [] and not run.runDir.exists() and not run.canResume
