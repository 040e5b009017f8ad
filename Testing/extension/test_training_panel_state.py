"""The training panel's state on real MRML: ticks, run folders, dependencies, the .ui limits."""

from __future__ import annotations

import math
import os
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import training_support as support
from training_support import (
    ROOT,
    lifecycle,
    logic,
    review,
    runfolders,
    runner,
    settings,
    synthetic,
)

from fbanet.cli import environment
from fbanet.protocol import JobState


@pytest.fixture
def panel(tmp_path: Path) -> Any:
    scene = support.newScene()
    built = synthetic.buildSyntheticScene(scene)
    trainingLogic = logic.FBANetTrainingLogic(scene, runsFolder=tmp_path / "runs")
    for volume, segmentation, segmentId in built.labeled:
        trainingLogic.addLabeledExample(volume, segmentation, segmentId)
    trainingLogic.built = built
    return trainingLogic


def test_ticks_survive_nodes_added_by_add_check_and_the_user(panel: Any) -> None:
    first, second = (v.GetID() for v in panel.built.unlabeled)
    panel.setUnlabeledChecked(first, True)
    assert [c for c in panel.unlabeledChoices() if c[2]] == [(first, "Unlabeled1", True)]
    # Check exports every example through temporary labelmap nodes (added, then removed)...
    assert panel.checkLabeledExamples() == []
    # ...and the user adds a volume: the scene changes, the list is rebuilt from the logic.
    added = synthetic.addVolume(
        panel.scene, "New", synthetic.UNLABELED_GEOMETRIES[0], (0.0, 0.0, 0.0), (5.0, 5.0, 5.0)
    )
    choices = {nodeId: ticked for nodeId, _, ticked in panel.unlabeledChoices()}
    assert choices[first] and not choices[second] and not choices[added.GetID()]
    panel.setUnlabeledChecked(second, True)
    panel.setUnlabeledChecked(first, False)
    assert panel.unlabeledVolumeIds == [second]
    # A volume that leaves the scene leaves the ticks.
    panel.scene.RemoveNode(panel.built.unlabeled[1])
    assert panel.unlabeledChoices()[-1][0] == added.GetID() and panel.unlabeledVolumeIds == []


def test_runs_go_to_slicers_temporary_folder_and_are_cleaned_up(
    panel: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(support.slicer, "app", types.SimpleNamespace(temporaryPath=str(tmp_path)),
                        raising=False)  # fmt: skip
    assert runfolders.runsRoot() == tmp_path / "FBANet" / "runs"
    root = panel.runsFolder
    stale, recent = root / "old-run", root / "recent-run"
    for folder in (stale, recent):
        (folder / "dataset").mkdir(parents=True)
    week = runfolders.MAX_AGE_SECONDS
    os.utime(stale, (time.time() - week - 60,) * 2)
    runDir = panel.newRunFolder()  # prunes what a crash or another session left a week ago
    assert runDir.parent == root and not stale.exists() and recent.exists()
    # A run that has ended is deleted when the next one starts (or Slicer exits)...
    panel.run = runner.TrainingRun(runDir, [])
    panel.run.state = JobState.STOPPED
    (runDir / "dataset" / "case.nrrd").parent.mkdir()
    (runDir / "dataset" / "case.nrrd").write_bytes(b"voxels")
    panel.shutDown()
    assert not runDir.exists() and panel.run is None
    # ...but a folder the caller chose outside the runs folder is never deleted.
    mine = tmp_path / "mine"
    mine.mkdir()
    panel.run = runner.TrainingRun(mine, [])
    panel.discardRun()
    assert mine.is_dir()


def test_missing_packages_are_reported_and_installable_from_the_training_panel(
    panel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    panel.takeUnusedVolumes()
    assert panel.checkInputs() == []
    monkeypatch.setattr(logic, "missing_requirements", lambda: ["h5py>=3.8"])
    monkeypatch.setattr(logic, "torch_problem", lambda: "torch 2.0.1 is older than 2.1")
    (problem,) = panel.checkInputs()
    assert "torch>=2.1 (torch 2.0.1 is older than 2.1)" in problem and "h5py>=3.8" in problem
    assert "Start training" in problem and "restart" not in problem


def _uiWidget(name: str) -> ET.Element:
    ui = ROOT / "FBANetTraining" / "Resources" / "UI" / "FBANetTraining.ui"
    return next(w for w in ET.parse(ui).getroot().iter("widget") if w.get("name") == name)


def test_the_learning_rate_box_cannot_reach_zero() -> None:
    box = _uiWidget("learningRateSpinBox")
    decimals = int(box.findtext("property[@name='decimals']/number"))
    minimum = float(box.findtext("property[@name='minimum']/double"))
    # Qt rounds the minimum to the shown decimals: with 5 decimals 1e-6 became 0.
    assert round(minimum, decimals) > 0 and math.isclose(round(minimum, decimals), 1e-6)


def test_both_panels_offer_the_same_devices() -> None:
    assert tuple(c.value for c in environment.DeviceChoice) == settings.DEVICE_CHOICES
    assert settings.DEVICE_CHOICES == ("auto", "cuda", "mps", "cpu")
    # A scene saved when Segmentation's enum called CUDA "GPU" (stored by name) still loads.
    assert environment.DeviceChoice["GPU"] is environment.DeviceChoice.CUDA
    for module in ("FBANetSegmentation", "FBANetTraining"):
        source = (ROOT / module / f"{module}.py").read_text()
        assert "device: DeviceChoice = DeviceChoice.AUTO" in source, module


def test_a_failed_review_job_is_reported_once_and_buttons_follow_the_run(
    panel: Any, tmp_path: Path
) -> None:
    assert panel.buttonStates() == {
        "startButton": True, "stopButton": False, "resumeButton": False,
        "segmentUnlabeledButton": False, "rankButton": False, "copyLogButton": False,
        "exportJobButton": True, "importModelButton": True, "copyCommandButton": False,
    }  # fmt: skip
    job = review.RankJob([], tmp_path / "model.safetensors")
    job.state, job.error_message = JobState.FAILED, "no such model"
    panel.rankJob = job
    assert panel.newReviewFailures() == ["Ranking failed:\nno such model"]
    assert panel.newReviewFailures() == []
    panel.run = runner.TrainingRun(tmp_path / "run", [])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"weights")
    panel.run.state = JobState.STOPPED
    states = panel.buttonStates()
    assert states["resumeButton"] and states["rankButton"] and not states["stopButton"]


class StubbornJob:
    """A background job that ignores its stop file and its grace period: each cancel runs
    out the time it is given on ``clock`` before the job is ended."""

    def __init__(self, clock: list[float], run_dir: Path | None = None) -> None:
        self.clock, self.runDir = clock, run_dir
        self.running, self.graces, self.stopRequested = True, [], False
        self.state = JobState.RUNNING

    def request_stop(self) -> None:
        self.stopRequested = True

    def cancel(self, grace_seconds: float = 5.0) -> None:
        self.graces.append(grace_seconds)
        self.clock[0] += grace_seconds
        self.running, self.state = False, JobState.CANCELLED


def test_exit_waits_a_few_seconds_in_all_and_deletes_the_run_folder(
    panel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(lifecycle, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    runDir = panel.newRunFolder()
    (runDir / "dataset").mkdir()
    jobs = [StubbornJob(clock, runDir), StubbornJob(clock), StubbornJob(clock)]
    panel.run, panel.segmentJob, panel.rankJob = jobs
    panel.shutDown()
    # Before: 30 s for training's checkpoint (then 30 s more for SIGTERM and for SIGKILL
    # inside the worker), 5 s for each review job: over a minute of frozen GUI.
    assert clock[0] - 100.0 <= lifecycle.EXIT_WAIT_SECONDS
    assert jobs[0].stopRequested and all(job.graces and not job.running for job in jobs)
    assert not runDir.exists() and panel.run is None
    panel.shutDown()  # again (aboutToQuit after the widget's cleanup): nothing to do


def test_closing_the_scene_only_asks_training_to_stop(panel: Any) -> None:
    clock = [0.0]
    run, review = StubbornJob(clock, panel.newRunFolder()), StubbornJob(clock)
    panel.run, panel.segmentJob = run, review
    panel.onSceneClosed()
    assert run.stopRequested and run.graces == [] and run.running  # polling goes on
    assert review.graces == [lifecycle.REVIEW_CANCEL_SECONDS] and not review.running
    assert run.runDir.is_dir() and panel.labeledExamples == []


def test_start_exports_each_label_map_once(
    panel: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    panel.takeUnusedVolumes()
    exports: list[str] = []
    export = support.dataset._exportToLabelmapNode
    monkeypatch.setattr(support.dataset, "_exportToLabelmapNode",
                        lambda scene, s, segment_id, v: exports.append(segment_id) or export(
                            scene, s, segment_id, v))  # fmt: skip
    monkeypatch.setattr(runner.TrainingRun, "start", lambda self, resume=False: None)
    panel.startTraining(tmp_path / "run")
    # Before: once to check (checkInputs), once more to write (exportDataset).
    written = (*panel.dataset.labeled, *panel.dataset.validation)  # 1 held out by default
    assert len(exports) == len(panel.labeledExamples) == len(written)
    assert len(panel.dataset.validation) == 1
    assert all(case.label.is_file() for case in written)


def test_a_second_start_is_refused_while_the_first_prepares_or_runs(
    panel: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    panel.takeUnusedVolumes()
    with panel.starting():  # installing packages: Qt processes a second click meanwhile
        assert not panel.buttonStates()["startButton"]
        with pytest.raises(logic.InputError, match="already starting"), panel.starting():
            pass
    assert panel.buttonStates()["startButton"] and not panel.isStarting
    monkeypatch.setattr(runner.TrainingRun, "start", lambda self, resume=False: None)
    run = panel.startTraining(tmp_path / "run")
    run.state = JobState.RUNNING
    with pytest.raises(logic.InputError, match="in progress"):
        panel.startTraining(tmp_path / "again")
    with pytest.raises(logic.InputError, match="already starting or running"), panel.starting():
        pass
    assert panel.run is run and not (tmp_path / "again").exists()


def test_run_folders_are_deleted_off_the_calling_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    deleters: list[Any] = []
    rmtree = runfolders.shutil.rmtree
    monkeypatch.setattr(runfolders.shutil, "rmtree", lambda path, **kw: (
        deleters.append(threading.current_thread()), rmtree(path, **kw)))  # fmt: skip
    root = tmp_path / "runs"
    run = runfolders.newRunFolder(root, "model")
    (run / "dataset").mkdir()
    (run / "dataset" / "case.nrrd").write_bytes(b"voxels")
    thread = runfolders.discardRunFolder(run, root)
    assert not run.exists()  # gone from its place at once (renamed)...
    assert thread is not None
    thread.join(10)  # ...and deleted in the background
    assert list(root.iterdir()) == [] and deleters and threading.main_thread() not in deleters
    # What an exit cut short is removed by the next prune, however new.
    (root / f"{runfolders.TRASH_PREFIX}old").mkdir()
    for thread in runfolders.pruneRunFolders(root):
        thread.join(10)
    assert list(root.iterdir()) == []


def test_the_log_view_gets_only_the_new_lines(tmp_path: Path) -> None:
    follower = runner.LogFollower()
    assert follower.update(None) == (False, [])
    job = runner.TrainingRun(tmp_path / "run", [])
    lines = [f"iteration {i}" for i in range(6000)]  # past the view's 5000 blocks
    job._earlier_log = lines[:5500]
    assert follower.update(job) == (True, lines[:5500])
    assert follower.update(job) == (False, [])  # nothing new: nothing rewritten
    job._earlier_log = lines  # (a resumed run: earlier starts' lines come first)
    assert follower.update(job) == (False, lines[5500:])
    other = runner.TrainingRun(tmp_path / "other", [])
    other._earlier_log = ["new run"]
    assert follower.update(other) == (True, ["new run"])


def test_start_from_is_an_enum_with_labels_that_reads_old_scenes() -> None:
    choices = list(settings.StartChoice)  # what the combo box lists (aliases are not)
    assert [c.value for c in choices] == ["default", "file", "scratch"]
    assert all(c.label() != c.value for c in choices)
    # The parameter node stores the name; scenes from the text choice stored the value.
    assert settings.StartChoice["scratch"] is settings.StartChoice.SCRATCH
    assert settings.StartChoice.parse("file") is settings.StartChoice.FILE
    with pytest.raises(logic.InputError, match="one of default, file, scratch, not 'gpu'"):
        settings.StartChoice.parse("gpu")


def test_removing_selected_rows_removes_each_once(panel: Any) -> None:
    examples = list(panel.labeledExamples)
    assert len(examples) >= 2
    # selectedRows() lists rows in selection order; a row may come once per selected cell.
    panel.removeLabeledExamples([0, len(examples) - 1, 0])
    assert panel.labeledExamples == examples[1:-1]


def test_the_parameter_node_is_copied_into_the_settings() -> None:
    node = types.SimpleNamespace(
        startFrom=settings.StartChoice.SCRATCH, initModelPath=Path("."), iterations=7,
        device=environment.DeviceChoice.CPU, patchSizeX=64, patchSizeY=48, patchSizeZ=32,
        batchSize=4, labeledBatchSize=2, learningRate=0.05, validationCases=1,
        validateEvery=3, modelName="Mine", settingsChoice=settings.SettingsChoice.CUSTOM,
        useTimeBudget=False, trainMinutes=2.5,
    )  # fmt: skip
    copied = settings.TrainingSettings()
    settings.applyParameters(copied, node)
    assert (copied.startFrom, copied.initModelPath, copied.device) == (
        settings.StartChoice.SCRATCH, "", "cpu")  # fmt: skip
    assert copied.patchSize == (64, 48, 32) and copied.checkpointEvery == copied.validateEvery == 3
    assert (copied.modelName, copied.modelsFolder, copied.iterations) == ("Mine", "", 7)
    assert (copied.settingsChoice, copied.useTimeBudget, copied.trainMinutes) == (
        settings.SettingsChoice.CUSTOM, False, 2.5)  # fmt: skip
