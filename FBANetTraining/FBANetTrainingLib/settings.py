"""The training panel's settings: what training starts from, and the values it runs with.

Qt-free; the widget copies its parameter node in with :func:`applyParameters`.
"""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any, TypeVar

from fbanet.cli.environment import DeviceChoice, models_folder
from FBANetTrainingLib.dataset import InputError

C = TypeVar("C", bound="_Choice")


class _Choice(enum.Enum):
    """A panel's combo box choice, saved with the scene by value: label() names its item."""

    @classmethod
    def _labels(cls) -> dict[str, str]:  # value -> item text
        raise NotImplementedError

    @classmethod
    def _title(cls) -> str:  # the setting's name, for messages
        raise NotImplementedError

    def label(self) -> str:
        """Text of the combo box item (Slicer's parameter node wrapper calls this)."""
        return self._labels()[self.value]

    @classmethod
    def parse(cls: type[C], value: Any) -> C:
        """The choice for a member or its value; InputError naming the valid values."""
        try:
            return value if isinstance(value, cls) else cls(value)
        except ValueError:
            valid = ", ".join(choice.value for choice in cls)  # (aliases are not listed)
            raise InputError(f"{cls._title()} must be one of {valid}, not {value!r}") from None


class StartChoice(_Choice):
    """What training starts from: the panel's combo box (saved with the scene by name)."""

    DEFAULT = "default"
    FILE = "file"
    SCRATCH = "scratch"
    # Scenes saved while this was a text choice hold the values: aliases, not listed.
    default = "default"
    file = "file"
    scratch = "scratch"

    @classmethod
    def _labels(cls) -> dict[str, str]:
        return {"default": "Bundled model (fine-tune)", "file": "Model file (fine-tune)",
                "scratch": "Scratch (random weights)"}  # fmt: skip

    @classmethod
    def _title(cls) -> str:
        return "Start from"


START_DEFAULT, START_FILE, START_SCRATCH = (
    StartChoice.DEFAULT,
    StartChoice.FILE,
    StartChoice.SCRATCH,
)


class SettingsChoice(_Choice):
    """Which settings a run that starts from a model uses: the panel's combo box.

    FINETUNE: ``fbanet train --preset finetune``; the preset sets the learning rate,
    iterations, validation cadence and weight averaging, the starting model its patch, spacing and
    architecture. CUSTOM: the panel's fields. A run from scratch always uses the fields.
    """

    FINETUNE = "finetune"
    CUSTOM = "custom"

    @classmethod
    def _labels(cls) -> dict[str, str]:
        return {"finetune": "Fine-tune (recommended)", "custom": "Custom"}

    @classmethod
    def _title(cls) -> str:
        return "Settings"


FINETUNE_PRESET = "finetune"  # `fbanet train --preset` (fbanet.train.runs.PRESETS)
# The panel's fields whose values the fine-tune preset and the starting model set: off
# while the run uses them (see panelFieldStates).
PRESET_FIELD_WIDGETS = (
    "iterationsSpinBox", "patchSizeXSpinBox", "patchSizeYSpinBox", "patchSizeZSpinBox",
    "batchSizeSpinBox", "labeledBatchSizeSpinBox", "learningRateSpinBox", "validateEverySpinBox",
)  # fmt: skip
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
    """The panel's settings; the defaults are the panel's: fine-tune the bundled model with
    the fine-tune preset for 10 minutes (what suits a CPU; the fields below are the custom
    settings, for a run from scratch or with ``settingsChoice`` CUSTOM)."""

    iterations: int = 1000
    patchSize: tuple[int, int, int] = (112, 112, 80)
    batchSize: int = 4
    labeledBatchSize: int = 2
    learningRate: float = 0.01
    # One held out: a fine-tune keeps its best validated state, which beat the last state
    # by 1.5 points at a simulated site (site_adaptation.py, the ema-val1 arm).
    validationCases: int = 1
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
    settingsChoice: SettingsChoice | str = SettingsChoice.FINETUNE
    useTimeBudget: bool = True  # stop after trainMinutes (`fbanet train --time-budget`)
    trainMinutes: float = 10.0
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
    s.settingsChoice, s.useTimeBudget, s.trainMinutes = (
        p.settingsChoice,
        p.useTimeBudget,
        p.trainMinutes,
    )
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


def usesFinetunePreset(settings: TrainingSettings) -> bool:
    """Whether the run uses ``--preset finetune``: FINETUNE chosen and a model to start from."""
    return _presetApplies(settings.startFrom, settings.settingsChoice)


def _presetApplies(startFrom: StartChoice | str, settingsChoice: SettingsChoice | str) -> bool:
    start, chosen = StartChoice.parse(startFrom), SettingsChoice.parse(settingsChoice)
    return chosen is SettingsChoice.FINETUNE and start is not StartChoice.SCRATCH


def runBatch(settings: TrainingSettings) -> tuple[int, int]:
    """(batch size, labeled patches) the run uses: the fine-tune preset's or the custom
    fields'; InputError for an unknown choice."""
    if usesFinetunePreset(settings):
        from fbanet.train.presets import preset_train_config  # (no torch)

        config = preset_train_config(FINETUNE_PRESET)
        return config.batch_size, config.labeled_batch_size
    return int(settings.batchSize), int(settings.labeledBatchSize)


def timeBudgetArguments(settings: TrainingSettings) -> list[str]:
    """``--time-budget <seconds>`` when "Train for N minutes" is on, else nothing."""
    if not settings.useTimeBudget:
        return []
    seconds = float(settings.trainMinutes) * 60
    return ["--time-budget", str(int(seconds)) if seconds.is_integer() else str(seconds)]


def timeBudgetProblems(settings: TrainingSettings) -> list[str]:
    """What is wrong with the time budget (empty list: fine, or off)."""
    minutes = settings.trainMinutes
    if settings.useTimeBudget and not (isinstance(minutes, int | float) and minutes > 0):
        return [f"Train for: give a number of minutes above 0, not {minutes!r}"]
    return []


def panelFieldStates(parameters: Any) -> dict[str, bool]:
    """Which settings widgets are enabled for the panel's parameter node (name -> enabled).

    The fine-tune preset and the starting model set the custom fields' values; a run from
    scratch uses the fields whatever the choice (the choice is off then).
    """
    preset = _presetApplies(parameters.startFrom, parameters.settingsChoice)
    states = dict.fromkeys(PRESET_FIELD_WIDGETS, not preset)
    states["settingsChoiceComboBox"] = StartChoice.parse(parameters.startFrom) is not START_SCRATCH
    states["trainMinutesSpinBox"] = bool(parameters.useTimeBudget)
    return states


def startModelArguments(settings: TrainingSettings) -> list[Any]:
    """The custom settings' model flags: --init-model with the starting model's
    --base-filters and --spacing, or from scratch the panel's --base-filters."""
    initModel = initModelFile(settings)
    if initModel is None:
        return ["--base-filters", settings.baseFilters]
    from fbanet.model.header import read_model_header

    header = read_model_header(initModel)
    arguments: list[Any] = ["--init-model", initModel, "--base-filters", header.model.base_filters]
    if header.spacing is not None:  # train at the spacing the model knows
        arguments += ["--spacing", *header.spacing]
    return arguments


def trainingArguments(settings: TrainingSettings, manifest: str | Path) -> list[str]:
    """The ``fbanet train`` flags (without -o/--json/--stop-file/--resume).

    With the fine-tune preset (:func:`usesFinetunePreset`) only the manifest, the preset,
    the starting model and the device: the preset and the model set the rest. Otherwise the
    custom fields. Then ``--time-budget`` when on, and ``extraArguments`` last.
    """
    s = settings
    arguments: list[Any]
    if usesFinetunePreset(s):
        initModel = initModelFile(s)
        arguments = ["--manifest", manifest, "--preset", FINETUNE_PRESET,
                     "--init-model", initModel, "--device", s.device]  # fmt: skip
    else:
        arguments = [
            "--manifest", manifest, "--iterations", s.iterations, "--patch-size", *s.patchSize,
            "--batch-size", s.batchSize, "--labeled-batch-size", s.labeledBatchSize,
            "--lr", s.learningRate, "--device", s.device, "--validate-every", s.validateEvery,
            "--checkpoint-every", s.checkpointEvery, *startModelArguments(s),
        ]  # fmt: skip
    arguments += timeBudgetArguments(s)
    return [str(a) for a in (*arguments, *s.extraArguments)]
