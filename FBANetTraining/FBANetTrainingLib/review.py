"""After training: segment the unlabeled volumes for review, and rank them for annotation.

Segmenting reuses the FBANet Segmentation module's job (one volume after another, results
named "<volume> FBANet") when that module is importable; otherwise one ``fbanet segment``
process segments every unlabeled volume the dataset export wrote. Ranking runs
``fbanet rank`` on them. Results come back into the scene as segmentation nodes and as an
"annotate these next" list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fbanet.cli.jobs import WorkerJob
from fbanet.protocol import Event, JobState, event_kind
from FBANetTrainingLib.dataset import ExportedCase, InputError

if TYPE_CHECKING:
    from FBANetTrainingLib.runner import TrainingRun
    from FBANetTrainingLib.settings import TrainingSettings


@dataclasses.dataclass(frozen=True)
class RankedVolume:
    """One row of "annotate these next"."""

    volumeNodeId: str
    name: str
    score: float
    missed: bool

    def describe(self) -> str:
        """Text for the panel."""
        if self.missed:
            return f"{self.name}: nothing found (annotate first)"
        return f"{self.name}: disagreement {self.score:.3f}"


def loadSegmentation(scene: Any, path: str | Path, volumeNode: Any, name: str) -> Any:
    """Read a ``.seg.nrrd`` into a new segmentation node on ``volumeNode``'s geometry.

    The file is only read (no storage node is kept), so saving the scene asks where to
    save the segmentation instead of writing into the temporary run folder.
    """
    import slicer

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    if not reader.ReadData(segmentation):
        scene.RemoveNode(segmentation)
        raise OSError(f"could not read the segmentation {path}")
    segmentation.CreateDefaultDisplayNodes()
    if volumeNode is not None:
        # Transform first, or the one between the two parents is baked into the geometry.
        segmentation.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    return segmentation


class SegmentJob(WorkerJob):
    """``fbanet segment`` of the dataset's unlabeled volumes in one process."""

    def __init__(
        self,
        cases: Sequence[ExportedCase],
        modelPath: str | Path,
        outFolder: str | Path,
        device: str = "auto",
        python: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cases = list(cases)
        arguments: list[str | Path] = ["segment", *[c.image for c in self.cases], "-m", modelPath]
        arguments += ["-o", outFolder, "--json", "--device", device]
        super().__init__(arguments, python, env)
        self.written: dict[str, Path] = {}  # image path -> segmentation file

    def handle_event(self, event: dict[str, Any]) -> None:
        if event_kind(event) is Event.DONE and event["segmentation"]:
            self.written[str(Path(event["image"]))] = Path(event["segmentation"])

    def loadResults(self, scene: Any) -> list[Any]:
        """Segmentation nodes ("<volume> FBANet") of every case segmented."""
        nodes = []
        for case in self.cases:
            path = self.written.get(str(case.image))
            volume = scene.GetNodeByID(case.volumeNodeId)
            if path is not None:
                name = f"{volume.GetName() if volume else case.name} FBANet"
                nodes.append(loadSegmentation(scene, path, volume, name))
        return nodes


class ModuleSegmentQueue:
    """The FBANet Segmentation module's job, run on each unlabeled volume in turn.

    It is polled like a :class:`WorkerJob` (``running``, ``state``, ``error_message``,
    ``poll``, ``cancel``, ``loadResults``).
    """

    def __init__(
        self,
        scene: Any,
        cases: Sequence[ExportedCase],
        modelPath: str | Path,
        device: str = "auto",
        python: str | None = None,
    ) -> None:
        from FBANetSegmentationLib.job import SegmentationJob, SegmentationOptions

        options = SegmentationOptions(Path(modelPath), device=device)
        self._newJob = lambda volume: SegmentationJob(volume, options, python=python)
        self.scene = scene
        found = [scene.GetNodeByID(c.volumeNodeId) for c in cases]
        self.pending = [v for v in found if v is not None]
        self.current: Any = None
        self.nodes: list[Any] = []
        self.log: list[str] = []
        self.state = JobState.IDLE
        self.error_message = ""

    @property
    def running(self) -> bool:
        return self.state.active

    def start(self) -> None:
        """Segment the first volume (poll starts the next ones).

        Never raises: a volume whose job cannot start (a model deleted or renamed, an empty
        volume, a full temporary disk) ends the queue FAILED with the job's message.
        """
        self.state = JobState.RUNNING
        self._next()

    def _next(self) -> None:
        if not self.pending:
            self.current, self.state = None, JobState.SUCCEEDED
            return
        volume = self.pending.pop(0)
        try:
            self.current = self._newJob(volume)
            self.current.start()
        except Exception as error:  # the job's own message says what is wrong
            self.current = None
            self.state = JobState.FAILED
            self.error_message = f"{volume.GetName()}: {error}"

    def poll(self) -> list[dict[str, Any]]:
        """Follow the current job; start the next when it is done."""
        if not self.running:
            return []
        try:
            status = self.current.poll()
        except Exception as error:  # the job raises its worker's message
            self.state, self.error_message = JobState.FAILED, str(error)
            return []
        if status.state is JobState.SUCCEEDED:
            self.log += status.log
            self.nodes.append(status.result.segmentationNode)
            self._next()
        elif not status.state.active:
            self.state = status.state
        return []

    def cancel(self, grace_seconds: float = 5.0) -> None:
        """Stop the current job; the volumes already segmented stay."""
        if self.running and self.current is not None:
            self.current.cancel(grace_seconds)
        self.state = JobState.CANCELLED if self.running else self.state

    def loadResults(self, scene: Any) -> list[Any]:
        """The segmentation nodes the module's jobs made."""
        return list(self.nodes)

    def log_text(self) -> str:
        return "\n".join(self.log)


class RankJob(WorkerJob):
    """``fbanet rank`` of the dataset's unlabeled volumes."""

    def __init__(
        self,
        cases: Sequence[ExportedCase],
        modelPath: str | Path,
        device: str = "auto",
        python: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cases = list(cases)
        arguments: list[str | Path] = ["rank", *[c.image for c in self.cases], "-m", modelPath]
        super().__init__([*arguments, "--json", "--device", device], python, env)
        self.rawRanking: list[dict[str, Any]] = []

    def handle_event(self, event: dict[str, Any]) -> None:
        if event_kind(event) is Event.RANKED:
            self.rawRanking = list(event["ranking"])

    def ranking(self, scene: Any) -> list[RankedVolume]:
        """The ranked volumes, most in need of annotation first, with their node names."""
        byPath = {str(Path(c.image)): c for c in self.cases}
        rows = []
        for item in self.rawRanking:
            case = byPath.get(str(Path(item.get("path") or "")))
            if case is not None:
                node = scene.GetNodeByID(case.volumeNodeId)
                name = node.GetName() if node is not None else case.name
                rows.append(RankedVolume(case.volumeNodeId, name, item["score"], item["missed"]))
        return rows


class ReviewActions:
    """The review half of the panel's logic (mixed into FBANetTrainingLogic, which sets these)."""

    scene: Any
    python: str | None
    workerEnvironment: dict[str, str]
    settings: TrainingSettings
    run: TrainingRun | None
    dataset: Any
    registeredModelPath: Path | None
    segmentJob: SegmentJob | ModuleSegmentQueue | None
    rankJob: RankJob | None
    ranking: list[RankedVolume]
    rankingVersion: int
    reviewNodes: list[Any]
    useSegmentationModule: bool
    reportedReviewJobs: set[int]

    def reviewModel(self) -> Path:
        """The model to review with: the registered one, else the run's latest."""
        if self.registeredModelPath is not None:
            return self.registeredModelPath
        model = self.run.bestModelPath() if self.run is not None else None
        if model is None:
            raise InputError("Train a model first")
        return model

    def _unlabeledCases(self, what: str) -> tuple[ExportedCase, ...]:
        cases = self.dataset.unlabeled if self.dataset is not None else ()
        if not cases:  # (none ticked, or the scene they were in was closed)
            raise InputError(f"There are no unlabeled volumes of this run in the scene to {what}")
        return cases

    def segmentUnlabeled(self) -> SegmentJob | ModuleSegmentQueue:
        """Segment the unlabeled volumes with the model, in the background (see poll)."""
        cases, model = self._unlabeledCases("segment"), self.reviewModel()
        job: SegmentJob | ModuleSegmentQueue
        try:
            if not self.useSegmentationModule:
                raise ImportError("not asked to use the FBANet Segmentation module")
            job = ModuleSegmentQueue(self.scene, cases, model, self.settings.device, self.python)
        except ImportError:
            assert self.run is not None  # reviewModel found the run's model
            out = self.run.runDir / "review"
            device, env = self.settings.device, self.workerEnvironment
            job = SegmentJob(cases, model, out, device, self.python, env)
        self.segmentJob = job
        job.start()
        return job

    def rankUnlabeled(self) -> RankJob:
        """Rank the unlabeled volumes by decoder disagreement, in the background (see poll)."""
        cases, model = self._unlabeledCases("rank"), self.reviewModel()
        device, env = self.settings.device, self.workerEnvironment
        job = self.rankJob = RankJob(cases, model, device, self.python, env)
        job.start()
        return job

    def newReviewFailures(self) -> list[str]:
        """Messages of review jobs that failed since the last call (each shown once)."""
        reported, messages = self.reportedReviewJobs, []
        for job, what in ((self.segmentJob, "Segmentation"), (self.rankJob, "Ranking")):
            if job is not None and job.state is JobState.FAILED and id(job) not in reported:
                reported.add(id(job))
                messages.append(f"{what} failed:\n{job.error_message}")
        return messages

    def _pollReview(self) -> None:
        """Follow the review jobs; a new ranking bumps ``rankingVersion`` (the panel redraws)."""
        if self.segmentJob is not None and self.segmentJob.running:
            self.segmentJob.poll()
            if self.segmentJob.state is JobState.SUCCEEDED:
                self.reviewNodes += self.segmentJob.loadResults(self.scene)
        if self.rankJob is not None and self.rankJob.running:
            self.rankJob.poll()
            if self.rankJob.state is JobState.SUCCEEDED:
                self.ranking = self.rankJob.ranking(self.scene)
                self.rankingVersion += 1
