"""Model files (inference weights + metadata) and training checkpoints, loaded safely.

A model file is a ``safetensors`` file: the encoder and decoder weights (no projection
heads) and, in the header, a JSON document with the architecture and preprocessing. Nothing
in it is executable. Training checkpoints hold tensors and plain containers only and are
read with ``torch.load(weights_only=True)``. Both are written atomically.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from fbanet import __version__
from fbanet.io.volumes import atomic_write
from fbanet.model.header import (
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    ModelMetadata,
    read_model_header,
)
from fbanet.model.network import FBANet, inference_state_dict

logger = logging.getLogger(__name__)

__all__ = [
    "ModelMetadata",
    "export_model_file",
    "load_checkpoint",
    "load_model_file",
    "read_model_header",
    "save_checkpoint",
    "save_model_file",
]

CHECKPOINT_FORMAT = "fbanet-checkpoint"


def save_model_file(
    path: str | Path, model: FBANet, metadata: ModelMetadata, half: bool = False
) -> Path:
    """Write the inference weights of ``model`` and ``metadata`` to ``path`` atomically.

    Args:
        path: Destination, conventionally ``*.safetensors``.
        model: The trained network (projection heads are left out).
        metadata: Architecture and preprocessing to record; ``metadata.decoders`` selects
            the decoders stored.
        half: Store floating-point weights as float16 (half the size).
    """
    tensors = {}
    for key, value in inference_state_dict(model).items():
        if key.startswith("decoders.") and int(key.split(".")[1]) not in metadata.decoders:
            continue
        value = value.detach().to("cpu").contiguous()
        if half and value.is_floating_point():
            value = value.half()
        tensors[key] = value
    header = {
        "format": MODEL_FORMAT,
        "format_version": str(MODEL_FORMAT_VERSION),
        "fbanet": metadata.to_json(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    return path


def load_model_file(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[FBANet, ModelMetadata]:
    """Load a model file into an inference network (eval mode, float32, no heads).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is corrupt, foreign, or its weights do not fit its metadata.
    """
    metadata = read_model_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{str(path)!r} is damaged (cannot read its weights: {error})") from error
    model = FBANet(metadata.model, with_contrast=False)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    expected = {
        k
        for k in model.state_dict()
        if not k.startswith("decoders.") or int(k.split(".")[1]) in metadata.decoders
    }
    problems = sorted(expected ^ set(tensors))
    if problems:
        raise ValueError(
            f"{str(path)!r}: weights do not match its architecture (missing or unexpected: "
            f"{problems[:5]}); the file is damaged or was edited"
        )
    try:
        model.load_state_dict(tensors, strict=False)
    except RuntimeError as error:
        raise ValueError(
            f"{str(path)!r}: weights do not match its architecture: {error}"
        ) from error
    return model.to(device).eval(), metadata


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training checkpoint (tensors and plain containers only) atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "fbanet_version": __version__, **state}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


def safe_torch_load(path: str | Path, what: str, advice: str) -> Any:
    """``torch.load`` restricted to tensors and plain containers (never arbitrary objects).

    Args:
        path: A file written by ``torch.save``.
        what: What the file should be, for the message.
        advice: What the user should do when the file cannot be read.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Corrupt, foreign, or holding objects other than tensors and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise ValueError(f"{str(path)!r} is not a readable {what} ({error}); {advice}") from error


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``: no arbitrary objects)."""
    state = safe_torch_load(
        path, "fbanet checkpoint", "start a new run or resume from another checkpoint"
    )
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not an fbanet training checkpoint")
    return state


def state_dict_to_cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached CPU copies, so a checkpoint does not pin device memory."""
    return {k: v.detach().to("cpu") for k, v in state.items()}


def export_model_file(
    source: str | Path,
    destination: str | Path,
    *,
    half: bool = True,
    decoders: tuple[int, ...] | None = None,
    description: str | None = None,
) -> Path:
    """Re-write a model file smaller: float16 weights and/or fewer decoders.

    Args:
        source: An fbanet model file.
        destination: Where to write the exported file.
        half: Store float16 weights.
        decoders: Decoders to keep (must include 0, the one segmentation uses); None keeps
            those of ``source``.
        description: Replaces the description (for example a pointer to the model card).
    """
    model, metadata = load_model_file(source)
    keep = tuple(metadata.decoders if decoders is None else decoders)
    if 0 not in keep or not set(keep) <= set(metadata.decoders):
        raise ValueError(
            f"decoders {list(keep)} must include 0 and be among those in {str(source)!r} "
            f"({list(metadata.decoders)})"
        )
    changes: dict[str, Any] = {"decoders": tuple(sorted(keep))}
    if description is not None:
        changes["description"] = description
    return save_model_file(destination, model, dataclasses.replace(metadata, **changes), half=half)
