"""One segmentation run: ``fbanet segment`` in a background process, polled from the GUI.

:class:`SegmentationJob` exports the volume, starts the worker, turns its JSON events into
progress and, once it is done, loads the results into the scene. Everything that touches the
scene happens inside :meth:`SegmentationJob.poll`, which the caller runs on the main thread
(from a ``qt.QTimer`` in the panel, in a loop in scripts and tests). Qt-free.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fbanet.cli.jobs import WorkerJob
from fbanet.protocol import Event, JobState, event_kind

from . import logic

logger = logging.getLogger(__name__)


class SegmentationError(RuntimeError):
    """The worker failed; the message is the worker's own (no traceback)."""


@dataclass(frozen=True)
class SegmentationOptions:
    """What to run.

    Attributes:
        modelPath: The fbanet model file.
        device: ``auto``, ``cuda``, ``mps`` or ``cpu``.
        largestComponent: Keep only the largest connected component; None: the model's default.
        mirroring: Average over in-plane mirrored passes (``--flips axes``) or run one pass
            (``--flips none``); None: fbanet's default.
        probabilityMap: Also load the foreground probability as a volume.
        uncertaintyMap: Also load the decoders' disagreement as a volume.
    """

    modelPath: Path
    device: str = "auto"
    largestComponent: bool | None = None
    mirroring: bool | None = None
    probabilityMap: bool = False
    uncertaintyMap: bool = False


@dataclass
class SegmentationResult:
    """What a finished run added to the scene."""

    segmentationNode: Any
    segmentIds: list[str]
    probabilityNode: Any | None = None
    uncertaintyNode: Any | None = None
    seconds: float = 0.0


@dataclass
class JobStatus:
    """Where a job stands; ``fraction`` is None until the worker reports its first pass."""

    state: JobState = JobState.IDLE
    done: int = 0
    total: int = 0
    result: SegmentationResult | None = None
    log: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float | None:
        """Done, 0..1 (None before the first progress event)."""
        return self.done / self.total if self.total else None


def segmentArguments(
    inputPath: str | Path,
    outputPath: str | Path,
    options: SegmentationOptions,
    roiBox: tuple[int, ...] | None = None,
) -> list[str]:
    """The ``fbanet`` arguments (after the program) for one segmentation."""
    args = ["segment", str(inputPath), "-o", str(outputPath), "-m", str(options.modelPath)]
    args += ["--device", options.device, "--json"]
    if options.largestComponent is not None:
        args.append("--largest-component" if options.largestComponent else "--no-largest-component")
    if options.mirroring is not None:
        args += ["--flips", "axes" if options.mirroring else "none"]
    if options.probabilityMap:
        args.append("--probability")
    if options.uncertaintyMap:
        args.append("--uncertainty")
    if roiBox is not None:
        args += ["--roi", *[str(int(v)) for v in roiBox]]
    return args


class SegmentationJob(WorkerJob):
    """Segment ``volumeNode`` with ``options``; results go into ``outputSegmentation`` (or new).

    Args:
        volumeNode: Scalar volume to segment (in a scene).
        options: Model and settings.
        roiNode: Optional markups ROI; only the voxels inside are segmented.
        outputSegmentation: Segmentation node to put the segments in (segments of the same
            name are replaced); None, or a node FBANet made for another volume, creates
            "<volume> FBANet" (:func:`logic.outputSegmentationFor`).
        python: Interpreter for the worker (default: PythonSlicer, or this Python).
        workDir: Parent folder for the job's temporary files (default: the system's).
    """

    def __init__(
        self,
        volumeNode: Any,
        options: SegmentationOptions,
        roiNode: Any | None = None,
        outputSegmentation: Any | None = None,
        python: str | None = None,
        workDir: str | Path | None = None,
    ) -> None:
        if volumeNode is None:
            raise ValueError("select an input volume")
        super().__init__([], python)
        self.volumeNode = volumeNode
        self.options = options
        self.roiNode = roiNode
        self.outputSegmentation = logic.outputSegmentationFor(volumeNode, outputSegmentation)
        self.workDir = Path(workDir) if workDir else None
        self.status = JobStatus()
        self._folder: Path | None = None
        self._outputs: dict[str, Any] | None = None
        self._cancelAsked = False  # once asked, nothing is added to the scene

    # -- starting ------------------------------------------------------------------------------
    def start(self) -> None:
        """Export the inputs and start the worker (returns at once)."""
        if not Path(self.options.modelPath).is_file():
            raise ValueError(f"the model file {self.options.modelPath} does not exist")
        if self.workDir is not None:
            self.workDir.mkdir(parents=True, exist_ok=True)
        self._folder = Path(tempfile.mkdtemp(prefix="FBANet-", dir=self.workDir))
        try:
            image = logic.exportVolume(self.volumeNode, self._folder / "input.nrrd")
            roi = logic.roiVoxelBox(self.roiNode, self.volumeNode) if self.roiNode else None
            output = self._folder / "segmentation.seg.nrrd"
            self.arguments = segmentArguments(image, output, self.options, roi)
            super().start()
        except Exception:
            self._cleanUp()
            raise
        self.status.state = self.state

    # -- following -----------------------------------------------------------------------------
    def handle_event(self, event: dict[str, Any]) -> None:
        kind = event_kind(event)
        if kind is Event.PROGRESS:
            self.status.done = int(event["done"])
            self.status.total = int(event["total"])
        elif kind is Event.DONE:
            self._outputs = event

    def poll(self) -> JobStatus:  # type: ignore[override]
        """Read the worker's progress; once it ended, load the results (main thread only).

        Raises:
            SegmentationError: The worker failed (its message), or its results cannot be read.
        """
        super().poll()
        self.status.state = self.state
        return self.status

    def finish(self, returncode: int) -> None:
        super().finish(returncode)
        self.status.log = self.log_lines()
        if self._cancelAsked:  # a worker that ended just before Cancel: its result is dropped
            self.state = self.status.state = JobState.CANCELLED
            self._cleanUp()
            return
        try:
            if self.state is JobState.FAILED:
                raise SegmentationError(self.error_message)
            if self.state is JobState.SUCCEEDED:
                if self._outputs is None:
                    raise SegmentationError("the worker ended without writing a segmentation")
                self.status.result = self._addResults(self._outputs)
        except Exception:
            self.state = JobState.FAILED
            raise
        finally:
            self.status.state = self.state
            self._cleanUp()

    def _addResults(self, outputs: dict[str, Any]) -> SegmentationResult:
        volume = self.volumeNode
        scene = volume.GetScene()
        name = volume.GetName()
        loaded = logic.loadSegmentationFile(scene, outputs["segmentation"], f"{name} (loading)")
        try:
            target = logic.prepareOutputSegmentation(
                volume, self.outputSegmentation, f"{name} FBANet"
            )
            segmentIds = logic.replaceSegments(loaded, target)
        finally:
            scene.RemoveNode(loaded)
        result = SegmentationResult(target, segmentIds, seconds=float(outputs["seconds"]))
        if outputs.get("probability"):
            result.probabilityNode = logic.addVolumeNextTo(
                volume,
                outputs["probability"],
                f"{name} FBANet probability",
                unitRange=True,
                kind="probability",
            )
        if outputs.get("uncertainty"):
            result.uncertaintyNode = logic.addVolumeNextTo(
                volume,
                outputs["uncertainty"],
                f"{name} FBANet uncertainty",
                unitRange=False,
                kind="uncertainty",
            )
        return result

    # -- stopping ------------------------------------------------------------------------------
    def cancel(self, grace_seconds: float = 5.0) -> None:
        """Stop the worker and everything it started; the scene is left unchanged (even when
        the worker had already ended and only its result waited to be loaded)."""
        if self.running:
            self._cancelAsked = True
            super().cancel(grace_seconds)
            self.state = JobState.CANCELLED
        self.status.state = self.state
        self.status.log = self.log_lines()
        self._cleanUp()

    def _cleanUp(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def waitForResult(
        self,
        timeout: float | None = None,
        interval: float = 0.2,
        callback: Callable[[JobStatus], None] | None = None,
    ) -> SegmentationResult:
        """Poll until the job ends (for scripts and tests); returns the result.

        Raises:
            SegmentationError: The worker failed or was cancelled.
            TimeoutError: ``timeout`` seconds passed (the worker is cancelled).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.poll()
            if callback is not None:
                callback(status)
            if status.state is JobState.SUCCEEDED and status.result is not None:
                return status.result
            if not status.state.active:
                raise SegmentationError(f"the segmentation was {status.state.value}")
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"the segmentation took longer than {timeout} s")
            time.sleep(interval)
