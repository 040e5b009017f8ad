"""Presets of ``fbanet train`` and turning settings into configurations (no torch: the
Slicer panels read them)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from fbanet.config import ModelConfig, TrainConfig, TrainingMode, from_dict, parse_enum, to_dict
from fbanet.model.header import ModelMetadata

# Named starting points for `fbanet train --preset`; a config file and flags override them.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's LA configuration, as the authors' code runs it (for a GPU).
    "la-paper": {
        "model": {"patch_size": (112, 112, 80), "base_filters": 16, "projection_dim": 128},
        "train": {
            "iterations": 15000, "batch_size": 4, "labeled_batch_size": 2,
            "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 1e-4,
            "dice_weight": 0.5, "consistency_weight": 1.0, "rampup_length": 40.0,
            "rampup_interval": 150, "temperature": 0.1, "negative_alpha": 2.5,
            "validate_every": 200, "checkpoint_every": 200,
        },
    },
    # What fits a laptop CPU: volumes at 1.25 mm (--spacing), a 64x64x48 patch, the
    # consistency ramp-up scaled to the short run (40 % of it, as in the paper).
    "la-cpu": {
        "model": {"patch_size": (64, 64, 48), "base_filters": 16},
        "train": {
            "iterations": 500, "rampup_interval": 5, "validate_every": 100,
            "checkpoint_every": 100, "log_every": 10,
        },
    },
    # Fine-tuning a model (the bundled one unless --init-model) on a user's scans within a
    # short CPU budget (--time-budget): the patch, width and module come from that model;
    # the rest is what benchmarks/site_adaptation.py found best.
    "finetune": {
        "model": {},
        "train": {
            "iterations": 2000, "learning_rate": 0.003, "lr_schedule": "constant",
            "rampup_interval": 2, "validate_every": 50, "checkpoint_every": 25, "log_every": 5,
            # Supervised: within 10 minutes no semi-supervised arm beat it (site_adaptation.py
            # in benchmarks/README.md), and it needs no unlabeled scans. Batch 2, all
            # labeled: a step 2.2x cheaper than la-cpu's, and the same Dice at equal time.
            "mode": "supervised", "batch_size": 2,
            # Validate and export the weights averaged over about the last 100 steps: batch-2
            # steps (and batch-norm statistics of 2 patches) are noisy, and the average
            # scored higher at site B (site_adaptation.py, the "ema" arm).
            "ema_decay": 0.99,
            # 2,000 iterations: at batch 2 a 10-minute budget, not the cap, ends a run (1,000
            # ended two runs early on a 2-core CPU); the lr is constant, so no schedule moves.
        },
        # What --mode semi-supervised changes unless the batch is set: room for unlabeled
        # patches, 2 labeled + 2 unlabeled.
        "semi-supervised": {"batch_size": 4, "labeled_batch_size": 2},
    },
}  # fmt: skip
# The preset that starts from the bundled model when no --init-model is given.
FINETUNE = "finetune"


def preset_settings(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model and training settings of a preset.

    Raises:
        ValueError: Unknown name; the message lists the presets.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}")
    preset = PRESETS[name]
    return dict(preset["model"]), dict(preset["train"])


def _mode(train_settings: Mapping[str, Any]) -> TrainingMode | None:
    """The settings' training mode, spelled as TrainConfig reads it; None for a value it
    refuses (build_configs then says which values are valid)."""
    try:
        return parse_enum(TrainingMode, train_settings.get("mode", TrainConfig.mode))
    except ValueError:
        return None


def with_mode_settings(
    name: str, train_settings: Mapping[str, Any], given: Collection[str]
) -> dict[str, Any]:
    """``train_settings`` with the preset's settings for the run's mode (``PRESETS[name]
    [mode]``), unless the user set one of them (``given``: the settings from flags or files).

    Raises:
        ValueError: Unknown preset name; the message lists the presets.
    """
    preset_settings(name)  # the name check
    mode = _mode(train_settings)
    extra = PRESETS[name].get(mode.value, {}) if mode is not None else {}
    if not extra or set(given) & set(extra):
        return dict(train_settings)
    return {**train_settings, **extra}


def preset_train_config(name: str) -> TrainConfig:
    """The training configuration a preset resolves to when no flag changes it."""
    return build_configs({}, preset_settings(name)[1])[1]


def _supervised_batch(train_settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings where a supervised run's batch is all labeled unless its share was set.

    Supervised training uses no unlabeled patch, so it needs no unlabeled scan.
    """
    settings = dict(train_settings)
    if _mode(settings) is TrainingMode.SUPERVISED and "labeled_batch_size" not in settings:
        settings["labeled_batch_size"] = settings.get("batch_size", TrainConfig.batch_size)
    return settings


def build_configs(
    model_settings: Mapping[str, Any], train_settings: Mapping[str, Any]
) -> tuple[ModelConfig, TrainConfig]:
    """Configs from settings (flags, presets, config files: user input).

    Raises:
        ValueError: An unknown setting, or a value of the wrong type or range, named.
    """
    train_settings = _supervised_batch(train_settings)
    try:
        return from_dict(ModelConfig, model_settings), from_dict(TrainConfig, train_settings)
    except TypeError as error:  # a value of the wrong type is bad input here, not a bug
        raise ValueError(str(error)) from error


def _same_setting(name: str, given: Any, stored: Any) -> bool:
    """Whether a model setting as given equals its value as a model file stores it."""
    try:
        return bool(to_dict(from_dict(ModelConfig, {name: given}))[name] == stored)
    except (TypeError, ValueError):  # refused with a message when the configs are built
        return False


def inherit_from_model(
    model_settings: Mapping[str, Any],
    spacing: Sequence[float] | None,
    metadata: ModelMetadata,
) -> tuple[dict[str, Any], tuple[float, ...] | None, list[str]]:
    """A fine-tune's settings: what the user left unset comes from the starting model.

    A network trained at one spacing and patch sees other anatomy at another, so the
    starting model's spacing, patch and architecture are kept unless the user sets them.

    Args:
        model_settings: The model settings given (preset, config file, flags).
        spacing: The training spacing given (mm), or None.
        metadata: The starting model's header.

    Returns:
        The model settings, the spacing, and one line per setting given that differs from
        the starting model's (for the log).
    """
    settings = dict(model_settings)
    theirs = to_dict(metadata.model)
    notes = []
    for name, value in theirs.items():
        if name not in settings:
            settings[name] = value
        elif not _same_setting(name, settings[name], value):
            notes.append(f"{name} {settings[name]!r} (the starting model's: {value!r})")
    if spacing is None:
        spacing = metadata.spacing
    elif metadata.spacing is not None and not np.allclose(spacing, metadata.spacing):
        notes.append(f"spacing {list(spacing)} mm (the starting model's: {list(metadata.spacing)})")
    return settings, None if spacing is None else tuple(float(s) for s in spacing), notes
