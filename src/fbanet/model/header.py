"""Model file metadata, readable without PyTorch (the Slicer panels list models with it)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fbanet._version import __version__
from fbanet.config import IntensityNormalization, ModelConfig, from_dict, parse_enum, to_dict

MODEL_FORMAT = "fbanet-model"
MODEL_FORMAT_VERSION = 1


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


# Sane bounds of every size a model header sets: a file claiming more is refused before
# anything is allocated (a patch of 100000^3 voxels would ask for terabytes).
HEADER_BOUNDS: dict[str, tuple[int, int]] = {
    "in_channels": (1, 16),
    "num_classes": (2, 64),
    "base_filters": (1, 64),
    "projection_dim": (1, 4096),
    "patch_size side": (16, 512),
}
MAX_PATCH_VOXELS = 256**3
SPACING_RANGE_MM = (1e-3, 100.0)
MAX_ITERATIONS = 10**9


def _out_of_bounds(metadata: ModelMetadata) -> str | None:
    """What in ``metadata`` lies outside sane bounds, or None."""
    model = metadata.model
    values = {name: getattr(model, name) for name in list(HEADER_BOUNDS)[:-1]}
    for name, value in [*values.items(), *(("patch_size side", s) for s in model.patch_size)]:
        low, high = HEADER_BOUNDS[name]
        if not low <= value <= high:
            return f"{name} {value} (must be {low} to {high})"
    voxels = model.patch_size[0] * model.patch_size[1] * model.patch_size[2]
    if voxels > MAX_PATCH_VOXELS:
        return f"patch_size {list(model.patch_size)} ({voxels} voxels, at most {MAX_PATCH_VOXELS})"
    low_mm, high_mm = SPACING_RANGE_MM
    if metadata.spacing is not None and not all(low_mm <= s <= high_mm for s in metadata.spacing):
        return f"spacing {list(metadata.spacing)} mm (each must be {low_mm} to {high_mm})"
    if (
        not metadata.decoders
        or 0 not in metadata.decoders
        or not set(metadata.decoders) <= {0, 1, 2}
    ):
        return f"decoders {list(metadata.decoders)} (among 0, 1, 2, with 0)"
    if not 0 <= metadata.iterations <= MAX_ITERATIONS:
        return f"iterations {metadata.iterations}"
    return None


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
    rewrite = (
        "the file is damaged or was not written by fbanet; write it again with 'fbanet train', "
        "'fbanet export-model' or 'fbanet import-checkpoint'"
    )
    if "fbanet" not in meta:
        raise ValueError(
            f"{str(path)!r} is marked as an fbanet model but its header lacks the 'fbanet' "
            f"entry (architecture and preprocessing); {rewrite}"
        )
    try:
        metadata = ModelMetadata.from_json(meta["fbanet"])
    except KeyError as error:
        raise ValueError(
            f"{str(path)!r} has incomplete fbanet metadata (no {error.args[0]!r} setting); "
            f"{rewrite}"
        ) from error
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{str(path)!r} has damaged fbanet metadata ({error}); {rewrite}"
        ) from error
    problem = _out_of_bounds(metadata)
    if problem is not None:
        raise ValueError(f"{str(path)!r} claims an impossible {problem}; {rewrite}")
    return metadata
