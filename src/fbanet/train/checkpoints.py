"""Training checkpoints: the resumable state of a run, written atomically, read safely.

A checkpoint holds tensors and plain containers only (weights, optimizer state, random
streams, counters) and is read with ``torch.load(weights_only=True)``: never arbitrary objects.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fbanet._version import __version__
from fbanet.config import ModelConfig, TrainConfig, TrainingMode, from_dict, to_dict
from fbanet.io.volumes import atomic_write
from fbanet.model.files import safe_torch_load
from fbanet.train.schedule import check_resumed_schedule

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


def check_resumable(
    state: dict[str, Any],
    world_size: int,
    model_config: ModelConfig,
    config: TrainConfig,
    run_dir: str | Path,
) -> None:
    """Refuse a checkpoint that this run cannot continue exactly, saying what to do."""
    saved_world = int(state.get("world_size", 1))
    if saved_world != world_size:
        raise ValueError(
            f"the checkpoint was written by {saved_world} training process(es), this run "
            f"has {world_size}: the data shards and random streams depend on it, so "
            f"resume with {saved_world} process(es) (torchrun --nnodes x --nproc-per-node) "
            f"or start a new run folder"
        )
    saved_model = from_dict(ModelConfig, json.loads(state["model_config"]))
    if saved_model != model_config:
        raise ValueError(
            f"the checkpoint was written for another architecture ({saved_model}); resume "
            f"with the run's own config.json or start a new run folder"
        )
    saved_train = json.loads(state["train_config"])
    check_resumed_schedule(
        (saved_train.get("lr_schedule", "constant"), int(saved_train["iterations"])),
        (config.lr_schedule, config.iterations),
        str(run_dir),
    )


class TrainingDivergedError(FloatingPointError, RuntimeError):
    """The loss became NaN or infinite; the message says which checkpoint, if any, is kept."""


def diverged_error(loss: float, iteration: int, saved: int | None) -> TrainingDivergedError:
    """The error for a non-finite ``loss`` at ``iteration``, saying truthfully what is kept
    (``saved``: the iteration of the checkpoint on disk, or None)."""
    kept = (
        f"the checkpoint of iteration {saved} is kept: resume it with --resume and a "
        "lower --lr, or --precision fp32"
        if saved is not None
        else "no checkpoint was written yet: start again with a lower --lr, or --precision fp32"
    )
    return TrainingDivergedError(f"the loss became {loss} at iteration {iteration}; {kept}")


def write_run_config(
    run_dir: Path, model: ModelConfig, train: TrainConfig, data: dict[str, Any], compute: str
) -> None:
    """Write the run's ``config.json`` atomically: the resolved configurations, the data
    (its names and where they came from, so that ``--resume`` needs no data flags), the
    version and the compute setup."""
    document = {
        "model": to_dict(model), "train": to_dict(train), "data": data,
        "fbanet_version": __version__, "compute": compute,
    }  # fmt: skip
    text = json.dumps(document, indent=2)
    atomic_write(run_dir / "config.json", lambda tmp: tmp.write_text(text))
