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
from fbanet.config import TrainingMode
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


def uses_contrast(mode: TrainingMode, contrastive_weight: float) -> bool:
    """Whether a run's loss has a contrastive term, so its network needs the heads.

    Without one the heads would only fill the checkpoint (the authors' hold most of the
    parameters: 385 MB of 893 MB at 112x112x80) and cost a forward pass per step.
    """
    return mode is TrainingMode.SEMI_SUPERVISED and contrastive_weight > 0


def drop_contrast_state(state: dict[str, Any], parameters: int) -> dict[str, Any]:
    """A checkpoint with contrastive heads, fit for a network built without them.

    Runs before 0.4 kept the heads in every checkpoint. They are registered after the
    encoder and decoders, so the optimizer's first ``parameters`` entries are the others'.

    Args:
        state: What :meth:`fbanet.train.trainer.Trainer.state` saved.
        parameters: The number of parameters of the network without heads.
    """
    model = {k: v for k, v in state["model"].items() if not k.startswith("contrast.")}
    optimizer = state["optimizer"]
    groups = [dict(g, params=[i for i in g["params"] if i < parameters])
              for g in optimizer["param_groups"]]  # fmt: skip
    kept = {i: s for i, s in optimizer["state"].items() if int(i) < parameters}
    return {**state, "model": model, "optimizer": {"state": kept, "param_groups": groups}}
