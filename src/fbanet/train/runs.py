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
    parse_enum,
)
from fbanet.data.cases import Case, load_cases
from fbanet.data.manifest import CaseRef, DatasetSpec
from fbanet.data.preprocess import resample
from fbanet.io.volumes import Geometry, Volume
from fbanet.train.trainer import TrainingData

logger = logging.getLogger(__name__)

AUTO = "auto"


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
