"""The training panel's background runs: train, stop, resume, register, review, failures."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import training_support as support
from training_support import WORKER_ENV, logic, review, runner, selftest, settings

from fbanet.cli.jobs import WorkerJob
from fbanet.model.files import load_model_file, read_model_header
from fbanet.protocol import JobState
from fbanet.train.checkpoints import load_checkpoint

TIMEOUT = 240


def _tinyModelFile(path: Path) -> Path:
    """A random 4-filter fbanet model file (with a spacing, which training then adopts)."""
    import torch

    from fbanet.config import ModelConfig
    from fbanet.model.files import ModelMetadata, save_model_file
    from fbanet.model.network import FBANet

    torch.manual_seed(0)
    config = ModelConfig(base_filters=4, patch_size=(32, 32, 32), projection_dim=8)
    metadata = ModelMetadata(model=config, spacing=(1.2, 1.2, 1.6))
    return save_model_file(path, FBANet(config, with_contrast=False), metadata)


def _processGone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_end_to_end_train_stop_resume_register_and_review(tmp_path: Path) -> None:
    scene = support.newScene()
    panel, events = selftest.runTrainingSelfTest(
        scene, tmp_path, log=lambda message: None, timeout=TIMEOUT, workerEnvironment=WORKER_ENV
    )
    kinds = [e["event"] for e in events]
    assert kinds.count("stopped") == 1 and kinds[-1] == "finished"
    iterations = [e for e in events if e["event"] == "iteration"]
    # Enough iterations that the stop always lands mid-run, however fast the machine.
    total = selftest.TINY_SETTINGS["iterations"]
    steps = list(range(1, total + 1))
    assert [e["iteration"] for e in iterations] == steps  # resumed where it stopped
    assert all(e["total"] == total and "eta_s" in e and e["loss"] > 0 for e in iterations)
    assert [e["iteration"] for e in events if e["event"] == "validation"] == [50, 100]
    # The live chart holds one row per logged iteration and per validation.
    assert [row[0] for row in panel.chart.rows()] == steps
    assert [row[0] for row in panel.chart.rows("dice")] == [50, 100]
    # The registered model is the best validated state, and it loads.
    assert panel.registeredModelPath == tmp_path / "models" / "SelfTestModel.safetensors"
    model, metadata = load_model_file(panel.registeredModelPath)
    assert metadata.model.base_filters == 4 and metadata.num_labeled == 1
    assert read_model_header(panel.run.runDir / "model.safetensors").iterations == total
    assert "Best validation Dice" in panel.summary() and "resuming" in panel.run.log_text()
    # "Annotate these next": both unlabeled volumes, most uncertain first.
    unlabeled = set(panel.unlabeledVolumeIds)
    assert {row.volumeNodeId for row in panel.ranking} == unlabeled
    assert panel.ranking[0].missed or panel.ranking[0].score >= panel.ranking[1].score
    # Polling without a new ranking leaves it alone: the panel redraws its list only on a
    # new version (a redraw every poll loses the selection and double-clicks).
    version, ranking = panel.rankingVersion, panel.ranking
    panel.poll()
    panel.poll()
    assert panel.rankingVersion == version and panel.ranking is ranking
    # One click segments the unlabeled volumes for review: through the FBANet Segmentation
    # module's own job when it is importable, else one `fbanet segment` of them all.
    names = {scene.GetNodeByID(i).GetName() + " FBANet" for i in unlabeled}
    for throughModule in (True, False):
        panel.useSegmentationModule, panel.reviewNodes = throughModule, []
        job = panel.segmentUnlabeled()
        selftest.waitFor(panel, lambda job=job: not job.running, TIMEOUT)
        assert job.state == "succeeded", job.error_message
        assert isinstance(job, review.ModuleSegmentQueue) == throughModule
        assert {node.GetName() for node in panel.reviewNodes} == names, type(job).__name__
        for node in panel.reviewNodes:
            assert node.GetSegmentation().GetNumberOfSegments() >= 1
    del model


def test_a_stop_before_the_first_checkpoint_is_resumable_and_closing_the_scene_stops_it(
    tmp_path: Path,
) -> None:
    scene = support.newScene()
    panel, _ = selftest.tinyLogic(scene, tmp_path / "models", workerEnvironment=WORKER_ENV)
    panel.settings.iterations, panel.settings.validationCases = 100000, 0
    panel.settings.startFrom = settings.START_FILE  # fine-tuning a model file
    panel.settings.initModelPath = str(_tinyModelFile(tmp_path / "start.safetensors"))
    panel.observeScene()
    run = panel.startTraining(tmp_path / "run")
    panel.requestStop()  # before the data is even loaded
    selftest.waitFor(panel, lambda: not run.running, TIMEOUT)
    assert run.state == "stopped", run.log_text()
    assert "initialized from" in run.log_text()
    assert run.progress.iteration == 0 and load_checkpoint(run.checkpointPath)["iteration"] == 0
    assert run.canResume and panel.registeredModelPath is None
    # Resumable: it trains on from the checkpoint...
    panel.resumeTraining()
    selftest.waitFor(panel, lambda: run.progress.iteration >= 1, TIMEOUT)
    pid = run.worker._process.pid
    # ...until the scene closes (File > Close Scene), which asks it to stop without waiting
    # (the GUI must not freeze); polling goes on while it writes its checkpoint.
    scene.Clear(0)
    assert run.state is JobState.STOPPING and run.stop_file.is_file()
    assert panel.labeledExamples == [] and panel.chart is None
    selftest.waitFor(panel, lambda: not run.running, TIMEOUT)
    assert run.state == "stopped" and load_checkpoint(run.checkpointPath)["iteration"] >= 1
    assert _processGone(pid), "the training process group is still alive"
    assert panel.chart is None  # no chart for the closed scene's run in the new one
    panel.stopObservingScene()


def test_a_crashing_worker_is_reported_and_the_scene_is_intact(tmp_path: Path) -> None:
    scene = support.newScene()
    panel, _ = selftest.tinyLogic(scene, tmp_path / "models", workerEnvironment=WORKER_ENV)
    panel.settings.extraArguments = ("--no-such-flag",)
    before, arrays = support.nodeIds(scene), support.volumeArrays(scene)
    run = panel.startTraining(tmp_path / "run")
    selftest.waitFor(panel, lambda: not run.running, TIMEOUT)
    assert run.state == "failed"
    assert "unrecognized arguments: --no-such-flag" in run.error_message
    assert "unrecognized arguments" in run.statusText()
    assert support.nodeIds(scene) == before and panel.chart is None
    after = support.volumeArrays(scene)
    assert all(np.array_equal(arrays[k], after[k]) for k in arrays)


def test_a_corrupt_file_makes_the_worker_fail_with_its_message(tmp_path: Path) -> None:
    (tmp_path / "broken.nrrd").write_bytes(b"NRRD0004\ntype: float\ndimension: 3\n")
    manifest = tmp_path / "manifest.json"
    entry = {"image": "broken.nrrd", "label": "broken.nrrd"}
    manifest.write_text(json.dumps({"labeled": [entry]}))
    run = runner.TrainingRun(
        tmp_path / "run", ["--manifest", manifest, "--device", "cpu"], env=WORKER_ENV
    )
    run.start()
    assert run.wait(TIMEOUT) == "failed"
    assert "broken.nrrd" in run.error_message and "cannot read" in run.error_message
    assert run.worker.returncode == 2


@pytest.fixture(autouse=True)
def _oneThreadWorkers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started by other modules' code (FBANet Segmentation's job) inherit this too."""
    for name, value in WORKER_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(autouse=True)
def _noStrayWorkers() -> Any:
    """Whatever a test does, no training process may outlive it."""
    started: list[Any] = []
    original = WorkerJob._launch

    def tracking(self: Any, arguments: Any) -> None:
        original(self, arguments)
        started.append(self.worker)

    WorkerJob._launch = tracking  # type: ignore[method-assign]
    try:
        yield
    finally:
        WorkerJob._launch = original  # type: ignore[method-assign]
        for worker in started:
            if worker.running:
                os.killpg(worker._process.pid, signal.SIGKILL)
                pytest.fail("a worker process was left running")


def test_registering_replaces_atomically(tmp_path: Path) -> None:
    scene = support.newScene()
    panel = logic.FBANetTrainingLogic(scene)
    panel.settings.modelsFolder, panel.settings.modelName = str(tmp_path / "models"), "Copy"
    run = runner.TrainingRun(tmp_path / "run", [])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"latest")
    panel.run = run
    assert panel.registerModel().read_bytes() == b"latest"
    (tmp_path / "run" / "best_model.safetensors").write_bytes(b"best")
    assert panel.registerModel().read_bytes() == b"best"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["Copy.safetensors"]
