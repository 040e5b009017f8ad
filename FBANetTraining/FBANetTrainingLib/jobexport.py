"""Training on a bigger machine: export the panel's job to a folder, import the model it made.

No Qt and no server: the job folder is copied to a GPU machine (or a cluster), trained there
with the ``fbanet train`` or ``torchrun`` command written into it, and the resulting model
file is imported back into the models folder that FBANet Segmentation lists::

    job/
      dataset/manifest.json, labeled/, unlabeled/   the scene's cases (writer.exportDataset)
      config.json          {"model": {...}, "train": {...}}: the panel's settings
      init_model.safetensors  the model training starts from (when not from scratch)
      job.json             the exact commands, as argument lists, and where the model lands
      run.sh               the same commands, ready to run from the job folder
      README.txt           what to do with it

Paths inside the folder are relative: it can be moved anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from FBANetTrainingLib import dataset as datasetModule
from FBANetTrainingLib import writer
from FBANetTrainingLib.dataset import InputError
from FBANetTrainingLib.modelfiles import copyModelFile
from FBANetTrainingLib.settings import (
    FINETUNE_PRESET,
    TrainingSettings,
    pathText,
    runBatch,
    usesFinetunePreset,
)

if TYPE_CHECKING:  # (the logic does not import this module: no cycle)
    from fbanet.model.header import ModelMetadata
    from FBANetTrainingLib.logic import FBANetTrainingLogic

JOB_FORMAT = "fbanet-training-job"
RUN_FOLDER = "run"
INIT_MODEL = "init_model.safetensors"
MODEL_FILE_FILTER = "fbanet models (*.safetensors)"  # the import dialog's file filter


@dataclasses.dataclass(frozen=True)
class ExportedJob:
    """What :func:`exportTrainingJob` wrote.

    Attributes:
        folder: The job folder.
        dataset: The exported cases.
        config: ``config.json``.
        trainCommand: ``fbanet train ...`` for one process (one GPU or a CPU), run from
            ``folder``.
        torchrunCommand: The same training over ``gpus`` GPUs on each of ``nodes`` nodes.
        modelFile: Where the trained model lands, relative to ``folder``.
        processes: GPU processes in all (GPUs per node x nodes): more than one runs
            ``torchrunCommand``, one runs ``trainCommand``.
        budgetLeftOut: The panel's "Train for N minutes" was on: the job has no time budget
            (``fbanet train`` refuses one under torchrun); it trains for its iterations.
    """

    folder: Path
    dataset: datasetModule.Dataset
    config: Path
    trainCommand: tuple[str, ...]
    torchrunCommand: tuple[str, ...]
    modelFile: str
    processes: int = 1
    budgetLeftOut: bool = False


def jobSettings(settings: TrainingSettings) -> dict[str, dict[str, Any]]:
    """The panel's training settings as an fbanet configuration document (with the fine-tune
    preset only the device: the preset and the starting model set the rest)."""
    if usesFinetunePreset(settings):
        return {"train": {"device": settings.device}}
    return {
        "model": {"patch_size": list(settings.patchSize)},
        "train": {
            "iterations": int(settings.iterations),
            "batch_size": int(settings.batchSize),
            "labeled_batch_size": int(settings.labeledBatchSize),
            "learning_rate": float(settings.learningRate),
            "device": settings.device,
            "validate_every": int(settings.validateEvery),
            "checkpoint_every": int(settings.checkpointEvery),
        },
    }


def _checkSplit(settings: TrainingSettings, gpus: int, nodes: int) -> None:
    processes = gpus * nodes
    batchSize, labeled = runBatch(settings)
    unlabeled = batchSize - labeled
    if processes < 1:
        raise InputError("GPUs per node and nodes must be at least 1")
    if labeled % processes or unlabeled % processes:
        raise InputError(
            f"The batch ({labeled} labeled + {unlabeled} unlabeled patches) "
            f"does not split over {processes} GPUs: make both parts multiples of {processes}"
        )


def _dataArguments(logic: FBANetTrainingLogic, folder: Path) -> list[str]:
    """--manifest, --init-model (copied into the job), --base-filters, --spacing; with the
    fine-tune preset --preset instead of the last two (fbanet takes them from the model)."""
    arguments = ["--manifest", "dataset/manifest.json"]
    initModel = logic.initModelFile()
    if initModel is None:
        return [*arguments, "--base-filters", str(logic.settings.baseFilters)]
    shutil.copyfile(initModel, folder / INIT_MODEL)
    if usesFinetunePreset(logic.settings):
        return [*arguments, "--preset", FINETUNE_PRESET, "--init-model", INIT_MODEL]
    from fbanet.model.header import read_model_header  # torch-free

    header = read_model_header(initModel)
    arguments += ["--init-model", INIT_MODEL, "--base-filters", str(header.model.base_filters)]
    if header.spacing is not None:  # train at the spacing the model knows
        arguments += ["--spacing", *(str(s) for s in header.spacing)]
    return arguments


def _torchrun(gpus: int, nodes: int) -> list[str]:
    command = ["torchrun", "--nproc-per-node", str(gpus)]
    if nodes > 1:
        command += ["--nnodes", str(nodes), "--rdzv-backend", "c10d",
                    "--rdzv-endpoint", "HOST:29500", "--rdzv-id", "fbanet"]  # fmt: skip
    return [*command, "-m", "fbanet", "train"]


def exportTrainingJob(
    logic: FBANetTrainingLogic, folder: str | Path, gpus: int = 1, nodes: int = 1
) -> ExportedJob:
    """Write the panel's training job (cases, settings, commands) into ``folder``.

    The job has no ``--time-budget``, which ``fbanet train`` refuses under torchrun: it
    trains for its iterations (the fine-tune preset's or the panel's).

    Args:
        logic: The panel's :class:`~FBANetTrainingLib.logic.FBANetTrainingLogic`.
        folder: The job folder (created; must be empty if it exists); '' or '.' (the
            panel's unset path) is no folder.
        gpus: GPUs per node for the ``torchrun`` command.
        nodes: Nodes for the ``torchrun`` command.

    Raises:
        InputError: What to fix (one problem per line); nothing is written then.
    """
    problems = logic.checkLabeledExamples() + logic._settingsProblems()
    try:
        logic.initModelFile()
        _checkSplit(logic.settings, int(gpus), int(nodes))
    except InputError as error:
        problems.append(str(error))
    # Path("") would be the current folder (an unset path parameter reads '.': pathText)
    if not pathText(folder).strip():
        raise InputError("Choose a job folder (a new or empty folder) to export to")
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        problems.append(f"The job folder {folder} is not empty: choose a new or empty folder")
    if problems:
        raise InputError("\n".join(problems))
    folder.mkdir(parents=True, exist_ok=True)
    s = logic.settings
    written = writer.exportDataset(
        logic.scene, logic.labeledExamples, logic.unlabeledVolumeIds, folder / "dataset",
        s.validationCases,
    )  # fmt: skip
    config = folder / "config.json"
    config.write_text(json.dumps(jobSettings(s), indent=2), encoding="utf-8")
    flags = ["--config", "config.json", *_dataArguments(logic, folder),
             *(str(a) for a in s.extraArguments), "-o", RUN_FOLDER]  # fmt: skip
    train = ("fbanet", "train", *flags)
    torchrun = (*_torchrun(int(gpus), int(nodes)), *flags)
    modelFile = f"{RUN_FOLDER}/{'best_model' if s.validationCases else 'model'}.safetensors"
    job = ExportedJob(
        folder, written, config, train, torchrun, modelFile, int(gpus) * int(nodes),
        budgetLeftOut=bool(s.useTimeBudget),
    )  # fmt: skip
    _writeInstructions(job, s.modelName)
    logic.exportedJob = job
    return job


def commandText(job: ExportedJob) -> str:
    """The one command to run in the job folder: torchrun for several GPUs, else fbanet."""
    return shlex.join(job.torchrunCommand if job.processes > 1 else job.trainCommand)


def exportNote(job: ExportedJob) -> str:
    """What to do with an exported job, for the panel."""
    return (
        f"Copy the folder {job.folder} to the GPU machine, run 'bash run.sh' in it (it runs "
        f"the command above; fbanet must be installed there), then bring back "
        f"{job.modelFile} and import it with 'Import trained model...'."
    ) + (
        " The job has no time budget ('Train for' applies in Slicer only; torchrun refuses "
        "one): it trains for its iterations."
        if job.budgetLeftOut
        else ""
    )


def importSummary(target: Path, header: ModelMetadata) -> str:
    """What an imported model is, for the panel: where it is, how long it trained, its Dice."""
    dice = header.validation_dice
    return "\n".join([
        f"Model: {target}",
        f"Iterations: {header.iterations}",
        f"Validation Dice: {dice:.3f}" if dice is not None else "Validation Dice: not measured",
    ])  # fmt: skip


def _writeInstructions(job: ExportedJob, modelName: str) -> None:
    document = {
        "format": JOB_FORMAT, "model_name": modelName, "train": list(job.trainCommand),
        "torchrun": list(job.torchrunCommand), "model_file": job.modelFile,
    }  # fmt: skip
    (job.folder / "job.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
    script = "\n".join([
        "#!/usr/bin/env bash",
        "# FBANet training job: run from this folder on the training machine.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f"# one process (one GPU or the CPU):  {shlex.join(job.trainCommand)}",
        f"# {job.processes} GPU process(es) with torchrun:  {shlex.join(job.torchrunCommand)}",
        commandText(job),
        "",
    ])  # fmt: skip
    (job.folder / "run.sh").write_text(script, encoding="utf-8")
    (job.folder / "README.txt").write_text(
        "FBANet training job exported from 3D Slicer (FBANet Training).\n\n"
        "1. Copy this folder to the training machine.\n"
        "2. Install fbanet there (pip install <fbanet>, with the PyTorch build for its GPUs).\n"
        "3. Run: bash run.sh   (or one of the commands in job.json; a stopped run continues\n"
        "   with the same command and --resume).\n"
        f"4. Copy {job.modelFile} back and import it in FBANet Training\n"
        f"   (it becomes the model '{modelName}' that FBANet Segmentation lists).\n",
        encoding="utf-8",
    )


def trainedModelFile(path: str | Path) -> Path:
    """The model file in ``path``: the file itself, or a run or job folder's best model."""
    path = Path(path)
    if path.is_dir():
        for candidate in (
            path / "best_model.safetensors", path / "model.safetensors",
            path / RUN_FOLDER / "best_model.safetensors", path / RUN_FOLDER / "model.safetensors",
        ):  # fmt: skip
            if candidate.is_file():
                return candidate
        raise InputError(
            f"{path} holds no trained model (best_model.safetensors or model.safetensors)"
        )
    if not path.is_file():
        raise InputError(f"The model file {path} does not exist")
    return path


def importTrainedModel(logic: FBANetTrainingLogic, path: str | Path) -> tuple[Path, ModelMetadata]:
    """Copy a model trained elsewhere into the models folder under the panel's model name.

    ``path`` is a model file, or the run (or job) folder that holds it. The copy is
    atomic (a hidden temporary file, then a rename), so a panel listing the folder never
    sees half a model.

    Raises:
        InputError: No such file, not an fbanet model file, or the name is taken (and
            replacing is off).
    """
    source = trainedModelFile(path)
    from fbanet.model.header import read_model_header  # torch-free

    try:
        header = read_model_header(source)
    except (OSError, ValueError) as error:
        raise InputError(f"{source} is not an fbanet model file: {error}") from error
    problems = logic.modelNameProblems()  # the name is checked where a model is written
    if problems:
        raise InputError("\n".join(problems))
    target = logic.modelPath()
    copyModelFile(source, target)
    logic.registeredModelPath = target
    logic.registrationError = ""
    return target, header
