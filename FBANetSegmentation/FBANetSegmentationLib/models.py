"""Which model segments: the bundled one, one from the training panel, or any model file."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MODEL_SUFFIX = ".safetensors"


class ModelSource(enum.Enum):
    """Where the model comes from (a combo box in the panel, saved with the scene)."""

    BUNDLED = "bundled"
    TRAINED = "trained"
    FILE = "file"

    def label(self) -> str:
        """Text shown in the combo box."""
        return {
            ModelSource.BUNDLED: "Bundled left-atrium model",
            ModelSource.TRAINED: "Model trained in FBANet Training",
            ModelSource.FILE: "Model file",
        }[self]


@dataclass(frozen=True)
class ModelInfo:
    """A model file and a one-line description of it.

    Attributes:
        name: File name without ``.safetensors``.
        path: The file.
        description: Classes, validation Dice and training size, or why it cannot be read.
        readable: Whether the header was read (False: the description is the error).
    """

    name: str
    path: Path
    description: str
    readable: bool = True


def describeModel(path: str | Path) -> ModelInfo:
    """Read a model file's header (no weights) into a :class:`ModelInfo`.

    Reading headers needs fbanet's model-file support (and so torch); without it the file is
    listed with a note instead.
    """
    path = Path(path)
    name = path.name[: -len(MODEL_SUFFIX)] if path.name.endswith(MODEL_SUFFIX) else path.stem
    try:
        from fbanet.model.header import read_model_header
    except (ImportError, OSError) as error:  # torch missing, or a broken torch install
        return ModelInfo(name, path, f"details need FBANet's dependencies ({error})", True)
    try:
        meta = read_model_header(path)
    except (OSError, ValueError) as error:
        return ModelInfo(name, path, f"unreadable: {error}", False)
    parts = [", ".join(meta.model.class_names[1:])]
    if meta.validation_dice is not None:
        parts.append(f"validation Dice {meta.validation_dice:.3f}")
    if meta.num_labeled or meta.num_unlabeled:
        parts.append(f"{meta.num_labeled} labeled + {meta.num_unlabeled} unlabeled cases")
    if meta.spacing is not None:
        parts.append("spacing " + " x ".join(f"{s:g}" for s in meta.spacing) + " mm")
    if meta.description:
        parts.append(meta.description)
    return ModelInfo(name, path, "; ".join(p for p in parts if p), True)


def listTrainedModels(folder: str | Path | None) -> list[ModelInfo]:
    """The ``*.safetensors`` models in ``folder``, newest first (none if it does not exist)."""
    if folder is None or not Path(folder).is_dir():
        return []
    # Hidden names are files still being written (atomic writes use ".name.tmp-..." names).
    files = [
        p
        for p in Path(folder).glob(f"*{MODEL_SUFFIX}")
        if p.is_file() and not p.name.startswith(".")
    ]
    files.sort(key=lambda p: (-p.stat().st_mtime, p.name))
    return [describeModel(p) for p in files]


def trainedModelIndex(names: Sequence[str], wanted: str) -> int:
    """Which of the listed trained models the panel shows for the parameter ``wanted``.

    Returns:
        Its index; the first (newest) when none is wanted yet; -1 (none) when it is no
        longer listed, so that the panel says so instead of segmenting with another model.
    """
    if not wanted:
        return 0 if names else -1
    return list(names).index(wanted) if wanted in names else -1


def bundledModel() -> Path | None:
    """The model that ships with fbanet, or None while none ships."""
    from fbanet.model.bundled import default_model_path

    return default_model_path()


def resolveModelPath(
    source: ModelSource,
    trainedName: str = "",
    modelFile: str | Path | None = None,
    modelsFolder: str | Path | None = None,
) -> Path:
    """The model file for the panel's choice.

    Raises:
        ValueError: The choice does not name an existing file; the message says what to do.
    """
    if source is ModelSource.BUNDLED:
        path = bundledModel()
        if path is None:
            raise ValueError(
                "this version of FBANet ships no bundled model: choose a model trained in "
                "FBANet Training, or a model file"
            )
        return path
    if source is ModelSource.TRAINED:
        if not trainedName:
            raise ValueError(
                "no trained model is selected: train one in the FBANet Training module, or "
                "choose a model file"
            )
        path = Path(modelsFolder or ".") / f"{trainedName}{MODEL_SUFFIX}"
        if not path.is_file():
            raise ValueError(f"the trained model {trainedName!r} is no longer in {path.parent}")
        return path
    text = str(modelFile or "").strip()
    if not text or text == "." or not Path(text).is_file():
        raise ValueError(
            f"choose an fbanet model file (.safetensors); {text!r} is not a file"
            if text and text != "."
            else "choose an fbanet model file (.safetensors)"
        )
    return Path(text)


def defaultSource(modelsFolder: str | Path | None) -> ModelSource:
    """The bundled model when there is one, else a trained model if any, else a file."""
    if bundledModel() is not None:
        return ModelSource.BUNDLED
    if modelsFolder is not None and any(Path(modelsFolder).glob(f"*{MODEL_SUFFIX}")):
        return ModelSource.TRAINED
    return ModelSource.FILE
