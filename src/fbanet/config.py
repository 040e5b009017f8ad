"""Typed, frozen configuration objects: one per concern (model, training).

Inference has its own, :class:`fbanet.infer.config.InferenceConfig`.

Each is saved inside every model file and run folder, so a run can be reproduced and a
model file rebuilt without guessing. Options with a fixed set of values are enums, parsed
through :func:`parse_enum`, the one lookup that names the valid values on a bad input.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from enum import Enum
from typing import Any, TypeVar

import numpy as np

E = TypeVar("E", bound=Enum)


class Upsampling(str, Enum):
    """How a decoder doubles the resolution (the only difference between the three)."""

    TRANSPOSED = "transposed"  # 2x2x2 stride-2 transposed convolution (decoder 1)
    TRILINEAR = "trilinear"  # trilinear x2, align_corners=True, then 3x3x3 conv (decoder 2)
    NEAREST = "nearest"  # nearest x2 then 3x3x3 conv (decoder 3)


class ContrastiveKind(str, Enum):
    """Which contrastive loss pulls and pushes the foreground/background vectors."""

    RANKED = "ranked"  # the authors' rank-weighted positive/negative losses (default)
    INFONCE = "infonce"  # InfoNCE, the alternative of the paper's Table 3 ablation


class ContrastModule(str, Enum):
    """Which module turns a decoder's output into foreground/background vectors."""

    # The paper's module on the logits: reproduces the paper and imports its checkpoints,
    # but its heads saturate after the first step (zero gradient to the network).
    AUTHORS = "authors"
    # Masked average pooling of the decoder's last features under its foreground
    # probability, one projection head shared by foreground and background.
    LEARNING = "learning"


class LRSchedule(str, Enum):
    """How the learning rate changes over the run (lr at iteration t of T)."""

    CONSTANT = "constant"  # lr, as in the authors' code
    POLY = "poly"  # lr * (1 - t/T) ** 0.9, as in most LA baselines
    COSINE = "cosine"  # lr * (1 + cos(pi * t/T)) / 2


class TrainingMode(str, Enum):
    """What the loss uses."""

    SEMI_SUPERVISED = "semi-supervised"  # FBA-Net: Dice + consistency + contrastive
    SUPERVISED = "supervised"  # Dice only, labeled patches only (the baseline)


class DeviceKind(str, Enum):
    """Where to compute. AUTO picks CUDA, then MPS, then CPU."""

    AUTO = "auto"
    CUDA = "cuda"
    MPS = "mps"
    CPU = "cpu"


class Precision(str, Enum):
    """Arithmetic precision. AUTO uses bfloat16 autocast where the device supports it."""

    AUTO = "auto"
    BF16 = "bf16"
    FP32 = "fp32"


class SyncBatchNorm(str, Enum):
    """Whether batch norm statistics span the processes of data-parallel training."""

    AUTO = "auto"  # on with several processes whose per-process batch is 4 patches or fewer
    ON = "on"
    OFF = "off"


class IntensityNormalization(str, Enum):
    """How image intensities are normalized before the network sees them."""

    # Z-score over the region the network is given (the file, or its region of interest);
    # training z-scores each patch over random regions around the structure to match.
    ZSCORE = "zscore"
    # The LA HDF5 layout as stored (z-scored over the whole original scan before cropping):
    # only for reproducing the paper and the authors' checkpoints. HDF5 files are used as
    # stored; other files are z-scored over the whole file, before any crop.
    AS_STORED = "as-stored"


def parse_enum(enum_type: type[E], value: Any) -> E:
    """Convert ``value`` to a member of ``enum_type``.

    Args:
        enum_type: The enum class.
        value: A member, or its string value (case-insensitive, '_' and '-' alike).

    Returns:
        The member.

    Raises:
        ValueError: ``value`` is not one of the valid values; the message lists them.
    """
    if isinstance(value, enum_type):
        return value
    if isinstance(value, str):
        wanted = value.strip().lower().replace("_", "-")
        for member in enum_type:
            if str(member.value).lower().replace("_", "-") == wanted:
                return member
    valid = ", ".join(repr(m.value) for m in enum_type)
    raise ValueError(f"{value!r} is not a valid {enum_type.__name__}; valid values: {valid}")


def is_int(value: object) -> bool:
    """An integer (Python or NumPy), and not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int, checked at the boundary (the one validator of counts and sizes).

    Raises:
        TypeError: ``value`` is not an integer (bools and floats included), quoting it.
        ValueError: ``value`` is below ``minimum``, quoting it.
    """
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:  # type: ignore[operator]
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def _check_positive_number(name: str, value: Any, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


# The V-Net halves the resolution four times; patch sides must survive that exactly.
PATCH_MULTIPLE = 16


def level_sizes(patch_size: tuple[int, int, int]) -> tuple[tuple[int, int, int], ...]:
    """The spatial sizes (X, Y, Z) of the feature maps at the five encoder levels.

    >>> level_sizes((32, 32, 16))[-1]
    (2, 2, 1)
    """
    levels = PATCH_MULTIPLE.bit_length()  # 16 -> 5 levels: 1, 1/2, ..., 1/16
    return tuple(
        (patch_size[0] >> k, patch_size[1] >> k, patch_size[2] >> k) for k in range(levels)
    )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of FBA-Net (V-Net encoder, three decoders, contrastive module).

    Attributes:
        in_channels: Image channels C_in of the input (B, C_in, X, Y, Z).
        num_classes: Output classes K of the logits (B, K, X, Y, Z); 2 = background + one
            structure.
        base_filters: Width f of the first encoder stage (16 in the paper).
        patch_size: Training patch (X, Y, Z); each side a multiple of 16. It fixes the size of
            the projection heads' input, :attr:`projection_input`.
        projection_dim: Output size of each projection head (128 in the paper).
        contrast: The contrastive module: the authors' (default) or the learning one.
        dropout: Dropout3d probability on the stage-5 features and before each output conv.
        class_names: One name per class, background first.
        class_colors: One RGB triple (0-1) per class, background first.
    """

    in_channels: int = 1
    num_classes: int = 2
    base_filters: int = 16
    patch_size: tuple[int, int, int] = (112, 112, 80)
    projection_dim: int = 128
    contrast: ContrastModule = ContrastModule.AUTHORS
    dropout: float = 0.5
    class_names: tuple[str, ...] = ("Background", "Left atrium")
    class_colors: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, 0.0), (0.85, 0.4, 0.35))

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "base_filters", "projection_dim"):
            check_int(name, getattr(self, name))
        if self.num_classes < 2:
            raise ValueError(
                f"num_classes must be >= 2 (background + structure), got {self.num_classes}"
            )
        patch = tuple(self.patch_size)
        if len(patch) != 3:
            raise ValueError(f"patch_size must have 3 sides (X, Y, Z), got {self.patch_size!r}")
        for side in patch:
            check_int("patch_size side", side)
            if side % PATCH_MULTIPLE:
                raise ValueError(
                    f"patch_size sides must be multiples of {PATCH_MULTIPLE} (the V-Net halves "
                    f"the resolution four times), got {self.patch_size!r}"
                )
        object.__setattr__(self, "patch_size", patch)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        names = tuple(str(n) for n in self.class_names)
        colors = tuple(tuple(float(c) for c in rgb) for rgb in self.class_colors)
        if len(names) != self.num_classes or len(colors) != self.num_classes:
            raise ValueError(
                f"class_names and class_colors need {self.num_classes} entries each, "
                f"got {len(names)} names and {len(colors)} colors"
            )
        object.__setattr__(self, "contrast", parse_enum(ContrastModule, self.contrast))
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "class_colors", colors)

    @property
    def contrast_map_size(self) -> tuple[int, int, int]:
        """Size (h, w, d) of the foreground map M: a 3x3x3 stride-2 conv with padding 1."""
        return tuple((side + 1) // 2 for side in self.patch_size)  # type: ignore[return-value]

    @property
    def projection_input(self) -> int:
        """Input size h*w*d of each projection head, derived from the patch size."""
        return math.prod(self.contrast_map_size)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Semi-supervised training settings (defaults: the authors' LA configuration).

    Attributes:
        iterations: Total optimizer steps.
        batch_size: Patches per step, labeled and unlabeled together.
        labeled_batch_size: Labeled patches per step (the first ones of the batch).
        learning_rate: SGD learning rate at the start.
        lr_schedule: How it changes (constant, as in the authors' code; poly; cosine).
        momentum: SGD momentum.
        weight_decay: SGD weight decay (the code's 1e-4; the paper text says 5e-3).
        dice_weight: Weight of the Dice loss (the code's 0.5).
        consistency_weight: Maximum weight of the mutual-consistency loss.
        rampup_length: Length of the sigmoid ramp-up, in units of ``rampup_interval``.
        rampup_interval: Iterations per ramp-up unit (150 in the authors' code).
        temperature: Sharpening temperature T of the pseudo labels.
        mode: Semi-supervised FBA-Net, or the supervised baseline (Dice loss only).
        contrastive: Contrastive loss kind.
        contrastive_weight: Weight of the contrastive loss in the total (1 in the paper;
            0 trains mutual consistency alone).
        positive_alpha: Ranking-weight decay of the positive (pull) loss.
        negative_alpha: Ranking-weight decay of the negative (push) loss (code 2.5, paper 0.25).
        infonce_temperature: Temperature of the InfoNCE alternative.
        seed: Seed of every random generator.
        device: Where to train.
        precision: bfloat16 autocast or fp32.
        channels_last: Use the channels-last 3D memory layout (faster on CPU and GPU).
        checkpoint_every: Write a checkpoint every this many iterations.
        validate_every: Validate on the held-out labeled cases every this many iterations.
        log_every: Write a JSON progress line every this many iterations.
        sync_batchnorm: Batch norm statistics over all processes of a ``torchrun`` run
            (no effect in one process).
        region_margin_mm: Each training patch is z-scored over a random region around the
            labeled structure, its margins drawn from 0 to this many mm a side (so the network
            learns every crop a user may give; z-scored data only).
        intensity_scale: Then multiplied by a factor in [1 - this, 1 + this].
        intensity_shift: Then shifted by an offset in [-this, this].
        region_crop_probability: How often the voxels outside that region are set to 0, as
            inference pads a user's crop.
        ema_decay: Validate and export an exponential moving average of the weights, with
            this decay (about ``1 / (1 - ema_decay)`` recent steps count); 0: the last step's
            weights, as the authors do.
    """

    iterations: int = 15000
    batch_size: int = 4
    labeled_batch_size: int = 2
    learning_rate: float = 0.01
    lr_schedule: LRSchedule = LRSchedule.CONSTANT
    momentum: float = 0.9
    weight_decay: float = 1e-4
    dice_weight: float = 0.5
    consistency_weight: float = 1.0
    rampup_length: float = 40.0
    rampup_interval: int = 150
    temperature: float = 0.1
    mode: TrainingMode = TrainingMode.SEMI_SUPERVISED
    contrastive: ContrastiveKind = ContrastiveKind.RANKED
    contrastive_weight: float = 1.0
    positive_alpha: float = 0.25
    negative_alpha: float = 2.5
    infonce_temperature: float = 0.1
    seed: int = 1337
    device: DeviceKind = DeviceKind.AUTO
    precision: Precision = Precision.AUTO
    channels_last: bool = True
    checkpoint_every: int = 200
    validate_every: int = 200
    log_every: int = 1
    sync_batchnorm: SyncBatchNorm = SyncBatchNorm.AUTO
    region_margin_mm: float = 30.0
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    region_crop_probability: float = 0.5
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "iterations",
            "batch_size",
            "labeled_batch_size",
            "rampup_interval",
            "checkpoint_every",
            "validate_every",
            "log_every",
        ):
            check_int(name, getattr(self, name))
        if self.labeled_batch_size > self.batch_size:
            raise ValueError(
                f"labeled_batch_size ({self.labeled_batch_size}) cannot exceed "
                f"batch_size ({self.batch_size})"
            )
        for name in ("learning_rate", "temperature", "infonce_temperature"):
            _check_positive_number(name, getattr(self, name))
        for name in (
            "momentum",
            "weight_decay",
            "dice_weight",
            "consistency_weight",
            "contrastive_weight",
            "rampup_length",
            "positive_alpha",
            "negative_alpha",
            "region_margin_mm",
            "intensity_shift",
        ):
            _check_positive_number(name, getattr(self, name), allow_zero=True)
        _check_positive_number("intensity_scale", self.intensity_scale, allow_zero=True)
        if self.intensity_scale >= 1:
            raise ValueError(f"intensity_scale must be < 1, got {self.intensity_scale!r}")
        _check_positive_number("region_crop_probability", self.region_crop_probability, True)
        if self.region_crop_probability > 1:
            raise ValueError(
                f"region_crop_probability must be <= 1, got {self.region_crop_probability!r}"
            )
        _check_positive_number("ema_decay", self.ema_decay, allow_zero=True)
        if self.ema_decay >= 1:
            raise ValueError(f"ema_decay must be < 1 (0 turns it off), got {self.ema_decay!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        object.__setattr__(self, "mode", parse_enum(TrainingMode, self.mode))
        object.__setattr__(self, "contrastive", parse_enum(ContrastiveKind, self.contrastive))
        object.__setattr__(self, "lr_schedule", parse_enum(LRSchedule, self.lr_schedule))
        object.__setattr__(self, "device", parse_enum(DeviceKind, self.device))
        object.__setattr__(self, "precision", parse_enum(Precision, self.precision))
        object.__setattr__(self, "sync_batchnorm", parse_enum(SyncBatchNorm, self.sync_batchnorm))

    @property
    def unlabeled_batch_size(self) -> int:
        """Unlabeled patches per step."""
        return self.batch_size - self.labeled_batch_size


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (enums as their values, tuples as lists)."""

    def convert(value: Any) -> Any:
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, (tuple, list)):
            return [convert(v) for v in value]
        return value

    return {f.name: convert(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


def from_dict(config_type: type, data: Mapping[str, Any]) -> Any:
    """Build a config dataclass from a mapping, refusing unknown keys.

    Raises:
        ValueError: A key is not a field of ``config_type``; the message names the valid ones.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"{config_type.__name__} settings must be a mapping, got {data!r}")
    names = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown {config_type.__name__} setting(s) {unknown}; valid: {sorted(names)}"
        )
    return config_type(**{k: _as_tuple(v) for k, v in data.items()})
