"""The FBANetTraining panel's logic, without Qt: inputs, checks, the run, the results.

The widget (FBANetTraining.py) only copies its fields into :class:`TrainingSettings`,
calls these methods and polls :meth:`FBANetTrainingLogic.poll` from a timer. Everything
here runs under pytest with the MRML library of the slicer-core wheel.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fbanet.cli.environment import (
    TORCH_REQUIREMENT,
    missing_requirements,
    torch_problem,
)
from fbanet.protocol import JobState
from FBANetTrainingLib import dataset as datasetModule
from FBANetTrainingLib.charts import TrainingChart
from FBANetTrainingLib.dataset import Dataset, InputError, LabeledExample
from FBANetTrainingLib.lifecycle import JobLifecycle
from FBANetTrainingLib.modelfiles import copyModelFile
from FBANetTrainingLib.review import (
    ModuleSegmentQueue,
    RankedVolume,
    RankJob,
    ReviewActions,
    SegmentJob,
)
from FBANetTrainingLib.runfolders import discardRunFolder, newRunFolder, pruneRunFolders, runsRoot
from FBANetTrainingLib.runner import TrainingRun, formatDuration
from FBANetTrainingLib.settings import (
    MODEL_EXTENSION,
    TrainingSettings,
    applyParameters,
    defaultModelsFolder,
    initModelFile,
    runBatch,
    timeBudgetProblems,
    trainingArguments,
    usesFinetunePreset,
)
from FBANetTrainingLib.writer import DatasetWriter

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]*$")


class FBANetTrainingLogic(JobLifecycle, ReviewActions):
    """Labeled examples, unlabeled volumes, settings, and the training run they make."""

    def __init__(
        self,
        scene: Any = None,
        python: str | None = None,
        workerEnvironment: dict[str, str] | None = None,
        runsFolder: str | Path | None = None,
    ) -> None:
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        self.scene = scene
        self.python = python
        self.workerEnvironment = dict(workerEnvironment or {})
        self.runsFolder = Path(runsFolder) if runsFolder is not None else runsRoot()
        self.settings = TrainingSettings()
        self.labeledExamples: list[LabeledExample] = []
        # The ticked unlabeled volumes: the panel's list is a view of this, never the store.
        self.unlabeledVolumeIds: list[str] = []
        self.run: TrainingRun | None = None
        self.dataset: Dataset | None = None
        self.writer: DatasetWriter | None = None  # Start: the dataset being written first
        self.chart: TrainingChart | None = None
        self.registeredModelPath: Path | None = None
        self.registrationError = ""
        # The jobexport.ExportedJob last exported for another machine (jobexport imports this
        # module, not the other way round).
        self.exportedJob: object | None = None
        self.segmentJob: SegmentJob | ModuleSegmentQueue | None = None  # review: segmenting
        self.rankJob: RankJob | None = None  # review: ranking the unlabeled for annotation
        self.ranking: list[RankedVolume] = []
        self.rankingVersion = 0  # bumped when the ranking changes (the panel redraws then)
        self.reviewNodes: list[Any] = []
        self.reportedReviewJobs: set[int] = set()  # ids of failed review jobs already shown
        self.useSegmentationModule = True  # review through FBANet Segmentation when present
        self._closeObserver: int | None = None
        self.isStarting = False  # inside starting(): Start and Resume are refused

    # -- inputs ------------------------------------------------------------------------------
    def addLabeledExample(
        self, volumeNode: Any, segmentationNode: Any, segmentId: str
    ) -> LabeledExample:
        """Add a (volume, segmentation, segment) row; InputError if incomplete or repeated."""
        if volumeNode is None or segmentationNode is None or not segmentId:
            raise InputError(
                "Pick a volume, a segmentation and one of its segments to add an example"
            )
        example = LabeledExample(volumeNode.GetID(), segmentationNode.GetID(), segmentId)
        if example in self.labeledExamples:
            raise InputError("This (volume, segmentation, segment) is already a labeled example")
        datasetModule.resolveExample(self.scene, example, len(self.labeledExamples) + 1)
        self.labeledExamples.append(example)
        self.unlabeledVolumeIds = [i for i in self.unlabeledVolumeIds if i != example.volumeNodeId]
        return example

    def removeLabeledExample(self, index: int) -> None:
        """Remove the row ``index`` (0-based)."""
        del self.labeledExamples[index]

    def removeLabeledExamples(self, rows: list[int]) -> None:
        """Remove the rows (0-based, in any order, repeats allowed)."""
        for row in sorted(set(rows), reverse=True):
            del self.labeledExamples[row]

    def describeLabeledExample(self, example: LabeledExample) -> str:
        """'volume / segmentation / segment'."""
        return datasetModule.describeExample(self.scene, example)

    def labeledRows(self) -> list[list[str]]:
        """The labeled examples' table: [volume, segmentation, segment] names per row."""
        return [self.describeLabeledExample(e).split(" / ", 2) for e in self.labeledExamples]

    def candidateUnlabeledVolumes(self) -> list[Any]:
        """The scene's scalar volumes that may be MRI (the checkable list; no derived maps)."""
        return datasetModule.unlabeledCandidates(self.scene)

    def setUnlabeledChecked(self, volumeNodeId: str, checked: bool) -> None:
        """Tick (or untick) a volume as unlabeled; the panel calls this on every click."""
        ids = [i for i in self.unlabeledVolumeIds if i != volumeNodeId]
        self.unlabeledVolumeIds = [*ids, volumeNodeId] if checked else ids

    def unlabeledChoices(self) -> list[tuple[str, str, bool]]:
        """(node ID, name, ticked) of every candidate volume: what the panel's list shows.

        Ticks of volumes that left the scene are dropped; a new volume comes unticked.
        """
        nodes = self.candidateUnlabeledVolumes()
        present = {node.GetID() for node in nodes}
        self.unlabeledVolumeIds = [i for i in self.unlabeledVolumeIds if i in present]
        ticked = set(self.unlabeledVolumeIds)
        return [(node.GetID(), node.GetName(), node.GetID() in ticked) for node in nodes]

    def takeUnusedVolumes(self) -> list[str]:
        """Use as unlabeled every candidate volume no labeled example uses; returns their IDs."""
        used = {e.volumeNodeId for e in self.labeledExamples}
        self.unlabeledVolumeIds = [
            n.GetID() for n in self.candidateUnlabeledVolumes() if n.GetID() not in used
        ]
        return list(self.unlabeledVolumeIds)

    def checkLabeledExamples(self) -> list[str]:
        """Problems with the labeled examples (empty list: all fine)."""
        return datasetModule.checkLabeledExamples(self.scene, self.labeledExamples)

    def labeledExamplesReport(self) -> tuple[bool, str]:
        """``(all fine, text)`` for the panel's Check button."""
        problems = self.checkLabeledExamples()
        if problems:
            return False, "\n\n".join(problems)
        return True, "Every labeled example overlaps its volume and has a non-empty segment."

    # -- settings ----------------------------------------------------------------------------
    def modelsFolder(self) -> Path:
        """Where the model is registered."""
        return (
            Path(self.settings.modelsFolder)
            if self.settings.modelsFolder
            else defaultModelsFolder()
        )

    def modelPath(self) -> Path:
        """``<models folder>/<name>.safetensors``."""
        return self.modelsFolder() / f"{self.settings.modelName.strip()}{MODEL_EXTENSION}"

    def initModelFile(self) -> Path | None:
        """The model file training starts from (None: from scratch); InputError if missing."""
        return initModelFile(self.settings)  # (settings.initModelFile)

    def modelNameProblems(self, existing: bool = True) -> list[str]:
        """What is wrong with the model name (empty list: fine).

        Args:
            existing: Also refuse a name whose model exists when replacing was not allowed.
                Only what writes a model asks this (training, import), not the export of a
                job for another machine, which writes none.
        """
        s = self.settings
        if not _MODEL_NAME.match(s.modelName.strip() or "-"):
            return [
                "Model name: use letters, digits, spaces, '_', '-' or '.' (not starting with one)"
            ]
        if existing and self.modelPath().exists() and not s.replaceExisting:
            return [
                f"A model named '{s.modelName}' already exists in {self.modelsFolder()}; "
                "choose another name or allow replacing it"
            ]
        return []

    def _settingsProblems(self, existing: bool = False) -> list[str]:
        """The settings' problems; ``existing``: see :meth:`modelNameProblems`."""
        s, problems = self.settings, self.modelNameProblems(existing)
        problems += timeBudgetProblems(s)
        try:  # the fine-tune preset and the starting model set the patch and the batch
            custom, (batchSize, labeledBatchSize) = not usesFinetunePreset(s), runBatch(s)
        except InputError as error:  # an unknown choice (a script's): the fields, and why
            problems.append(str(error))
            custom, batchSize, labeledBatchSize = True, s.batchSize, s.labeledBatchSize
        if custom and any(int(side) % 16 or int(side) <= 0 for side in s.patchSize):
            problems.append(
                f"Patch size {tuple(s.patchSize)}: each side must be a positive multiple of 16"
            )
        if batchSize < 2 or not 1 <= labeledBatchSize <= batchSize:
            problems.append("Batch: at least 2 patches, of which 1 to all are labeled")
        if not self.unlabeledVolumeIds and labeledBatchSize < batchSize:
            problems.append(
                "No unlabeled volume: check some, or make every patch of the batch labeled"
            )
        count = len(self.labeledExamples)
        if count and not 0 <= s.validationCases < count:
            problems.append(
                f"Validation cases: {s.validationCases} of {count} labeled example(s) leaves "
                "none for training: add a labeled example, or set Validation cases to 0 (the "
                "run then keeps its last state, with no best validated model)"
            )
        return problems

    def checkInputs(self) -> list[str]:
        """Every problem that would stop training from starting (empty list: ready)."""
        return self.checkLabeledExamples() + self._otherProblems()

    def _otherProblems(self) -> list[str]:
        """The problems of :meth:`checkInputs` but the label maps' (those need an export)."""
        problems = self._settingsProblems(existing=True)  # training writes the model
        try:
            self.initModelFile()
        except InputError as error:
            problems.append(str(error))
        if self.busy():
            problems.append("A training run or review is in progress; wait for it or stop it")
        torch = torch_problem()
        missing = (
            [f"torch{TORCH_REQUIREMENT} ({torch})"] if torch else []
        ) + missing_requirements()
        if missing:
            problems.append(
                "Python packages FBANet needs are missing (" + ", ".join(missing) + "): press "
                "Start training, which offers to install them"
            )
        return problems

    def trainingArguments(self, manifest: str | Path) -> list[str]:
        """The ``fbanet train`` flags (without -o/--json/--stop-file/--resume)."""
        return trainingArguments(self.settings, manifest)

    # -- running -----------------------------------------------------------------------------
    def newRunFolder(self) -> Path:
        """A fresh folder for a run's dataset, checkpoints and log, under :attr:`runsFolder`.

        Run folders older than a week (left by a crash, or by another session) go first.
        """
        pruneRunFolders(self.runsFolder, keep=self.run.runDir if self.run else None)
        return newRunFolder(self.runsFolder, datasetModule.safeName(self.settings.modelName))

    def discardRun(self) -> None:
        """Delete the current run's folder (dataset copies, checkpoints) once it has ended.

        The registered model lives in the models folder and stays.
        """
        if self.run is not None and not self.run.running:
            discardRunFolder(self.run.runDir, self.runsFolder)
            self.run, self.dataset = None, None

    def startTraining(
        self, runDir: str | Path | None = None, background: bool = False
    ) -> TrainingRun:
        """Check the inputs, write the dataset and start ``fbanet train`` in the background.

        Args:
            runDir: The run folder (default: a new one under :attr:`runsFolder`).
            background: Return while the dataset is being written (the panel: its timer's
                :meth:`poll` writes it and then starts the run; Stop cancels it). Otherwise
                the dataset is written first and the run has started on return.

        Raises:
            InputError: What to fix (every problem, one per line); nothing was started.
        """
        problems = self._otherProblems()
        if problems:  # the cheap checks failed: check the label maps too, but export nothing
            raise InputError("\n".join(self.checkLabeledExamples() + problems))
        self.discardRun()  # the previous run's copies of the scene are not needed any more
        chosen = runDir is not None
        runDir = Path(runDir) if runDir is not None else self.newRunFolder()
        try:  # the label maps are checked as they are written: once each
            self.writer = DatasetWriter(
                self.scene, self.labeledExamples, self.unlabeledVolumeIds, runDir / "dataset",
                self.settings.validationCases,
            )  # fmt: skip
            arguments = self.trainingArguments(self.writer.manifest)
            if not background:
                self.writer.wait()
        except (InputError, OSError):
            self.writer = None
            if not chosen:
                discardRunFolder(runDir, self.runsFolder)
            raise
        self.run = TrainingRun(runDir, arguments, self.python, self.workerEnvironment)
        self.registeredModelPath, self.registrationError = None, ""
        self.ranking, self.rankingVersion = [], self.rankingVersion + 1
        if self.chart is not None:
            self.chart.clear()
        self._pollWriter()  # written: the run starts; in the background: the first copies
        return self.run

    def resumeTraining(self) -> TrainingRun:
        """Continue the stopped run from its latest checkpoint, in the same run folder."""
        if self.run is None or not self.run.canResume:
            raise InputError("There is no stopped run to resume")
        if self.isStarting or self.busy():
            raise InputError("Training is already starting or running; wait for it")
        self.run.resume()
        return self.run

    def poll(self) -> list[dict[str, Any]]:
        """Follow the background jobs (chart, progress, completion); returns new training events."""
        events: list[dict[str, Any]] = []
        self._pollWriter()
        if self.run is not None:
            wasRunning, charting = self.run.running, self.run.state is JobState.RUNNING
            events = self.run.poll()
            if events and (self.chart is not None or charting):
                if self.chart is None:  # (none for a run stopping after its scene closed)
                    self.chart = TrainingChart(self.scene)
                self.chart.addEvents(events)
            if wasRunning and self.run.state is JobState.SUCCEEDED:
                try:
                    self.registerModel()
                except (OSError, InputError) as error:
                    self.registrationError = f"The model could not be registered: {error}"
        self._pollReview()
        return events

    def registerModel(self) -> Path:
        """Copy the run's best model to ``<models folder>/<name>.safetensors`` atomically.

        The copy is written to a hidden temporary name first (``fbanet.io.atomic``), so a
        panel listing the models never sees a half-written one.
        """
        source = self.run.bestModelPath() if self.run is not None else None
        if source is None:
            raise InputError("The run has written no model yet")
        target = copyModelFile(source, self.modelPath())
        self.registeredModelPath = target
        return target

    def applyPanelSettings(self, parameters: Any) -> Path | None:
        """Copy the panel's parameter node into the settings; the model file its name would
        replace, if one exists (replacing is allowed once the user agrees)."""
        applyParameters(self.settings, parameters)
        target = self.modelPath()
        self.settings.replaceExisting = target.exists()
        return target if target.exists() else None

    def summary(self) -> str:
        """Text for the panel once the run has ended."""
        if self.run is None:
            return ""
        p = self.run.progress
        lines = [f"Iterations: {p.iteration}", f"Time: {formatDuration(p.seconds)}"]
        if p.bestDice is not None:
            lines.append(f"Best validation Dice: {p.bestDice:.3f}")
        if self.registeredModelPath is not None:
            lines.append(f"Model: {self.registeredModelPath}")
        return "\n".join(lines)

    def buttonStates(self) -> dict[str, bool]:
        """Which of the panel's buttons are enabled now (widget name -> enabled)."""
        run, busy = self.run, self.busy() or self.isStarting
        trained = run is not None and run.bestModelPath() is not None and not busy
        return {
            "startButton": not busy,
            "stopButton": self.writing() or (run is not None and run.state is JobState.RUNNING),
            "resumeButton": run is not None and run.canResume and not busy,
            "segmentUnlabeledButton": trained,
            "rankButton": trained,
            "copyLogButton": run is not None,
            # Another machine: an import while a run is busy could race its registration.
            "exportJobButton": not busy,
            "importModelButton": not busy,
            "copyCommandButton": self.exportedJob is not None,
        }
