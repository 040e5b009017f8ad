"""The training panel's settings: what training starts from, and the values it runs with.

Qt-free; the widget copies its parameter node in with :func:`applyParameters`.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

from fbanet.cli.environment import DeviceChoice, models_folder
from FBANetTrainingLib.dataset import InputError


class StartChoice(enum.Enum):
    """What training starts from: the panel's combo box (saved with the scene by name)."""

    DEFAULT = "default"
    FILE = "file"
    SCRATCH = "scratch"
    # Scenes saved while this was a text choice hold the values: aliases, not listed.
    default = "default"
    file = "file"
    scratch = "scratch"

    def label(self) -> str:
        """Text of the combo box item (Slicer's parameter node wrapper calls this)."""
        return {
            StartChoice.DEFAULT: "Bundled model (fine-tune)",
            StartChoice.FILE: "Model file (fine-tune)",
            StartChoice.SCRATCH: "Scratch (random weights)",
        }[self]

    @classmethod
    def parse(cls, value: StartChoice | str) -> StartChoice:
        """The choice for a member or its value; InputError naming the valid values."""
        try:
            return value if isinstance(value, StartChoice) else StartChoice(value)
        except ValueError:
            valid = ", ".join(choice.value for choice in StartChoice)
            raise InputError(f"Start from must be one of {valid}, not {value!r}") from None


START_DEFAULT, START_FILE, START_SCRATCH = (
    StartChoice.DEFAULT,
    StartChoice.FILE,
    StartChoice.SCRATCH,
)
DEVICE_CHOICES = tuple(choice.value for choice in DeviceChoice)
MODEL_EXTENSION = ".safetensors"


def settingsFile() -> Path:
    """Slicer's user settings file (Slicer.ini; outside Slicer, where it would be)."""
    try:
        import slicer

        return Path(slicer.app.slicerUserSettingsFilePath)
    except (ImportError, AttributeError):
        return Path.home() / ".config" / "slicer.org" / "Slicer.ini"


def pathText(path: object) -> str:
    """A path parameter as text; '' for none (the parameter node gives an unset Path as '.')."""
    text = str(path) if path is not None else ""
    return "" if text in ("", ".") else text


def defaultModelsFolder() -> Path:
    """``<Slicer user settings folder>/FBANet/models``: where the training panel writes its
    models and what the segmentation panel lists (both call ``models_folder`` on Slicer's
    settings file)."""
    return models_folder(settingsFile())


@dataclasses.dataclass
class TrainingSettings:
    """The panel's settings; defaults suit fine-tuning on a GPU (CPU: fewer iterations)."""

    iterations: int = 1000
    patchSize: tuple[int, int, int] = (112, 112, 80)
    batchSize: int = 4
    labeledBatchSize: int = 2
    learningRate: float = 0.01
    validationCases: int = 0
    validateEvery: int = 100
    checkpointEvery: int = 100
    device: str = "auto"
    startFrom: StartChoice | str = StartChoice.DEFAULT
    initModelPath: str = ""
    baseFilters: int = 16  # from scratch only; a model file fixes its own
    modelName: str = "LeftAtriumFineTuned"
    # Empty: defaultModelsFolder(), the one folder both panels use (no panel option, so that
    # FBANet Segmentation lists every model trained); scripts and tests may set another.
    modelsFolder: str = ""
    replaceExisting: bool = False
    extraArguments: tuple[str, ...] = ()  # more `fbanet train` flags (tests: --fp32 --log-every 1)


def applyParameters(settings: TrainingSettings, parameters: Any) -> None:
    """Copy the panel's parameter node (``FBANetTrainingParameterNode``) into ``settings``."""
    s, p = settings, parameters
    s.startFrom, s.initModelPath = p.startFrom, pathText(p.initModelPath)
    s.iterations, s.device = p.iterations, p.device.value
    s.patchSize = (p.patchSizeX, p.patchSizeY, p.patchSizeZ)
    s.batchSize, s.labeledBatchSize = p.batchSize, p.labeledBatchSize
    s.learningRate, s.validationCases = p.learningRate, p.validationCases
    s.validateEvery = s.checkpointEvery = p.validateEvery
    s.modelName = p.modelName  # (the models folder is not a panel setting: defaultModelsFolder)


def initModelFile(settings: TrainingSettings) -> Path | None:
    """The model file training starts from (None: from scratch); InputError if missing."""
    start = StartChoice.parse(settings.startFrom)
    if start is StartChoice.SCRATCH:
        return None
    if start is StartChoice.DEFAULT:
        from fbanet.model.bundled import default_model_path

        path = default_model_path()
        if path is None:
            raise InputError(
                "No default model ships with this version: pick a model file or train from scratch"
            )
        return Path(path)
    path = Path(settings.initModelPath) if settings.initModelPath else None
    if path is None or not path.is_file():
        raise InputError(f"Pick an existing fbanet model file to start from (got '{path or ''}')")
    try:
        from fbanet.model.header import read_model_header
    except ImportError:  # no torch: checkInputs says so
        return path
    try:
        read_model_header(path)
    except (OSError, ValueError) as error:
        raise InputError(f"Cannot start from this model file: {error}") from error
    return path


def trainingArguments(settings: TrainingSettings, manifest: str | Path) -> list[str]:
    """The ``fbanet train`` flags (without -o/--json/--stop-file/--resume)."""
    s = settings
    arguments: list[Any] = [
        "--manifest", manifest, "--iterations", s.iterations, "--patch-size", *s.patchSize,
        "--batch-size", s.batchSize, "--labeled-batch-size", s.labeledBatchSize,
        "--lr", s.learningRate, "--device", s.device, "--validate-every", s.validateEvery,
        "--checkpoint-every", s.checkpointEvery,
    ]  # fmt: skip
    initModel = initModelFile(settings)
    if initModel is None:
        arguments += ["--base-filters", s.baseFilters]
    else:
        from fbanet.model.header import read_model_header

        header = read_model_header(initModel)
        arguments += ["--init-model", initModel, "--base-filters", header.model.base_filters]
        if header.spacing is not None:  # train at the spacing the model knows
            arguments += ["--spacing", *header.spacing]
    return [str(a) for a in (*arguments, *s.extraArguments)]
