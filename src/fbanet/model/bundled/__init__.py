"""Model files that ship with fbanet."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_NAME = "left_atrium.safetensors"


def default_model_path() -> Path | None:
    """The bundled left-atrium model, or None when this build ships none."""
    path = Path(__file__).with_name(DEFAULT_MODEL_NAME)
    return path if path.is_file() else None
