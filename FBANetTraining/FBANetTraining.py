"""FBANet Training: semi-supervised fine-tuning of FBA-Net on the volumes in the scene.

A thin panel: its Qt-free logic (FBANetTrainingLib) writes the dataset, runs ``fbanet train``
in a background process and follows it; this file binds the widgets to it.
"""

import logging
import pathlib
from typing import Annotated

import qt
import slicer
import vtk
from FBANetTrainingLib import jobexport
from FBANetTrainingLib import logic as trainingLogic
from FBANetTrainingLib import settings as trainingSettings
from FBANetTrainingLib.runner import LogFollower
from FBANetTrainingLib.settings import SettingsChoice, StartChoice, applyParameters
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from fbanet.cli import environment
from fbanet.cli.environment import DeviceChoice
from fbanet_slicer.host import (
    DOCUMENTATION_URL,
    ReportsSkippedSelfTest,
    SlicerInstaller,
    refreshSegmentationModels,
    skipWithoutDependencies,
    user_error_display,
)

POLL_INTERVAL_MS = 500
# Each push button of the .ui and the method its clicked(bool) signal calls.
BUTTON_HANDLERS = {
    "addLabeledButton": "onAddLabeled", "removeLabeledButton": "onRemoveLabeled",
    "checkLabeledButton": "onCheckLabeled", "takeUnusedButton": "onTakeUnused",
    "startButton": "onStart", "stopButton": "onStop", "resumeButton": "onResume",
    "copyLogButton": "onCopyLog", "showChartButton": "onShowChart",
    "segmentUnlabeledButton": "onSegmentUnlabeled", "rankButton": "onRank",
    "exportJobButton": "onExportJob", "copyCommandButton": "onCopyCommand",
    "importModelButton": "onImportModel",
}  # fmt: skip
LEARNING_RATE_MINIMUM = 1e-6  # the .ui spin box shows 6 decimals, so this is not 0


class FBANetTraining(ReportsSkippedSelfTest, ScriptedLoadableModule):
    """Module description (Slicer's module registry reads it)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("FBANet Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["FBANet developers"]
        self.parent.helpText = _(
            "Fine-tune FBA-Net (left-atrium segmentation) on the volumes of the scene: a few "
            "segmented volumes as labeled examples, unsegmented ones as unlabeled volumes. It "
            "trains in the background (Stop keeps a checkpoint, Resume continues); the model "
            "appears in FBANet Segmentation. On a CPU, 'Train for 10 minutes' with the Fine-tune "
            "settings (labeled examples alone: unlabeled volumes did not help within 10 minutes), "
            "with one labeled example held out for validation so that the best state is kept; "
            'from scratch needs a GPU. See the <a href="{url}">documentation</a>.'
        ).format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _(
            "FBA-Net: Chung et al., 'Foreground-Background Separation Semi-Supervised "
            "Segmentation' (MICCAI 2023)."
        )


@parameterNodeWrapper
class FBANetTrainingParameterNode:
    """The panel's settings, saved with the scene."""

    labeledVolume: vtkMRMLScalarVolumeNode
    startFrom: StartChoice = StartChoice.DEFAULT
    initModelPath: pathlib.Path
    settingsChoice: SettingsChoice = SettingsChoice.FINETUNE  # (from scratch: the fields)
    useTimeBudget: bool = True
    trainMinutes: Annotated[float, WithinRange(1, 100000)] = 10.0
    iterations: Annotated[int, WithinRange(1, 1000000)] = 1000
    patchSizeX: Annotated[int, WithinRange(16, 512)] = 112
    patchSizeY: Annotated[int, WithinRange(16, 512)] = 112
    patchSizeZ: Annotated[int, WithinRange(16, 512)] = 80
    batchSize: Annotated[int, WithinRange(2, 64)] = 4
    labeledBatchSize: Annotated[int, WithinRange(1, 64)] = 2
    learningRate: Annotated[float, WithinRange(LEARNING_RATE_MINIMUM, 1.0)] = 0.01
    validationCases: Annotated[int, WithinRange(0, 100)] = 1
    validateEvery: Annotated[int, WithinRange(1, 100000)] = 100
    device: DeviceChoice = DeviceChoice.AUTO
    modelName: str = "LeftAtriumFineTuned"
    jobFolder: pathlib.Path  # another machine: where the exported job goes
    jobGpusPerNode: Annotated[int, WithinRange(1, 1024)] = 1
    jobNodes: Annotated[int, WithinRange(1, 1024)] = 1


class FBANetTrainingLogic(trainingLogic.FBANetTrainingLogic, ScriptedLoadableModuleLogic):
    """The Qt-free logic plus Slicer's parameter node."""

    def __init__(self, scene=None):
        ScriptedLoadableModuleLogic.__init__(self)
        trainingLogic.FBANetTrainingLogic.__init__(self, scene or slicer.mrmlScene)

    def getParameterNode(self):
        return FBANetTrainingParameterNode(super().getParameterNode())


class FBANetTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = self._parameterNodeGuiTag = None
        self._reportedState = self._shownChart = self._shownRanking = None
        self._logFollower = LogFollower()
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/FBANetTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = FBANetTrainingLogic()
        self.logic.observeScene()  # closing the scene stops training (checkpoint kept)
        scene = slicer.mrmlScene
        # The unlabeled list, a view of the logic's ticks, is rebuilt on scene changes.
        self.addObserver(scene, scene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(scene, scene.EndCloseEvent, self.onSceneEndClose)
        for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent):
            self.addObserver(scene, event, self.updateUnlabeledList)
        self.ui.unlabeledList.connect("itemChanged(QListWidgetItem*)", self.onUnlabeledItemChanged)
        slicer.app.connect("aboutToQuit()", self.onAboutToQuit)
        self.timer.connect("timeout()", self.onTimer)
        for button, handler in BUTTON_HANDLERS.items():
            getattr(self.ui, button).connect("clicked(bool)", getattr(self, handler))
        self.ui.rankingList.connect(
            "itemDoubleClicked(QListWidgetItem*)", self.onRankingDoubleClicked
        )
        self.initializeParameterNode()
        self.updateUnlabeledList()
        self.updateButtons()

    def cleanup(self):  # reload or exit (Slicer may unload before calling onAboutToQuit)
        self.timer.stop()
        if self.logic is not None:
            self.logic.shutDown()  # a few seconds at most; again from onAboutToQuit: no-op
            self.logic.stopObservingScene()
        self.removeObservers()
        slicer.app.disconnect("aboutToQuit()", self.onAboutToQuit)

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.setParameterNode(self._parameterNode, connect=False)

    def onAboutToQuit(self):
        self.timer.stop()
        self.logic.shutDown()

    def onSceneStartClose(self, caller, event):
        # The logic's own observer asked training to stop: the timer follows it to the end.
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()
        self.updateLabeledTable()
        self.updateUnlabeledList()
        self.updateReview()  # the ranking of the closed scene's volumes is gone
        self.updateButtons()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        self.ui.modelsFolderPathLabel.text = str(self.logic.modelsFolder())

    def setParameterNode(self, parameterNode, connect=True):
        modified = vtk.vtkCommand.ModifiedEvent
        if self._parameterNode and self._parameterNodeGuiTag is not None:  # once (see exit)
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, modified, self.updateSettingsFields)
        self._parameterNode, self._parameterNodeGuiTag = parameterNode, None
        if self._parameterNode and connect:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, modified, self.updateSettingsFields)
            self.updateSettingsFields()

    def updateSettingsFields(self, caller=None, event=None):  # the fine-tune preset's are off
        for name, enabled in trainingSettings.panelFieldStates(self._parameterNode).items():
            getattr(self.ui, name).enabled = enabled

    def onAddLabeled(self):
        volume, seg = self.ui.labeledVolumeSelector.currentNode(), self.ui.labeledSegmentSelector
        with user_error_display(_("Cannot add this labeled example.")):
            self.logic.addLabeledExample(volume, seg.currentNode(), seg.currentSegmentID())
        self.updateLabeledTable()
        self.updateUnlabeledList()

    def onRemoveLabeled(self):
        # (selectedIndexes() is protected in QAbstractItemView: not callable from Python.)
        selected = self.ui.labeledTable.selectionModel().selectedRows()
        self.logic.removeLabeledExamples([index.row() for index in selected])
        self.updateLabeledTable()

    def onCheckLabeled(self):
        fine, text = self.logic.labeledExamplesReport()
        show = slicer.util.infoDisplay if fine else slicer.util.warningDisplay
        show(text, windowTitle="Labeled examples")

    def onTakeUnused(self):
        self.logic.takeUnusedVolumes()
        self.updateUnlabeledList()

    def onUnlabeledItemChanged(self, item):
        ticked = item.checkState() == qt.Qt.Checked
        self.logic.setUnlabeledChecked(item.data(qt.Qt.UserRole), ticked)

    def updateLabeledTable(self):
        rows = self.logic.labeledRows()
        self.ui.labeledTable.setRowCount(len(rows))
        for row, texts in enumerate(rows):
            for column, text in enumerate(texts):
                self.ui.labeledTable.setItem(row, column, qt.QTableWidgetItem(text))

    def updateUnlabeledList(self, caller=None, event=None):
        listWidget = self.ui.unlabeledList
        wasBlocked = listWidget.blockSignals(True)  # rebuilding is not the user ticking
        listWidget.clear()
        for nodeId, name, ticked in self.logic.unlabeledChoices():
            item = qt.QListWidgetItem(name, listWidget)  # (added to the list)
            item.setData(qt.Qt.UserRole, nodeId)
            item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Checked if ticked else qt.Qt.Unchecked)
        listWidget.blockSignals(wasBlocked)

    def confirmReplace(self):
        """Copy the panel's settings; False when the user keeps an existing model of the name."""
        target = self.logic.applyPanelSettings(self._parameterNode)
        ask = _("Replace the model {path}?").format(path=target)
        return target is None or slicer.util.confirmYesNoDisplay(ask)

    def onStart(self):
        if not self.confirmReplace():
            return
        # Installing lets Qt process clicks: starting() refuses a second Start. The install
        # question comes with the normal cursor; the dataset is written in the background.
        with user_error_display(_("Cannot start training.")), self.logic.starting():
            self.updateButtons()
            if environment.ensure_dependencies(SlicerInstaller()):
                with slicer.util.WaitCursor():  # the checks (the files: on the timer)
                    self.logic.startTraining(background=True)
        self.updateButtons()
        if self.logic.busy() and self.logic.run is not None:  # (writing the dataset first)
            self.ui.summaryLabel.text = _("Run folder: {f}").format(f=self.logic.run.runDir)
            self._reportedState = None
            self.timer.start()

    def onStop(self):
        self.logic.requestStop()
        self.updateButtons()

    def onResume(self):
        with user_error_display(_("Cannot resume training."), wait_cursor=True):
            self.logic.resumeTraining()
            self._reportedState = None
            self.timer.start()
        self.updateButtons()

    def onTimer(self):
        try:
            self.logic.poll()
        except Exception as error:  # never let a timer callback raise repeatedly
            logging.exception("FBANet training: polling failed")
            self.timer.stop()
            slicer.util.errorDisplay(f"Following the training failed: {error}")
        self.updateProgress()
        self.updateReview()
        if not self.logic.busy():
            self.timer.stop()
        self.updateButtons()

    def updateProgress(self):
        run = self.logic.run
        if run is None:
            return
        value, maximum, self.ui.statusLabel.text = self.logic.progressView()
        self.ui.progressBar.maximum, self.ui.progressBar.value = maximum, value
        if self.logic.writing():
            return  # (Stop cancels the writing; the run starts after it)
        restart, lines = self._logFollower.update(run)
        if restart:
            self.ui.logTextEdit.clear()
        if lines:  # the view keeps its last lines (maximumBlockCount) and scrolls along
            self.ui.logTextEdit.appendPlainText("\n".join(lines))
        chartNode = self.logic.chart.chartNode if self.logic.chart is not None else None
        if chartNode is not None and chartNode is not self._shownChart:
            self._shownChart = chartNode
            self.onShowChart()
        if run.running or run.state == self._reportedState:
            return
        self._reportedState = run.state
        self.ui.summaryLabel.text, error, refresh = self.logic.endOfRunReport()
        if error:
            slicer.util.errorDisplay(error, windowTitle="FBANet training")
        if refresh:
            refreshSegmentationModels()  # an open FBANet Segmentation lists it at once

    def onShowChart(self):
        chart = self.logic.chart
        if chart is not None and chart.chartNode is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart.chartNode)

    def onCopyLog(self):
        qt.QApplication.clipboard().setText(self.logic.run.log_text() if self.logic.run else "")

    def updateButtons(self):
        for name, enabled in self.logic.buttonStates().items():
            getattr(self.ui, name).enabled = enabled

    def onExportJob(self):
        applyParameters(self.logic.settings, self._parameterNode)
        folder = self._parameterNode.jobFolder  # (unset: '.', which the export refuses)
        gpus, nodes = self._parameterNode.jobGpusPerNode, self._parameterNode.jobNodes
        with user_error_display(_("Cannot export the training job."), wait_cursor=True):
            job = jobexport.exportTrainingJob(self.logic, folder, gpus, nodes)
            self.ui.jobCommandTextEdit.setPlainText(jobexport.commandText(job))
            self.ui.jobNoteLabel.text = jobexport.exportNote(job)
        self.updateButtons()

    def onCopyCommand(self):
        qt.QApplication.clipboard().setText(self.ui.jobCommandTextEdit.toPlainText())

    def onImportModel(self):
        path = qt.QFileDialog.getOpenFileName(
            self.parent, _("Import trained model"), "", jobexport.MODEL_FILE_FILTER
        )
        if not path or not self.confirmReplace():
            return
        with user_error_display(_("Cannot import the model.")):
            target, header = jobexport.importTrainedModel(self.logic, path)
            self.ui.importSummaryLabel.text = jobexport.importSummary(target, header)
            refreshSegmentationModels()  # an open FBANet Segmentation lists it at once

    def onSegmentUnlabeled(self):
        self._startReview(self.logic.segmentUnlabeled, _("segment"), _("Segmenting"))

    def onRank(self):
        self._startReview(self.logic.rankUnlabeled, _("rank"), _("Ranking"))

    def _startReview(self, start, verb, doing):
        failure = _("Cannot {verb} the unlabeled volumes.").format(verb=verb)
        with user_error_display(failure, wait_cursor=True):
            start()
            self.ui.statusLabel.text = _("{doing} the unlabeled volumes...").format(doing=doing)
            self.timer.start()
        self.updateButtons()

    def updateReview(self):
        for message in self.logic.newReviewFailures():
            slicer.util.errorDisplay(message)
        if self._shownRanking == self.logic.rankingVersion:
            return  # rebuilding would lose the selection and break double-clicks
        self._shownRanking = self.logic.rankingVersion
        self.ui.rankingList.clear()
        for row in self.logic.ranking:
            item = qt.QListWidgetItem(row.describe(), self.ui.rankingList)  # (added to it)
            item.setData(qt.Qt.UserRole, row.volumeNodeId)

    def onRankingDoubleClicked(self, item):
        node = slicer.mrmlScene.GetNodeByID(item.data(qt.Qt.UserRole))
        if node is not None:
            slicer.util.setSliceViewerLayers(background=node, fit=True)


class FBANetTrainingTest(ScriptedLoadableModuleTest):
    """Runs the panel's logic on a synthetic scene for a few iterations."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_TrainingOnSyntheticScene()

    def test_TrainingOnSyntheticScene(self):
        from FBANetTrainingLib.selftest import runModuleSelfTest

        skipWithoutDependencies(self)  # a self-test never installs (PyTorch is several GB)
        runModuleSelfTest(self, slicer.mrmlScene, slicer.app.temporaryPath)
