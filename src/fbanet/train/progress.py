"""Progress reporting and stop requests for long runs.

Progress goes to a terminal bar and to JSON lines (one object per event) that another
process, such as the Slicer panel, can follow. A stop request comes from SIGINT/SIGTERM or
from a stop file appearing; the run ends at the next iteration with a checkpoint written.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

from tqdm import tqdm

from fbanet.io.volumes import atomic_write
from fbanet.protocol import Event, make_event

logger = logging.getLogger(__name__)


class StopRequest:
    """A flag set by a signal handler or by a stop file.

    Args:
        stop_file: If given, the run stops once this file exists.
    """

    def __init__(self, stop_file: str | Path | None = None) -> None:
        self.stop_file = Path(stop_file) if stop_file is not None else None
        self._requested = False
        self._previous: dict[int, Any] = {}

    def request(self) -> None:
        """Ask the run to stop at the next iteration."""
        self._requested = True

    @property
    def requested(self) -> bool:
        """Whether a stop was requested (by call, signal or stop file)."""
        if not self._requested and self.stop_file is not None and self.stop_file.exists():
            logger.info("stop file %s found", self.stop_file)
            self._requested = True
        return self._requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        logger.warning("received signal %d: stopping after this iteration", signum)
        self._requested = True

    def install_signal_handlers(self) -> None:
        """Route SIGINT and SIGTERM to this request (main thread only)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore_signal_handlers(self) -> None:
        """Put back the handlers that were there before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    # A plain request has no time budget; :class:`TimeBudget` overrides these.
    def start(self) -> None:
        """Training starts now (the budget's clock starts)."""

    @property
    def spent(self) -> bool:
        """Whether the run stops because its time budget is spent."""
        return False

    def validation_due(self) -> bool:
        """Whether the budget asks for a validation now, beyond ``validate_every``."""
        return False

    def validated(self) -> None:
        """A validation was just run."""


class TimeBudget(StopRequest):
    """Stops training once ``seconds`` have passed, and asks for a validation every fifth.

    So a short run is validated at least five times and its best model is never older than a
    fifth of the budget. One process only: under torchrun the processes' clocks would
    disagree about when to validate.

    Args:
        seconds: The budget, from :meth:`start` (the first step), not counting data loading.
        stop_file: Also stop once this file exists.
        clock: Seconds (monotonic); a fake one in tests.
    """

    PARTS = 5

    def __init__(
        self,
        seconds: float,
        stop_file: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(stop_file)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
            raise ValueError(f"--time-budget must be a number of seconds > 0, got {seconds!r}")
        self.seconds = float(seconds)
        self._clock = clock
        self._started: float | None = None
        self._last_validation = 0.0

    def start(self) -> None:
        self._started = self._last_validation = self._clock()

    @property
    def spent(self) -> bool:
        return self._started is not None and self._clock() - self._started >= self.seconds

    @property
    def requested(self) -> bool:
        return super().requested or self.spent

    def validation_due(self) -> bool:
        return (
            self._started is not None
            and self._clock() - self._last_validation >= self.seconds / self.PARTS
        )

    def validated(self) -> None:
        self._last_validation = self._clock()


def truncate_progress(path: str | Path, iteration: int) -> int:
    """Drop the events after ``iteration`` (and torn lines) from a ``progress.jsonl``.

    A resumed run continues from its checkpoint; the iterations a killed run logged after
    that checkpoint are done again, so their old lines must go, or they would appear twice.

    Returns:
        The number of lines removed.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
            keep = isinstance(event, dict) and int(event.get("iteration", 0)) <= iteration
        except (ValueError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        text = "".join(f"{line}\n" for line in kept)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        logger.info("progress log cut back to iteration %d (%d lines after it)", iteration, dropped)
    return dropped


class ProgressReporter:
    """Reports iterations to a progress bar and JSON lines.

    Args:
        total: Iterations of the run.
        start: Iterations already done (when resuming).
        jsonl_path: File to append JSON lines to (the run folder's ``progress.jsonl``).
        json_stream: Also write JSON lines here (for example stdout), if given.
        show_bar: Show a terminal progress bar.
        clock: Time source, replaceable in tests.
    """

    def __init__(
        self,
        total: int,
        start: int = 0,
        jsonl_path: str | Path | None = None,
        json_stream: IO[str] | None = None,
        show_bar: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.start = start
        self.clock = clock
        self._t0 = clock()
        self._jsonl = open(jsonl_path, "a", encoding="utf-8") if jsonl_path else None  # noqa: SIM115
        self._stream = json_stream
        self._bar = (
            tqdm(total=total, initial=start, dynamic_ncols=True, file=sys.stderr)
            if show_bar
            else None
        )

    def eta_seconds(self, iteration: int) -> float:
        """Seconds left, from the mean speed since this reporter started."""
        done = iteration - self.start
        if done <= 0:
            return math.nan
        return (self.clock() - self._t0) / done * (self.total - iteration)

    def emit(self, event: dict[str, Any]) -> None:
        """Write one JSON line to the file and the stream."""
        line = json.dumps(event, allow_nan=True)
        for handle in (self._jsonl, self._stream):
            if handle is not None:
                handle.write(line + "\n")
                handle.flush()

    def iteration(self, iteration: int, values: dict[str, float], lr: float) -> None:
        """Report a finished iteration (1-based count of iterations done)."""
        eta = self.eta_seconds(iteration)
        self.emit(
            make_event(Event.ITERATION, iteration=iteration, total=self.total, lr=lr,
                       eta_s=None if math.isnan(eta) else round(eta, 1), **values)
        )  # fmt: skip
        if self._bar is not None:
            self._bar.update(iteration - self._bar.n)
            shown = {k: f"{v:.3f}" for k, v in values.items() if k.endswith("loss")}
            self._bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        """Close the bar and the JSON lines file."""
        if self._bar is not None:
            self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
