"""Segmenting a cohort: many scans spread over the available devices, one worker each.

Each worker (a thread: the heavy work runs in PyTorch, which releases the GIL) loads its
own :class:`~fbanet.infer.segmenter.Segmenter` on its device and takes the next scan from
a shared queue, so fast devices take more scans. A scan that fails is reported and the
others go on; the outcomes come back in input order.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fbanet.infer.files import SegmentOutputs

logger = logging.getLogger(__name__)

# What a failed scan may raise without stopping the others: bad input (a value, a missing
# or corrupt file) and failures of the machine (disk, device memory). Anything else is a
# bug and ends the run.
CASE_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError)


class CancelledRunError(Exception):
    """Raised inside a worker (from a progress callback) once the run was interrupted."""


def check_cancelled(cancel: threading.Event | None) -> None:
    """Raise :class:`CancelledRunError` when ``cancel`` is set (call it between windows)."""
    if cancel is not None and cancel.is_set():
        raise CancelledRunError("interrupted")


@dataclasses.dataclass(frozen=True)
class CaseJob:
    """One scan to segment.

    Attributes:
        index: Position among the inputs (outcomes keep this order).
        image: The scan file.
        output: Its segmentation file.
        preview: Its preview PNG, if any.
    """

    index: int
    image: Path
    output: Path
    preview: Path | None = None


@dataclasses.dataclass(frozen=True)
class CaseOutcome:
    """What became of one scan.

    Attributes:
        job: The scan.
        device: The worker's device.
        outputs: The files written (None when it failed).
        error: Why it failed (None when it did not).
        bad_input: Whether the failure is the input's (a value or a missing file).
        exception: The exception of a failure.
    """

    job: CaseJob
    device: str
    outputs: SegmentOutputs | None = None
    error: str | None = None
    bad_input: bool = False
    exception: BaseException | None = None

    @property
    def ok(self) -> bool:
        """Whether the scan was segmented."""
        return self.error is None


def parse_devices(spec: str | None, fallback: str = "cpu") -> list[str]:
    """Worker devices: ``"0,1,3"`` (CUDA indices) or ``"cpu"``, or every GPU when None.

    Without a spec and without CUDA GPUs, one worker on ``fallback``.

    Raises:
        ValueError: A malformed spec, an index this machine does not have, or a repeat.
    """
    count = torch.cuda.device_count()
    if spec is None:
        return [f"cuda:{i}" for i in range(count)] if count else [fallback]
    if spec.strip().lower() == "cpu":
        return ["cpu"]
    try:
        indices = [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"--devices must be CUDA indices separated by commas (e.g. 0,1,2,3) or 'cpu', "
            f"got {spec!r}"
        ) from None
    if len(set(indices)) != len(indices):
        raise ValueError(f"--devices lists a GPU twice: {spec!r}")
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise ValueError(
            f"--devices {spec!r}: this machine has {count} CUDA GPU(s) (indices 0..{count - 1}), "
            f"not {bad}; list available ones or use --device cpu"
        )
    return [f"cuda:{i}" for i in indices]


def use_device(device: str) -> None:
    """Make ``device`` this thread's current CUDA device (``cuda`` then means it)."""
    if device.startswith("cuda:"):
        torch.cuda.set_device(int(device.split(":")[1]))


def segment_cohort(
    jobs: Sequence[CaseJob],
    devices: Sequence[str],
    load: Callable[[str], Any],
    segment: Callable[[Any, CaseJob, str], SegmentOutputs],
    on_outcome: Callable[[CaseOutcome], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[CaseOutcome]:
    """Segment ``jobs`` with one worker per device; the outcomes in input order.

    One device: the worker runs in the calling thread. Several: on Ctrl-C ``cancel`` is set,
    ``segment`` stops at its next window (:func:`check_cancelled`), every worker is joined
    and the interrupt raised again: no thread outlives the call.

    Args:
        jobs: The scans.
        devices: One worker per entry (e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu"]``).
        load: Builds a worker's segmenter, called in that worker with its device current.
        segment: Segments one scan with a worker's segmenter on its device.
        on_outcome: Called (from the workers, one at a time) as each scan ends.
        cancel: Set on Ctrl-C (a new event when None).

    Raises:
        Whatever ``load`` raises in a worker (a model that cannot load fails them all), or
        an error outside :data:`CASE_ERRORS` from ``segment`` (a bug), once all have stopped.
    """
    if not devices:
        raise ValueError("no device to segment on")
    cancel = cancel if cancel is not None else threading.Event()
    pending: queue.Queue[CaseJob] = queue.Queue()
    for job in jobs:
        pending.put(job)
    outcomes: dict[int, CaseOutcome] = {}
    failures: list[BaseException] = []
    lock = threading.Lock()

    def report(outcome: CaseOutcome) -> None:
        with lock:
            outcomes[outcome.job.index] = outcome
            if on_outcome is not None:
                on_outcome(outcome)

    def work(device: str) -> None:
        try:
            use_device(device)
            segmenter = load(device)
            while not failures and not cancel.is_set():
                try:
                    job = pending.get_nowait()
                except queue.Empty:
                    return
                report(_run_one(segment, segmenter, job, device, log=len(jobs) > 1))
        except BaseException as error:  # re-raised in the caller's thread
            failures.append(error)

    if len(devices) == 1:
        # One worker runs in the calling thread: Ctrl-C interrupts it directly, and no
        # thread of ours is left to finish its C++ teardown while Python exits.
        work(devices[0])
    else:
        _run_threads(work, devices, cancel)
    if failures:
        raise failures[0]
    return [outcomes[job.index] for job in jobs]


def _run_threads(
    work: Callable[[str], None], devices: Sequence[str], cancel: threading.Event
) -> None:
    """One thread per device; on Ctrl-C, set ``cancel`` and join them all before re-raising."""
    threads = [threading.Thread(target=work, args=(d,), name=f"fbanet-{d}") for d in devices]
    try:
        for thread in threads:
            thread.start()
        _join(threads)
    except KeyboardInterrupt:
        cancel.set()
        _join(threads, interruptible=False)
        raise


def _join(threads: Sequence[threading.Thread], interruptible: bool = True) -> None:
    """Wait for every thread; in short waits, so that Ctrl-C reaches the calling thread."""
    for thread in threads:
        while thread.is_alive():
            try:
                thread.join(0.1)
            except KeyboardInterrupt:
                if interruptible:
                    raise


def _run_one(
    segment: Callable[[Any, CaseJob, str], SegmentOutputs], segmenter: Any, job: CaseJob,
    device: str, log: bool,
) -> CaseOutcome:  # fmt: skip
    """One scan's outcome; ``log`` reports a failure as it happens (one of several scans; a
    lone scan's error is the command's own error line)."""
    try:
        return CaseOutcome(job, device, outputs=segment(segmenter, job, device))
    except CASE_ERRORS as error:
        if log:
            logger.error("%s failed on %s: %s", job.image, device, error)
        bad_input = isinstance(error, (ValueError, FileNotFoundError))
        return CaseOutcome(job, device, error=str(error) or type(error).__name__,
                           bad_input=bad_input, exception=error)  # fmt: skip


def failure_summary(outcomes: Sequence[CaseOutcome]) -> str | None:
    """One message naming every failed scan and why, or None when all succeeded."""
    failed = [o for o in outcomes if not o.ok]
    if not failed:
        return None
    lines = [f"{len(failed)} of {len(outcomes)} scan(s) failed:"]
    lines += [f"  {o.job.image}: {o.error}" for o in failed]
    return "\n".join(lines)
