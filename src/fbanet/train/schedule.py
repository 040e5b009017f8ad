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
