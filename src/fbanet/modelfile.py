"""Model files (inference weights + metadata) and training checkpoints, loaded safely.

A model file is a ``safetensors`` file: the encoder and decoder weights (no projection
heads) and, in the header, a JSON document with the architecture and preprocessing. Nothing
in it is executable. Training checkpoints hold tensors and plain containers only and are
read with ``torch.load(weights_only=True)``. Both are written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from fbanet import __version__
from fbanet.config import IntensityNormalization, ModelConfig, from_dict, parse_enum, to_dict
from fbanet.io import atomic_write
from fbanet.network import FBANet, inference_state_dict

logger = logging.getLogger(__name__)

MODEL_FORMAT = "fbanet-model"
MODEL_FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "fbanet-checkpoint"


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """What a model file records besides its weights.

    Attributes:
        model: The architecture.
        spacing: Voxel spacing (mm, X, Y, Z) the network was trained at; scans with another
            spacing are resampled to it. None: use the scan's own spacing.
        normalization: Intensity normalization applied to scans before inference.
        largest_component: Keep only the largest connected component by default.
        iterations: Training iterations done.
        validation_dice: Dice on held-out validation cases at this state, if measured.
        num_labeled: Labeled training cases.
        num_unlabeled: Unlabeled training cases.
        training: The training configuration, as a dict (for the record).
        fbanet_version: Version of fbanet that wrote the file.
        description: Free text (data, intended use).
        decoders: The decoders whose weights the file holds (a shipped model may leave
            some out to stay small); uncertainty needs at least two.
    """

    model: ModelConfig
    spacing: tuple[float, float, float] | None = None
    normalization: IntensityNormalization = IntensityNormalization.ZSCORE
    largest_component: bool = True
    iterations: int = 0
    validation_dice: float | None = None
    num_labeled: int = 0
    num_unlabeled: int = 0
    training: dict[str, Any] | None = None
    fbanet_version: str = __version__
    description: str = ""
    decoders: tuple[int, ...] = (0, 1, 2)

    def to_json(self) -> str:
        """Serialize to JSON."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["model"] = to_dict(self.model)
        data["normalization"] = self.normalization.value
        data["spacing"] = list(self.spacing) if self.spacing is not None else None
        data["decoders"] = list(self.decoders)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelMetadata:
        """Parse what :meth:`to_json` wrote (unknown keys from newer versions are ignored)."""
        data = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in names}
        data["model"] = from_dict(ModelConfig, data["model"])
        data["normalization"] = parse_enum(IntensityNormalization, data["normalization"])
        if data.get("spacing") is not None:
            data["spacing"] = tuple(float(s) for s in data["spacing"])
        if "decoders" in data:
            data["decoders"] = tuple(int(d) for d in data["decoders"])
        return cls(**data)


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


def read_model_header(path: str | Path) -> ModelMetadata:
    """Read only the metadata of a model file (fast: no weights are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist")
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            if not 0 < size < 100_000_000:
                raise ValueError("bad header size")
            header = json.loads(handle.read(size))
    except (ValueError, UnicodeDecodeError, OSError) as error:
        raise ValueError(
            f"{str(path)!r} is not an fbanet model file (not a readable safetensors file: "
            f"{error}); use a file written by 'fbanet train' or 'fbanet import-checkpoint'"
        ) from error
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else {}
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(
            f"{str(path)!r} is a safetensors file but not an fbanet model (no fbanet metadata); "
            f"convert authors' checkpoints with 'fbanet import-checkpoint'"
        )
    if int(meta.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} was written by a newer fbanet (format {meta['format_version']}); "
            f"upgrade fbanet to read it"
        )
    try:
        return ModelMetadata.from_json(meta["fbanet"])
    except (KeyError, ValueError, TypeError) as error:
        raise ValueError(f"{str(path)!r} has damaged fbanet metadata: {error}") from error


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``: no arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise ValueError(
            f"{str(path)!r} is not a readable fbanet checkpoint ({error}); start a new run or "
            f"resume from another checkpoint"
        ) from error
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
