"""Exporting the training job for a bigger machine, and importing the model it made."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import training_support as support
from ddp_worker import run_job
from FBANetTrainingLib import jobexport
from training_support import ROOT, WORKER_ENV, dataset, selftest

from fbanet.data.manifest import read_manifest


def _panel(tmp_path: Path, **changes: Any) -> Any:
    logic, _ = selftest.tinyLogic(support.newScene(), tmp_path / "models", modelName="FromGPU")
    # A batch of 2 + 2 patches: 1 + 1 for each of 2 processes.
    settings = {"iterations": 2, "validationCases": 0, "batchSize": 4, "labeledBatchSize": 2}
    for name, value in {**settings, **changes}.items():
        setattr(logic.settings, name, value)
    return logic


def test_the_exported_job_trains_under_torchrun_and_its_model_imports(tmp_path: Path) -> None:
    from FBANetSegmentationLib.models import listTrainedModels

    logic = _panel(tmp_path)
    job = jobexport.exportTrainingJob(logic, tmp_path / "job", gpus=2)
    folder = tmp_path / "job"
    spec = read_manifest(folder / "dataset" / "manifest.json")
    assert (len(spec.labeled), len(spec.unlabeled)) == (2, 2)
    config = json.loads((folder / "config.json").read_text())
    assert config["model"] == {"patch_size": [16, 16, 16]}
    assert config["train"]["iterations"] == 2 and config["train"]["labeled_batch_size"] == 2
    document = json.loads((folder / "job.json").read_text())
    assert document["train"] == list(job.trainCommand)
    assert document["torchrun"][:3] == ["torchrun", "--nproc-per-node", "2"]
    assert document["torchrun"][-len(job.trainCommand) + 2 :] == list(job.trainCommand[2:])
    script = (folder / "run.sh").read_text()
    assert "torchrun --nproc-per-node 2 -m fbanet train --config config.json" in script

    # Run the exact torchrun command from the job folder (2 CPU processes here).
    command = list(job.torchrunCommand)
    # --standalone: torchrun's agent binds a free port itself (a port chosen here first
    # could be taken before the agent binds it).
    command[:1] = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    env = {**os.environ, **WORKER_ENV, "PYTHONPATH": str(ROOT / "src")}
    code, _, stderr = run_job(command, cwd=folder, env=env)
    assert code == 0, stderr[-3000:]
    assert (folder / job.modelFile).is_file()

    target, header = jobexport.importTrainedModel(logic, folder)  # the job folder will do
    assert target == tmp_path / "models" / "FromGPU.safetensors"
    assert header.iterations == 2 and header.model.patch_size == (16, 16, 16)
    assert [m.path for m in listTrainedModels(tmp_path / "models")] == [target]
    assert logic.registeredModelPath == target
    with pytest.raises(dataset.InputError, match="already exists"):
        jobexport.importTrainedModel(logic, folder / job.modelFile)
    logic.settings.replaceExisting = True
    assert jobexport.importTrainedModel(logic, folder / job.modelFile)[0] == target


def test_a_job_that_does_not_split_or_a_used_folder_is_refused(tmp_path: Path) -> None:
    logic = _panel(tmp_path)
    with pytest.raises(dataset.InputError, match="does not split over 3 GPUs"):
        jobexport.exportTrainingJob(logic, tmp_path / "job", gpus=3)
    assert not (tmp_path / "job").exists()  # nothing written
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(dataset.InputError, match="not empty"):
        jobexport.exportTrainingJob(logic, tmp_path / "used")


def test_a_fine_tuning_job_carries_its_start_model(tmp_path: Path) -> None:
    from fbanet.model.bundled import default_model_path

    logic = _panel(tmp_path, startFrom="default", patchSize=(64, 64, 48))
    job = jobexport.exportTrainingJob(logic, tmp_path / "job", gpus=1, nodes=2)
    assert (
        tmp_path / "job" / jobexport.INIT_MODEL
    ).read_bytes() == default_model_path().read_bytes()
    text = " ".join(job.trainCommand)
    assert f"--init-model {jobexport.INIT_MODEL}" in text and "--spacing 1.25 1.25 1.25" in text
    assert "--nnodes 2 --rdzv-backend c10d" in " ".join(job.torchrunCommand)


def test_importing_what_is_not_a_model_is_refused(tmp_path: Path) -> None:
    logic = _panel(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(dataset.InputError, match="not an fbanet model file"):
        jobexport.importTrainedModel(logic, tmp_path / "junk.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(dataset.InputError, match="holds no trained model"):
        jobexport.importTrainedModel(logic, tmp_path / "empty")
    with pytest.raises(dataset.InputError, match="does not exist"):
        jobexport.importTrainedModel(logic, tmp_path / "nowhere.safetensors")
    assert not (tmp_path / "models").exists()


def test_the_panel_shows_the_command_to_run_and_what_an_import_brought(tmp_path: Path) -> None:
    from fbanet.config import ModelConfig
    from fbanet.model.header import ModelMetadata
    from fbanet.protocol import JobState

    logic = _panel(tmp_path)
    with pytest.raises(dataset.InputError, match="Choose a job folder"):
        jobexport.exportTrainingJob(logic, "  ")
    assert logic.exportedJob is None and not logic.buttonStates()["copyCommandButton"]
    single = jobexport.exportTrainingJob(logic, tmp_path / "one")
    assert logic.exportedJob is single and logic.buttonStates()["copyCommandButton"]
    assert jobexport.commandText(single).startswith("fbanet train --config config.json")
    assert jobexport.commandText(single) in (tmp_path / "one" / "run.sh").read_text()
    spread = jobexport.exportTrainingJob(logic, tmp_path / "two", gpus=1, nodes=2)
    assert spread.processes == 2 and jobexport.commandText(spread).startswith(
        "torchrun --nproc-per-node 1 --nnodes 2"
    )
    note = jobexport.exportNote(spread)
    assert str(tmp_path / "two") in note and "bash run.sh" in note and "run/model" in note
    logic.run = support.runner.TrainingRun(tmp_path / "run", [])
    logic.run.state = JobState.RUNNING
    states = logic.buttonStates()
    assert not states["exportJobButton"] and not states["importModelButton"]
    target = tmp_path / "models" / "FromGPU.safetensors"
    measured = ModelMetadata(ModelConfig(), iterations=300, validation_dice=0.91234)
    assert jobexport.importSummary(target, measured).splitlines() == [
        f"Model: {target}",
        "Iterations: 300",
        "Validation Dice: 0.912",
    ]
    unmeasured = jobexport.importSummary(target, ModelMetadata(ModelConfig(), iterations=5))
    assert unmeasured.splitlines()[-1] == "Validation Dice: not measured"


def test_export_accepts_a_model_name_that_exists_locally_and_import_checks_it(
    tmp_path: Path, threshold_model: Path
) -> None:
    """Export writes no model, so a local model of the name is no reason to refuse it."""
    logic = _panel(tmp_path)
    existing = logic.modelPath()
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"a model trained earlier")
    job = jobexport.exportTrainingJob(logic, tmp_path / "job")
    assert (job.folder / "job.json").is_file()
    assert existing.read_bytes() == b"a model trained earlier"
    assert any("already exists" in p for p in logic.checkInputs())  # training writes it: refused
    with pytest.raises(dataset.InputError, match="already exists"):
        jobexport.importTrainedModel(logic, threshold_model)  # import writes it: refused too
    logic.settings.modelName = "-bad"
    with pytest.raises(dataset.InputError, match="Model name"):
        jobexport.exportTrainingJob(logic, tmp_path / "other")  # a bad name still is


def test_the_exported_job_leaves_the_time_budget_out(tmp_path: Path) -> None:
    """`fbanet train` refuses --time-budget under torchrun: the job trains its iterations."""
    logic = _panel(tmp_path, useTimeBudget=True, trainMinutes=10)
    assert "--time-budget" in logic.trainingArguments("m.json")  # (in Slicer it is used)
    job = jobexport.exportTrainingJob(logic, tmp_path / "job", gpus=2)
    flags = [
        "--config", "config.json", "--manifest", "dataset/manifest.json", "--base-filters", "4",
        "--fp32", "--log-every", "1", "--seed", "3", "-o", "run",
    ]  # fmt: skip
    assert list(job.trainCommand) == ["fbanet", "train", *flags]
    assert list(job.torchrunCommand) == ["torchrun", "--nproc-per-node", "2", "-m", "fbanet",
                                         "train", *flags]  # fmt: skip
    assert "--time-budget" not in (tmp_path / "job" / "run.sh").read_text()
    config = json.loads((tmp_path / "job" / "config.json").read_text())
    assert config["train"]["iterations"] == 2 and job.budgetLeftOut
    assert "no time budget" in jobexport.exportNote(job)
    logic.settings.useTimeBudget = False
    unbudgeted = jobexport.exportTrainingJob(logic, tmp_path / "other")
    assert not unbudgeted.budgetLeftOut and "time budget" not in jobexport.exportNote(unbudgeted)


def test_a_fine_tune_job_runs_the_preset_on_its_start_model(tmp_path: Path) -> None:
    from FBANetTrainingLib.settings import SettingsChoice

    logic = _panel(
        tmp_path, startFrom="default", settingsChoice=SettingsChoice.FINETUNE,
        useTimeBudget=True, batchSize=6, labeledBatchSize=3,  # (the preset's batch: 2 + 2)
    )  # fmt: skip
    job = jobexport.exportTrainingJob(logic, tmp_path / "job", gpus=2)
    assert list(job.trainCommand) == [
        "fbanet", "train", "--config", "config.json", "--manifest", "dataset/manifest.json",
        "--preset", "finetune", "--init-model", jobexport.INIT_MODEL,
        "--fp32", "--log-every", "1", "--seed", "3", "-o", "run",
    ]  # fmt: skip
    config = json.loads((tmp_path / "job" / "config.json").read_text())
    assert config == {"train": {"device": "cpu"}}
    assert (tmp_path / "job" / jobexport.INIT_MODEL).is_file()
