"""The training panel's user flows on real MRML nodes: a scene close, a review that cannot start."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import training_support as support
from training_support import WORKER_ENV, dataset, logic, review, runner, synthetic, writer

from fbanet.protocol import JobState


@pytest.fixture
def panel(tmp_path: Path) -> Any:
    scene = support.newScene()
    built = synthetic.buildSyntheticScene(scene)
    trainingLogic = logic.FBANetTrainingLogic(
        scene, workerEnvironment=WORKER_ENV, runsFolder=tmp_path / "runs"
    )
    for volume, segmentation, segmentId in built.labeled:
        trainingLogic.addLabeledExample(volume, segmentation, segmentId)
    trainingLogic.unlabeledVolumeIds = [v.GetID() for v in built.unlabeled]
    trainingLogic.built = built
    # What a run leaves for review: its dataset (node IDs of the cases) and a model.
    trainingLogic.dataset = writer.exportDataset(
        scene, trainingLogic.labeledExamples, trainingLogic.unlabeledVolumeIds,
        tmp_path / "dataset",
    )  # fmt: skip
    trainingLogic.run = runner.TrainingRun(tmp_path / "run", [])
    trainingLogic.run.state = JobState.SUCCEEDED
    return trainingLogic


def test_after_a_scene_close_review_and_ranking_forget_the_old_node_ids(panel: Any) -> None:
    old = panel.built.unlabeled[0]
    oldId = old.GetID()
    panel.ranking = [review.RankedVolume(oldId, old.GetName(), 0.5, False)]
    version = panel.rankingVersion
    panel.observeScene()
    try:
        panel.scene.Clear(0)
        # vtkMRMLScene::Clear resets its ID counters: another patient gets the old ID.
        others = synthetic.buildSyntheticScene(panel.scene)  # the next patients' scene
        assert others.unlabeled[0].GetID() == oldId
        assert panel.dataset is None and panel.ranking == []
        assert panel.rankingVersion > version  # the panel redraws its list (now empty)
        panel.registeredModelPath = Path(__file__)  # any file: review would start
        with pytest.raises(dataset.InputError, match="no unlabeled volumes of this run"):
            panel.segmentUnlabeled()  # not the other patient's volume
        with pytest.raises(dataset.InputError, match="no unlabeled volumes of this run"):
            panel.rankUnlabeled()
        assert panel.segmentJob is None and panel.rankJob is None
    finally:
        panel.stopObservingScene()


def test_a_review_that_cannot_start_fails_with_its_message_and_frees_the_panel(
    panel: Any, tmp_path: Path
) -> None:
    panel.registeredModelPath = tmp_path / "models" / "Renamed.safetensors"  # gone since
    job = panel.segmentUnlabeled()  # through the FBANet Segmentation module's job
    assert isinstance(job, review.ModuleSegmentQueue)
    assert job.state is JobState.FAILED and "does not exist" in job.error_message
    assert not panel.busy() and panel.buttonStates()["startButton"]
    assert panel.buttonStates()["exportJobButton"] and panel.buttonStates()["importModelButton"]
    [message] = panel.newReviewFailures()
    assert message.startswith("Segmentation failed:") and "Renamed.safetensors" in message


def test_a_later_volume_that_cannot_start_ends_the_queue_failed(
    panel: Any, threshold_model: Path
) -> None:
    panel.registeredModelPath = threshold_model
    panel.settings.device = "cpu"
    panel.built.unlabeled[1].SetAndObserveImageData(None)  # emptied after the export
    job = panel.segmentUnlabeled()
    assert job.state is JobState.RUNNING  # the first volume segments
    deadline = time.monotonic() + 300
    while panel.busy() and time.monotonic() < deadline:
        panel.poll()  # before: the second start raised out of poll, the job stayed RUNNING
        time.sleep(0.2)
    assert job.state is JobState.FAILED and "no voxels" in job.error_message
    assert len(job.nodes) == 1 and not panel.busy()
    assert panel.buttonStates()["startButton"]


def test_fbanets_own_maps_and_hidden_nodes_are_not_offered_as_unlabeled_mri(
    panel: Any, tmp_path: Path
) -> None:
    from FBANetSegmentationLib import logic as segmentationLogic

    scan = panel.built.unlabeled[0]
    mapFile = dataset.writeVolume(scan, tmp_path / "map.nrrd")  # any volume file will do
    maps = [  # what SegmentationJob loads for the probability and uncertainty options
        segmentationLogic.addVolumeNextTo(scan, mapFile, f"{scan.GetName()} FBANet {name}", True)
        for name in ("probability", "uncertainty")
    ]
    hidden = synthetic.addVolume(
        panel.scene, "Helper", synthetic.UNLABELED_GEOMETRIES[0], (0.0, 0.0, 0.0), (5.0, 5.0, 5.0)
    )
    hidden.SetHideFromEditors(1)
    offered = {nodeId for nodeId, _, _ in panel.unlabeledChoices()}
    labeledVolumes = [volume for volume, _, _ in panel.built.labeled]
    assert offered == {v.GetID() for v in (*labeledVolumes, *panel.built.unlabeled)}
    assert not offered & {node.GetID() for node in (*maps, hidden)}
    assert set(panel.takeUnusedVolumes()) == {v.GetID() for v in panel.built.unlabeled}
