"""Convert checkpoints written by the FBA-Net authors' training code to fbanet's layout.

The authors' network names its blocks ``encoder.block_one``, ``decoder1.block_five_up``,
``decoder1.cm.activation_head``, ``decoder1.f_mlp`` and so on; fbanet's network holds the
same layers under descriptive names (see :mod:`fbanet.model.network`). Only names change: every
tensor keeps its shape and values, so the converted network computes the same outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from fbanet.config import IntensityNormalization, ModelConfig

logger = logging.getLogger(__name__)

_ENCODER_BLOCKS = ("one", "two", "three", "four", "five")
# Decoder blocks in order: (authors' name, our name).
_DECODER_BLOCKS = (
    ("block_five_up", "ups.0"),
    ("block_six", "stages.0"),
    ("block_six_up", "ups.1"),
    ("block_seven", "stages.1"),
    ("block_seven_up", "ups.2"),
    ("block_eight", "stages.2"),
    ("block_eight_up", "ups.3"),
    ("block_nine", "stages.3"),
    ("out_conv", "out_conv"),
)
_CONTRAST_PARTS = (
    ("cm.activation_head", "map_conv"),
    ("cm.bn_head", "map_norm"),
    ("f_mlp", "fg_head"),
    ("b_mlp", "bg_head"),
)


def _build_rules() -> list[tuple[re.Pattern[str], str]]:
    rules: list[tuple[str, str]] = []
    for i, name in enumerate(_ENCODER_BLOCKS):
        rules.append((rf"encoder\.block_{name}\.conv\.", f"encoder.stages.{i}."))
        rules.append((rf"encoder\.block_{name}_dw\.conv\.", f"encoder.downs.{i}."))
    for k in range(3):
        for theirs, ours in _DECODER_BLOCKS:
            tail = r"\.conv\." if theirs != "out_conv" else r"\."
            rules.append((rf"decoder{k + 1}\.{theirs}{tail}", f"decoders.{k}.{ours}."))
        for theirs, ours in _CONTRAST_PARTS:
            rules.append((rf"decoder{k + 1}\.{re.escape(theirs)}\.", f"contrast.{k}.{ours}."))
    return [(re.compile("^" + pattern), replacement) for pattern, replacement in rules]


_RULES = _build_rules()


def convert_key(key: str) -> str:
    """Our name of the authors' parameter or buffer ``key``.

    Raises:
        ValueError: ``key`` is not a name the authors' FBA-Net uses.
    """
    for pattern, replacement in _RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    raise ValueError(
        f"{key!r} is not a parameter of the FBA-Net authors' network; is this an FBA-Net "
        f"(three-decoder 'fbapnet') checkpoint?"
    )


def convert_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename every entry of an authors' state dict (a ``module.`` prefix is dropped)."""
    converted = {}
    for key, value in state.items():
        bare = key[len("module.") :] if key.startswith("module.") else key
        converted[convert_key(bare)] = value
    return converted


def infer_model_config(state: Mapping[str, Tensor]) -> ModelConfig:
    """Recover the architecture from a converted state dict's shapes.

    The patch size cannot be recovered exactly from the projection head size alone, so the
    LA patch (112, 112, 80) is assumed when it fits and otherwise a cube is tried; the caller
    can pass the right one to :func:`import_authors_checkpoint`.
    """
    first = state["encoder.stages.0.0.weight"]
    out = state["decoders.0.out_conv.weight"]
    head = state.get("contrast.0.fg_head.0.weight")
    num_classes = int(out.shape[0])
    defaults = ModelConfig()
    names = (
        defaults.class_names
        if num_classes == 2
        else tuple(f"Class {i}" for i in range(num_classes))
    )
    colors = defaults.class_colors if num_classes == 2 else tuple((0.5, 0.5, 0.5) for _ in names)
    kwargs: dict[str, Any] = dict(
        in_channels=int(first.shape[1]),
        num_classes=num_classes,
        base_filters=int(first.shape[0]),
        class_names=names,
        class_colors=colors,
    )
    if head is None:
        return ModelConfig(**kwargs)
    kwargs["projection_dim"] = int(head.shape[0])
    for patch in ((112, 112, 80), (96, 96, 96)):
        candidate = ModelConfig(**kwargs, patch_size=patch)
        if candidate.projection_input == head.shape[1]:
            return candidate
    side = round((int(head.shape[1])) ** (1 / 3)) * 2
    candidate = ModelConfig(**kwargs, patch_size=(side, side, side))
    if candidate.projection_input != head.shape[1]:
        raise ValueError(
            f"cannot derive the patch size from a projection head input of {head.shape[1]}; "
            f"pass the training patch size explicitly"
        )
    return candidate


def load_authors_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read an authors' ``.pth`` file safely (tensors only, no arbitrary objects)."""
    from fbanet.model.files import safe_torch_load  # modelfile imports the network, heavy

    state = safe_torch_load(
        path,
        "PyTorch checkpoint of tensors",
        "only state dicts are accepted, never pickled objects",
    )
    if (
        isinstance(state, Mapping)
        and "state_dict" in state
        and isinstance(state["state_dict"], Mapping)
    ):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors")
    return dict(state)


def import_authors_checkpoint(
    checkpoint: str | Path,
    destination: str | Path,
    *,
    patch_size: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    half: bool = False,
) -> Path:
    """Convert an authors' checkpoint into an fbanet model file (same outputs).

    Args:
        checkpoint: The ``.pth`` file written by the authors' training code.
        destination: The model file to write (atomically).
        patch_size: The training patch, when it cannot be derived from the checkpoint.
        spacing: The voxel size (mm) the model was trained at, recorded in the file.
        half: Store float16 weights.

    Raises:
        ValueError: The file is not a state dict of tensors, or does not fit FBA-Net.
    """
    from fbanet.model.files import ModelMetadata, save_model_file
    from fbanet.model.network import FBANet

    checkpoint = Path(checkpoint)
    state = convert_state_dict(load_authors_checkpoint(checkpoint))
    config = infer_model_config(state)
    if patch_size is not None:
        config = dataclasses.replace(config, patch_size=patch_size)
    model = FBANet(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    needed = [k for k in missing if not k.startswith("contrast.")]
    if needed or unexpected:
        raise ValueError(
            f"{str(checkpoint)!r} does not fit FBA-Net: missing {needed[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    metadata = ModelMetadata(
        model=config,
        spacing=spacing,
        # The authors trained on the LA HDF5 files as stored (z-scored over the whole scan).
        normalization=IntensityNormalization.AS_STORED,
        description=f"imported from {checkpoint.name} (FBA-Net authors' checkpoint)",
    )
    path = save_model_file(destination, model, metadata, half=half)
    logger.info("wrote %s", path)
    return path
