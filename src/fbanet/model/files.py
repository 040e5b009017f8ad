"""Model files (inference weights + metadata), written atomically and loaded safely.

A model file is a ``safetensors`` file: the encoder and decoder weights (no projection
heads) and, in the header, a JSON document with the architecture and preprocessing. Nothing
in it is executable. Files written by ``torch.save`` (training checkpoints, the authors'
checkpoints) are read only through :func:`safe_torch_load`. Training checkpoints themselves
are in :mod:`fbanet.train.checkpoints`.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

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
    "load_model_file",
    "read_model_header",
    "safe_torch_load",
    "save_model_file",
]


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
    _check_stored_shapes(path, metadata)
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


def _check_stored_shapes(path: str | Path, metadata: ModelMetadata) -> None:
    """Compare the tensors' shapes in the file with its architecture, allocating nothing.

    Raises:
        ValueError: A tensor's recorded shape differs from what the header's architecture
            needs (the file is damaged or was edited).
    """
    with torch.device("meta"):  # shapes only: no memory behind the parameters
        layout = FBANet(metadata.model, with_contrast=False).state_dict()
    expected = {key: tuple(value.shape) for key, value in layout.items()}
    try:
        with safe_open(str(path), framework="pt") as handle:
            stored = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{str(path)!r} is damaged (cannot read its weights: {error})") from error
    wrong = [k for k, shape in stored.items() if k in expected and expected[k] != shape]
    if wrong:
        key = wrong[0]
        raise ValueError(
            f"{str(path)!r}: weight {key!r} has the shape {list(stored[key])}, its architecture "
            f"needs {list(expected[key])}; the file is damaged or was edited"
        )


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
    except pickle.UnpicklingError as error:
        # PyTorch's own text suggests weights_only=False, i.e. running the file's code: never
        # repeat that advice.
        raise ValueError(
            f"{str(path)!r} holds pickled Python objects, not only tensors; fbanet refuses to "
            f"load it because unpickling can run code hidden in the file. Only tensors (a "
            f"state dict) are read as a {what}; {advice}"
        ) from error
    except Exception as error:  # torch raises many types for corrupt or foreign files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{str(path)!r} is not a readable {what} ({reason}); {advice}") from error


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


def initialize_from_model_file(model: FBANet, path: str | Path) -> None:
    """Copy encoder and decoder weights of a model file into ``model`` (fine-tuning).

    Raises:
        ValueError: The file's architecture differs from ``model``'s, saying which setting.
    """
    source, metadata = load_model_file(path)
    ours, theirs = model.config, metadata.model
    for field in ("in_channels", "num_classes", "base_filters"):
        if getattr(ours, field) != getattr(theirs, field):
            raise ValueError(
                f"cannot start from {str(path)!r}: its {field} is {getattr(theirs, field)}, "
                f"this run's is {getattr(ours, field)}; use the same architecture"
            )
    state = source.state_dict()
    for absent, donor in fill_absent_decoders(state, metadata.decoders).items():
        logger.info(
            "%s holds no decoder %d: it starts as a copy of decoder %d (same layers), not "
            "from random weights", path, absent + 1, donor + 1,
        )  # fmt: skip
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("contrast.") for k in missing), (missing, unexpected)
    logger.info("initialized from %s (%d iterations)", path, metadata.iterations)


def fill_absent_decoders(state: dict[str, Tensor], present: Sequence[int]) -> dict[int, int]:
    """Give each decoder absent from a model file the weights of a present one of its shape.

    Model files may leave decoders out (the bundled one holds two of three). A decoder that
    starts from random weights sends random gradients into the trained encoder when
    fine-tuning; a copy of a trained decoder with the same layers (the trilinear and nearest
    decoders differ only in their parameter-free upsampling) does not. An absent decoder
    without such a twin keeps the random weights it has in ``state``.

    Args:
        state: A full FBA-Net state dict (absent decoders hold random weights); changed in
            place.
        present: Indices of the decoders the file holds.

    Returns:
        {absent decoder: decoder copied into it}.
    """

    def layers(index: int) -> dict[str, tuple[int, ...]]:
        prefix = f"decoders.{index}."
        return {k[len(prefix) :]: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}

    count = len({int(k.split(".")[1]) for k in state if k.startswith("decoders.")})
    copied: dict[int, int] = {}
    for absent in sorted(set(range(count)) - set(present)):
        donor = next((d for d in sorted(present) if layers(d) == layers(absent)), None)
        if donor is None:
            continue
        for name in layers(absent):
            state[f"decoders.{absent}.{name}"] = state[f"decoders.{donor}.{name}"].clone()
        copied[absent] = donor
    return copied
