"""The worker contract: what ``fbanet <command> --json`` prints and how it exits.

A GUI (the Slicer panels) runs the ``fbanet`` command line in a background process and
follows it through one JSON object per line on stdout (an *event*), the log on stderr and
the exit code. This module is that contract, written once: the CLI and the trainer build
their events with :func:`make_event`, the panels and their review code read them with
:func:`event_kind`, and both sides use :class:`ExitCode` and :class:`JobState`. It imports
nothing but the standard library, so it sits at the bottom of the package's layers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

EVENT_KEY = "event"
# A failing command's last stderr line is "fbanet <command>: error: <message>".
ERROR_MARKER = ": error: "


class Event(str, enum.Enum):
    """The kinds of event (the value of the ``"event"`` field)."""

    PROGRESS = "progress"  # segment: passes done for one image (windows x mirrored passes)
    DONE = "done"  # segment: one image written
    FAILED = "failed"  # segment: one image of several failed (the others go on)
    ITERATION = "iteration"  # train: an iteration was logged
    VALIDATION = "validation"  # train: a validation ran
    FINISHED = "finished"  # train: every iteration done (exit 0)
    STOPPED = "stopped"  # train: stopped on request, checkpoint written (exit 130)
    SCORED = "scored"  # rank: one scan scored
    RANKED = "ranked"  # rank: the ranking, most disagreement first
    DEVICES = "devices"  # fbanet.cli.devices: the compute devices found


# The fields each event always carries (others may follow, e.g. the losses of ITERATION).
FIELDS: dict[Event, tuple[str, ...]] = {
    Event.PROGRESS: ("image", "done", "total"),
    Event.DONE: ("image", "seconds", "segmentation", "probability", "uncertainty", "preview"),
    Event.FAILED: ("image", "error"),
    Event.ITERATION: ("iteration", "total", "lr", "eta_s"),
    Event.VALIDATION: ("iteration", "dice", "best_dice"),
    Event.FINISHED: ("iteration", "best_dice", "seconds", "model"),
    Event.STOPPED: ("iteration", "best_dice", "seconds", "model"),
    Event.SCORED: ("index", "total", "path", "score", "missed"),
    Event.RANKED: ("ranking",),
    Event.DEVICES: ("torch", "devices"),
}
# The optional loss fields of an ITERATION event, in display order.
LOSS_FIELDS = ("loss", "dice_loss", "consistency_loss", "contrastive_loss")


class ExitCode(enum.IntEnum):
    """How ``fbanet`` exits."""

    OK = 0
    ERROR = 1  # the machine or the environment failed (disk, device, a missing package)
    USAGE = 2  # bad input: the message says what to change
    STOPPED = 130  # interrupted (Ctrl-C), or training stopped on request (resumable)


class JobState(str, enum.Enum):
    """Where a background job stands, as the panels show it."""

    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"  # a stop was requested; the worker is writing its checkpoint
    SUCCEEDED = "succeeded"
    STOPPED = "stopped"  # ended on request with a checkpoint (resumable)
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        """Whether the worker may still be running."""
        return self in (JobState.RUNNING, JobState.STOPPING)


def state_for_exit(code: int, cancelled: bool = False) -> JobState:
    """The final state of a job whose worker exited with ``code``."""
    if cancelled:
        return JobState.CANCELLED
    if code == ExitCode.OK:
        return JobState.SUCCEEDED
    if code == ExitCode.STOPPED:
        return JobState.STOPPED
    return JobState.FAILED


def make_event(kind: Event, **fields: Any) -> dict[str, Any]:
    """One event, with every field the contract requires for ``kind``.

    Raises:
        ValueError: A required field is missing (a bug in the emitting command).
    """
    missing = [name for name in FIELDS[kind] if name not in fields]
    if missing:
        raise ValueError(f"a {kind.value!r} event needs the fields {missing}")
    return {EVENT_KEY: kind.value, **fields}


def event_kind(event: Mapping[str, Any]) -> Event | None:
    """The kind of a received event, or None for an object that is not one of ours."""
    try:
        return Event(event.get(EVENT_KEY))
    except ValueError:
        return None


def error_line(command: str, error: object) -> str:
    """The stderr line a failing command ends with (``fbanet <command>: error: ...``)."""
    return f"fbanet {command}{ERROR_MARKER}{error}"


def error_message(log_lines: list[str]) -> str | None:
    """The message of the last error line in a worker's log, or None."""
    for line in reversed(log_lines):
        if ERROR_MARKER in line:
            return line.split(ERROR_MARKER, 1)[1].strip()
    return None
