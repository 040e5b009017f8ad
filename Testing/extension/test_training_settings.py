"""The training panel's settings: the fine-tune preset, the time budget, the flags they make."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from training_support import settings

from fbanet.model.bundled import default_model_path

EXTRA = ("--fp32", "--log-every", "1")
CUSTOM_FLAGS = [
    "--iterations", "1000", "--patch-size", "112", "112", "80", "--batch-size", "4",
    "--labeled-batch-size", "2", "--lr", "0.01", "--device", "cpu", "--validate-every", "100",
    "--checkpoint-every", "100",
]  # fmt: skip


@pytest.fixture(scope="module")
def start_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fbanet model file: 8 filters, trained at 1 x 1 x 2 mm."""
    import torch

    from fbanet.config import ModelConfig
    from fbanet.model.files import ModelMetadata, save_model_file
    from fbanet.model.network import FBANet

    torch.manual_seed(0)
    config = ModelConfig(base_filters=8, patch_size=(32, 32, 32), projection_dim=8)
    path = tmp_path_factory.mktemp("start") / "start.safetensors"
    save_model_file(
        path, FBANet(config, with_contrast=False), ModelMetadata(config, (1.0, 1.0, 2.0))
    )
    return path


def _settings(**changes: object) -> settings.TrainingSettings:
    return settings.TrainingSettings(device="cpu", extraArguments=EXTRA, **changes)  # type: ignore[arg-type]


def test_the_defaults_fine_tune_the_bundled_model_for_ten_minutes() -> None:
    bundled = default_model_path()
    assert bundled is not None
    arguments = settings.trainingArguments(_settings(), "m.json")
    assert arguments == [
        "--manifest", "m.json", "--preset", "finetune", "--init-model", str(bundled),
        "--device", "cpu", "--time-budget", "600", *EXTRA,
    ]  # fmt: skip


def test_fine_tuning_a_model_file_leaves_the_rest_to_the_preset_and_the_model(
    start_model: Path,
) -> None:
    chosen = _settings(
        startFrom=settings.START_FILE, initModelPath=str(start_model), trainMinutes=1.5,
        iterations=7, patchSize=(64, 64, 64), learningRate=0.5,  # the preset's, not these
    )  # fmt: skip
    assert settings.trainingArguments(chosen, "m.json") == [
        "--manifest", "m.json", "--preset", "finetune", "--init-model", str(start_model),
        "--device", "cpu", "--time-budget", "90", *EXTRA,
    ]  # fmt: skip
    chosen.useTimeBudget = False
    assert settings.trainingArguments(chosen, "m.json") == [
        "--manifest", "m.json", "--preset", "finetune", "--init-model", str(start_model),
        "--device", "cpu", *EXTRA,
    ]  # fmt: skip


def test_custom_settings_give_the_fields_with_and_without_the_budget(start_model: Path) -> None:
    chosen = _settings(
        startFrom=settings.START_FILE, initModelPath=str(start_model),
        settingsChoice=settings.SettingsChoice.CUSTOM, trainMinutes=2.25,
    )  # fmt: skip
    model = ["--init-model", str(start_model), "--base-filters", "8",
             "--spacing", "1.0", "1.0", "2.0"]  # fmt: skip
    assert settings.trainingArguments(chosen, "m.json") == [
        "--manifest", "m.json", *CUSTOM_FLAGS, *model, "--time-budget", "135", *EXTRA,
    ]  # fmt: skip
    chosen.useTimeBudget = False
    assert settings.trainingArguments(chosen, "m.json") == [
        "--manifest", "m.json", *CUSTOM_FLAGS, *model, *EXTRA,
    ]  # fmt: skip


def test_from_scratch_uses_the_fields_whatever_the_choice() -> None:
    for choice in settings.SettingsChoice:
        chosen = _settings(startFrom=settings.START_SCRATCH, settingsChoice=choice)
        assert not settings.usesFinetunePreset(chosen)
        assert settings.trainingArguments(chosen, "m.json") == [
            "--manifest", "m.json", *CUSTOM_FLAGS, "--base-filters", "16",
            "--time-budget", "600", *EXTRA,
        ]  # fmt: skip
    chosen.trainMinutes = 0.25  # (a script's: the panel's minimum is 1)
    assert settings.timeBudgetArguments(chosen) == ["--time-budget", "15"]
    chosen.trainMinutes = 0.01
    assert settings.timeBudgetArguments(chosen) == ["--time-budget", "0.6"]


def test_a_budget_of_no_minutes_or_an_unknown_choice_is_refused() -> None:
    assert settings.timeBudgetProblems(_settings()) == []
    for minutes in (0, -1, "ten"):
        problems = settings.timeBudgetProblems(_settings(trainMinutes=minutes))
        assert problems == [f"Train for: give a number of minutes above 0, not {minutes!r}"]
    assert settings.timeBudgetProblems(_settings(trainMinutes=0, useTimeBudget=False)) == []
    with pytest.raises(settings.InputError, match="one of finetune, custom, not 'fast'"):
        settings.usesFinetunePreset(_settings(settingsChoice="fast"))
    assert settings.SettingsChoice.parse("custom") is settings.SettingsChoice.CUSTOM


def test_the_settings_choice_is_an_enum_with_labels() -> None:
    choices = list(settings.SettingsChoice)  # what the combo box lists, the default first
    assert choices == [settings.SettingsChoice.FINETUNE, settings.SettingsChoice.CUSTOM]
    assert [c.label() for c in choices] == ["Fine-tune (recommended)", "Custom"]
    assert settings.TrainingSettings().settingsChoice is settings.SettingsChoice.FINETUNE


def test_the_fields_the_preset_sets_are_off_while_it_does() -> None:
    def states(start: settings.StartChoice, choice: settings.SettingsChoice, budget: bool):
        node = types.SimpleNamespace(startFrom=start, settingsChoice=choice, useTimeBudget=budget)
        return settings.panelFieldStates(node)

    fields = set(settings.PRESET_FIELD_WIDGETS)
    assert {"iterationsSpinBox", "learningRateSpinBox", "validateEverySpinBox"} <= fields
    fine = states(settings.START_DEFAULT, settings.SettingsChoice.FINETUNE, True)
    assert fine == {**dict.fromkeys(fields, False), "settingsChoiceComboBox": True,
                    "trainMinutesSpinBox": True}  # fmt: skip
    custom = states(settings.START_FILE, settings.SettingsChoice.CUSTOM, False)
    assert custom == {**dict.fromkeys(fields, True), "settingsChoiceComboBox": True,
                      "trainMinutesSpinBox": False}  # fmt: skip
    scratch = states(settings.START_SCRATCH, settings.SettingsChoice.FINETUNE, True)
    assert scratch == {**dict.fromkeys(fields, True), "settingsChoiceComboBox": False,
                       "trainMinutesSpinBox": True}  # fmt: skip


def test_the_fields_it_turns_off_are_bound_widgets_of_the_panel() -> None:
    import xml.etree.ElementTree as ET

    from training_support import MODULE_DIR

    ui = ET.parse(MODULE_DIR / "Resources" / "UI" / "FBANetTraining.ui").getroot()
    properties = {w.get("name"): {p.get("name"): p.findtext("string") for p in w.iter("property")}
                  for w in ui.iter("widget")}  # fmt: skip
    bound = {name for name, found in properties.items() if "SlicerParameterName" in found}
    node = types.SimpleNamespace(
        startFrom=settings.START_DEFAULT, settingsChoice="finetune", useTimeBudget=True
    )
    assert set(settings.panelFieldStates(node)) <= bound
    for name in settings.PRESET_FIELD_WIDGETS:  # the tooltip says who sets them
        tip = properties[name]["toolTip"] or ""
        assert "the fine-tune preset and the starting model set this" in tip, name
