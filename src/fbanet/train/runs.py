"""Assembling a training run from files: data sets, configuration files, presets."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from fbanet.config import (
    IntensityNormalization,
    ModelConfig,
    TrainConfig,
    TrainingMode,
    from_dict,
    parse_enum,
    to_dict,
)
from fbanet.data.cases import Case, load_cases
from fbanet.data.manifest import CaseRef, DatasetSpec
from fbanet.data.preprocess import resample
from fbanet.io.volumes import Geometry, Volume
from fbanet.model.header import ModelMetadata
from fbanet.train.trainer import TrainingData

logger = logging.getLogger(__name__)

AUTO = "auto"

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
            "iterations": 1000, "learning_rate": 0.003, "lr_schedule": "constant",
            "rampup_interval": 2, "validate_every": 50, "checkpoint_every": 25, "log_every": 5,
        },
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


def _load(refs: Sequence[CaseRef], normalization: str, labeled: bool, **options: Any) -> list[Case]:
    return load_cases(
        refs, normalization=normalization, require_label=labeled, read_label=labeled, **options
    )


def resample_case(case: Case, spacing: Sequence[float]) -> Case:
    """``case`` resampled to ``spacing`` (image linear, label nearest), same extent."""
    geometry = Geometry((float(case.spacing[0]), float(case.spacing[1]), float(case.spacing[2])))
    image = resample(Volume(case.image, geometry), spacing)
    label = None
    if case.label is not None:
        label = resample(Volume(case.label, geometry), spacing, sitk.sitkNearestNeighbor).array
        if not label.any():
            raise ValueError(
                f"case {case.name!r}: the label vanishes when resampled to {tuple(spacing)} mm; "
                f"use a finer spacing"
            )
    return Case(case.name, image.array.astype(np.float32), label, image.geometry.spacing)


def load_training_data(
    spec: DatasetSpec,
    *,
    normalization: str = AUTO,
    num_classes: int = 2,
    h5_spacing: Sequence[float] | None = None,
    spacing: Sequence[float] | None = None,
    allow_partial_labels: bool = False,
) -> TrainingData:
    """Read every case of ``spec`` into memory, validated and normalized.

    Args:
        spec: Labeled, unlabeled and validation cases.
        normalization: 'zscore' (every format, HDF5 included, z-scored over the whole file;
            patches are then re-normalized over random regions, see
            :mod:`fbanet.data.intensity`), 'as-stored' (the LA HDF5 layout as stored, for
            reproducing the paper) or 'auto' (the same as 'zscore', kept for old commands).
        num_classes: Label values must lie in 0..num_classes-1.
        h5_spacing: Voxel spacing (mm) of HDF5 files without a ``spacing`` attribute
            (required for those).
        spacing: Resample every case to this spacing (mm); the model file records it and
            inference resamples scans to it. None keeps the data's own spacing.
        allow_partial_labels: Accept labels (on another grid) that cover only part of their
            image, the rest taken as background; refused by default.

    Returns:
        The data, with its normalization recorded (for the model file).
    """
    mode = (
        IntensityNormalization.ZSCORE
        if normalization == AUTO
        else parse_enum(IntensityNormalization, normalization)
    )
    normalization = mode.value
    options = {
        "num_classes": num_classes,
        "h5_spacing": None if h5_spacing is None else tuple(h5_spacing),
        "allow_partial_label": allow_partial_labels,
    }
    labeled = _load(spec.labeled, normalization, True, **options)
    unlabeled = _load(spec.unlabeled, normalization, False, **options)
    validation = _load(spec.validation, normalization, True, **options)
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive numbers (mm), got {spacing!r}")
        labeled, unlabeled, validation = (
            [resample_case(c, spacing) for c in group] for group in (labeled, unlabeled, validation)
        )
    spacings = {tuple(round(s, 4) for s in c.spacing) for c in (*labeled, *unlabeled)}
    if len(spacings) > 1:
        logger.warning(
            "training volumes have %d different spacings %s; the network sees voxels, so "
            "resample them to one spacing for best results",
            len(spacings), sorted(spacings)[:4],
        )  # fmt: skip
    spacing = labeled[0].spacing if len(spacings) == 1 else None
    logger.info(
        "data: %d labeled, %d unlabeled, %d validation cases",
        len(labeled), len(unlabeled), len(validation),
    )  # fmt: skip
    return TrainingData(labeled, unlabeled, validation, spacing, mode)


def read_config_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read ``{"model": {...}, "train": {...}}`` (either part optional) from a JSON file.

    A run folder's ``config.json`` is accepted as is (its other keys are ignored).
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"config file {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(document, Mapping) or not set(document) & {"model", "train"}:
        raise ValueError(
            f"config file {str(path)!r} must hold an object with 'model' and/or 'train' settings"
        )
    return dict(document.get("model", {})), dict(document.get("train", {}))


def _supervised_batch(train_settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings where a supervised run's batch is all labeled unless its share was set.

    Supervised training uses no unlabeled patch, so it needs no unlabeled scan.
    """
    settings = dict(train_settings)
    mode = settings.get("mode", TrainConfig.mode)
    supervised = str(getattr(mode, "value", mode)).strip().lower() == TrainingMode.SUPERVISED.value
    if supervised and "labeled_batch_size" not in settings:
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
