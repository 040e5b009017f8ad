"""The cases of a training run, and the checks they must pass before it starts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from fbanet.config import PATCH_MULTIPLE, IntensityNormalization, TrainConfig
from fbanet.data.cases import Case
from fbanet.data.intensity import RegionNormalization
from fbanet.data.sampling import PatchBatcher


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The cases of a run.

    Attributes:
        labeled: Cases with labels, drawn for the Dice loss.
        unlabeled: Cases used without labels.
        validation: Held-out labeled cases, scored every ``validate_every`` iterations.
        spacing: Voxel spacing (mm) of the training volumes, recorded in the model file.
        normalization: How the images were normalized, recorded in the model file.
        source: Where the cases came from (the command's data flags), recorded in
            config.json so that ``--resume`` needs no data flags.
    """

    labeled: Sequence[Case]
    unlabeled: Sequence[Case] = ()
    validation: Sequence[Case] = ()
    spacing: tuple[float, float, float] | None = None
    normalization: IntensityNormalization = IntensityNormalization.ZSCORE
    source: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """Counts and names, for config.json."""
        return {
            "labeled": [c.name for c in self.labeled],
            "unlabeled": [c.name for c in self.unlabeled],
            "validation": [c.name for c in self.validation],
            "spacing": list(self.spacing) if self.spacing else None,
            "normalization": self.normalization.value,
            **({"source": self.source} if self.source is not None else {}),
        }


def check_training_data(data: TrainingData, train: TrainConfig) -> None:
    """Refuse data that cannot train this configuration, with advice."""
    if not data.labeled:
        raise ValueError("no labeled case: FBA-Net needs at least one labeled volume")
    for case in (*data.labeled, *data.validation):
        if case.label is None:
            raise ValueError(f"case {case.name!r} is used as labeled but has no label")
    if train.unlabeled_batch_size > 0 and not data.unlabeled:
        raise ValueError(
            f"no unlabeled case, but the batch reserves {train.unlabeled_batch_size} places for "
            f"unlabeled patches: add unlabeled volumes or set labeled_batch_size = batch_size "
            f"({train.batch_size}) for supervised training"
        )
    if train.batch_size < 2:
        raise ValueError("batch_size must be >= 2: the contrastive loss compares patches")
    for case in (*data.labeled, *data.unlabeled, *data.validation):
        if case.image.ndim != 3:
            raise ValueError(f"case {case.name!r}: image must be 3-D, got {case.image.shape}")


def patch_batcher(
    data: TrainingData,
    patch_size: tuple[int, int, int],
    config: TrainConfig,
    per_batch: tuple[int, int],
    seed: int | Sequence[int],
) -> PatchBatcher:
    """The batches of a run: ``per_batch`` (labeled, unlabeled) patches each.

    Z-scored data gets patches normalized over random regions around the label and placed
    at every alignment with the network's grid (a user's region and scan may be any); data
    used as stored (the LA HDF5 layout, for the paper) keeps its intensities and the
    authors' crop.
    """
    intensity, positions = None, 1
    if data.normalization is IntensityNormalization.ZSCORE:
        spacing = data.spacing or data.labeled[0].spacing
        intensity = RegionNormalization.from_mm(
            config.region_margin_mm, spacing, config.intensity_scale, config.intensity_shift,
            config.region_crop_probability,
        )  # fmt: skip
        positions = PATCH_MULTIPLE
    return PatchBatcher(
        data.labeled, data.unlabeled, patch_size, per_batch[0], per_batch[1], seed=seed,
        intensity=intensity, window_positions=positions,
    )  # fmt: skip
