"""Training checkpoints: the resumable state of a run, written atomically, read safely.

A checkpoint holds tensors and plain containers only (weights, optimizer state, random
streams, counters) and is read with ``torch.load(weights_only=True)``: never arbitrary objects.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fbanet._version import __version__
from fbanet.io.volumes import atomic_write
from fbanet.model.files import safe_torch_load

CHECKPOINT_FORMAT = "fbanet-checkpoint"

logger = logging.getLogger(__name__)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training checkpoint (tensors and plain containers only) atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "fbanet_version": __version__, **state}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


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


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the hidden temporary files that a killed run left in its folder.

    :func:`fbanet.io.volumes.atomic_write` names them ``.<name>.tmp-<hex><suffixes>``; a run
    killed (SIGKILL, power loss) while writing leaves one behind. Only the run folder and its
    ``checkpoints`` folder are searched.

    Returns:
        The files removed.
    """
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if folder.is_dir():
            for path in folder.glob(".*.tmp-*"):
                if path.is_file():
                    path.unlink()
                    removed.append(path)
    if removed:
        logger.info("removed %d unfinished file(s) of the interrupted run", len(removed))
    return removed
