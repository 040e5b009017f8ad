"""Learning-rate schedules, as pure functions of the iteration (so resume needs no state)."""

from __future__ import annotations

import math

from fbanet.config import LRSchedule, parse_enum

POLY_POWER = 0.9


def learning_rate_at(
    base: float, iteration: int, total: int, schedule: LRSchedule | str = LRSchedule.CONSTANT
) -> float:
    """The learning rate of the step that follows ``iteration`` completed steps.

    Args:
        base: The learning rate at the start.
        iteration: Steps done so far, 0 <= iteration < total.
        total: Steps of the whole run.
        schedule: constant (``base``), poly (``base * (1 - t/T) ** 0.9``) or cosine
            (``base * (1 + cos(pi t/T)) / 2``), with t = ``iteration`` and T = ``total``.

    Raises:
        ValueError: ``iteration`` is outside [0, total).
    """
    schedule = parse_enum(LRSchedule, schedule)
    if not 0 <= iteration < total:
        raise ValueError(f"iteration {iteration!r} is outside the run of {total!r} steps")
    progress = iteration / total
    if schedule is LRSchedule.POLY:
        return base * (1.0 - progress) ** POLY_POWER
    if schedule is LRSchedule.COSINE:
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base


def check_resumed_schedule(
    saved: tuple[LRSchedule | str, int], resumed: tuple[LRSchedule | str, int], run_dir: str
) -> None:
    """Refuse a resume that would re-stretch a decaying schedule mid-run.

    A poly or cosine schedule is a function of ``iteration / total``: another total (or
    another schedule) makes the learning rate jump at the resumed step and no longer matches
    the run so far. A constant schedule may be extended.

    Args:
        saved: The run's (schedule, total iterations) from its checkpoint.
        resumed: The (schedule, total iterations) asked for now.
        run_dir: The run folder, for the message.

    Raises:
        ValueError: The schedule decays and its schedule or total differ, naming both values.
    """
    (old, old_total), (new, new_total) = saved, resumed
    old, new = parse_enum(LRSchedule, old), parse_enum(LRSchedule, new)
    if old is LRSchedule.CONSTANT and new is LRSchedule.CONSTANT:
        return
    if (old, old_total) == (new, new_total):
        return
    raise ValueError(
        f"the run in {run_dir!r} decays its learning rate with --lr-schedule {old.value} over "
        f"--iterations {old_total}; resuming with --lr-schedule {new.value} --iterations "
        f"{new_total} would re-stretch the schedule mid-run. Resume with --iterations "
        f"{old_total} (and --lr-schedule {old.value}), or start a new schedule on purpose: "
        f"fbanet train --init-model {run_dir}/model.safetensors --iterations {new_total} "
        f"-o NEW_FOLDER (with the same data flags)"
    )
