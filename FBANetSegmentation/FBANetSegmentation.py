"""FBANet Segmentation: segment the left atrium in a 3D MRI with an FBA-Net model.

Thin Slicer module (module, parameters, widget, logic entry points, self-test); the work is
in ``FBANetSegmentationLib``, which does not depend on Qt.
"""

from pathlib import Path

import qt
import slicer
import vtk
from FBANetSegmentationLib import testing
from FBANetSegmentationLib.job import SegmentationJob, SegmentationOptions, SegmentationResult
from FBANetSegmentationLib.models import (
    ModelSource,
    defaultSource,
    describeModel,
    listTrainedModels,
    resolveModelPath,
    trainedModelIndex,
)
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from fbanet.cli import environment
from fbanet.cli.devices import DeviceProbe
from fbanet.cli.environment import DeviceChoice
from fbanet.protocol import JobState
from fbanet_slicer.host import (
    DOCUMENTATION_URL,
    ReportsSkippedSelfTest,
    SlicerInstaller,
    showInSegmentEditor,
    skipWithoutDependencies,
    user_error_display,
)


class FBANetSegmentation(ReportsSkippedSelfTest, ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("FBANet Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["FBANet developers"]
        self.parent.helpText = _(
            "Segments the left atrium in a 3D (LGE) MRI with FBA-Net, a semi-supervised network. "
            "Pick the volume, optionally a region of interest around the heart, and press Apply; "
            "a named, coded 'Left atrium' segment appears, ready for the Segment Editor. "
            "Inference runs in a background process: Slicer stays responsive and Cancel stops it. "
            'See the <a href="{url}">documentation</a>.'
        ).format(url=DOCUMENTATION_URL)
        self.parent.acknowledgementText = _(
            "FBA-Net: Chung et al., 'Foreground-background separation through contrastive "
            "learning for semi-supervised medical image segmentation', MICCAI 2023."
        )


@parameterNodeWrapper
class FBANetSegmentationParameterNode:
    """Panel settings, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    outputSegmentation: vtkMRMLSegmentationNode
    modelSource: ModelSource = ModelSource.BUNDLED
    trainedModel: str = ""
    modelFile: Path
    device: DeviceChoice = DeviceChoice.AUTO
    largestComponent: bool = True
    mirroring: bool = True
    probabilityMap: bool = False
    uncertaintyMap: bool = False
    showInSegmentEditor: bool = False


class FBANetSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._deviceProbe = None
        self._dependenciesChecked = False
        self._starting = False  # Apply at work (installing, exporting): a second one waits
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._probeTimer = qt.QTimer()
        self._probeTimer.setInterval(200)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/FBANetSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = FBANetSegmentationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._timer.connect("timeout()", self.onPollTimer)
        self._probeTimer.connect("timeout()", self.onProbeTimer)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.segmentEditorButton.connect("clicked(bool)", self.onSegmentEditorButton)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshTrainedModels)
        self.ui.trainedModelComboBox.connect("currentIndexChanged(int)", self.onTrainedModelChanged)
        self._setRunning(False)
        self.initializeParameterNode()
        self.updateDeviceInfo()

    def cleanup(self) -> None:
        self._stopJob()
        self._probeTimer.stop()
        if self._deviceProbe is not None:
            self._deviceProbe.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()  # (refreshes the trained models: some may be new)

    def exit(self) -> None:
        self._disconnectParameterNode()  # the node is kept: a running job's result goes there

    def onSceneStartClose(self, caller, event) -> None:
        if self._stopJob():
            self.ui.statusLabel.text = _("Cancelled: the scene was closed.")
        self.setParameterNode(None)
        self._setRunning(False)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameters ----------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        node = self.logic.getParameterNode()
        if not node.parameterNode.GetParameter("FBANetInitialized"):
            node.parameterNode.SetParameter("FBANetInitialized", "1")
            node.modelSource = defaultSource(self.logic.modelsFolder())
        self.setParameterNode(node)
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume:
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode) -> None:
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self.refreshTrainedModels()  # the combo box shows the node's model (or none)
            self._updateGui()

    def _disconnectParameterNode(self) -> None:
        """Undo connectGui and the observer, once (exit() and then setParameterNode())."""
        node, modified = self._parameterNode, vtk.vtkCommand.ModifiedEvent
        if node and self._parameterNodeGuiTag is not None:
            node.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        if node and self.hasObserver(node, modified, self._updateGui):
            self.removeObserver(node, modified, self._updateGui)

    def _updateGui(self, caller=None, event=None) -> None:
        params = self._parameterNode
        if params is None:
            return
        trained = params.modelSource is ModelSource.TRAINED
        fromFile = params.modelSource is ModelSource.FILE
        self.ui.trainedModelLabel.setVisible(trained)
        self.ui.trainedModelComboBox.setVisible(trained)
        self.ui.refreshModelsButton.setVisible(trained)
        self.ui.modelFileLabel.setVisible(fromFile)
        self.ui.modelFilePathLineEdit.setVisible(fromFile)
        try:
            path = self.logic.modelPath(params)
            self.ui.modelInfoLabel.text = describeModel(path).description
            modelError = ""
        except ValueError as error:
            self.ui.modelInfoLabel.text = str(error)
            modelError = str(error)
        running = self._job is not None or self._starting
        ready = bool(params.inputVolume) and not modelError
        self.ui.applyButton.enabled = ready and not running
        self.ui.applyButton.toolTip = modelError or (
            _("Segment the input volume") if params.inputVolume else _("Select an input volume")
        )
        self.ui.segmentEditorButton.enabled = bool(params.outputSegmentation) and not running

    def refreshTrainedModels(self) -> None:
        combo, params = self.ui.trainedModelComboBox, self._parameterNode
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        models = listTrainedModels(self.logic.modelsFolder())
        for model in models:
            combo.addItem(model.name)
            combo.setItemData(combo.count - 1, model.description, qt.Qt.ToolTipRole)
        chosen = trainedModelIndex([m.name for m in models], params.trainedModel if params else "")
        combo.setCurrentIndex(chosen)  # -1 (none) for a model that is gone: the panel says so
        combo.blockSignals(wasBlocked)
        if chosen >= 0:
            self.onTrainedModelChanged()

    def onTrainedModelChanged(self, index=None) -> None:
        if self._parameterNode and self.ui.trainedModelComboBox.currentIndex >= 0:
            self._parameterNode.trainedModel = self.ui.trainedModelComboBox.currentText

    def updateDeviceInfo(self) -> None:
        """Ask a short worker which GPUs there are (never torch in Slicer's own process)."""
        problem = environment.torch_problem()
        if problem is not None:
            self.ui.deviceInfoLabel.text = _(
                "PyTorch is not ready ({problem}): it is set up when you first press Apply."
            ).format(problem=problem)
            return
        if self._deviceProbe is not None and self._deviceProbe.running:
            return
        self._deviceProbe = DeviceProbe()
        self._deviceProbe.start()
        self.ui.deviceInfoLabel.text = self._deviceProbe.description
        self._probeTimer.start()

    def onProbeTimer(self) -> None:
        probe = self._deviceProbe
        if probe is None:
            self._probeTimer.stop()
            return
        probe.poll()
        self.ui.deviceInfoLabel.text = probe.description
        if not probe.running:
            self._probeTimer.stop()

    # -- running -------------------------------------------------------------------------------
    def _setRunning(self, running: bool) -> None:
        self.ui.cancelButton.enabled = running
        self.ui.progressBar.setVisible(running)
        self.ui.progressBar.setRange(0, 0)  # busy until the first progress event
        self._updateGui()

    def onApplyButton(self) -> None:
        if self._starting or self._job is not None:
            return  # a click Qt delivered while installing or exporting (Apply is off then)
        self._starting = True
        self._updateGui()
        try:
            job = self._startJob()
        finally:
            self._starting = False
        if job is None:
            self._updateGui()
            return
        self._job = job
        self.ui.statusLabel.text = _("Segmenting...")
        self._setRunning(True)
        self._timer.start()

    def _startJob(self) -> SegmentationJob | None:
        """Install what is missing (asking), export and start; None if that did not happen."""
        # The install question comes with the normal cursor (the installer shows a wait cursor).
        with user_error_display(_("FBANet could not start.")):
            if not self._dependenciesChecked:
                if not environment.ensure_dependencies(SlicerInstaller()):
                    return None
                self._dependenciesChecked = True
                self.updateDeviceInfo()
            with slicer.util.WaitCursor():
                job = self.logic.createJob(self._parameterNode, slicer.app.temporaryPath)
                job.start()
            return job if job.running else None
        return None

    def onPollTimer(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        try:
            status = job.poll()
        except Exception as error:  # the job raises the worker's own message
            self._finish(None, _("Failed: {error}").format(error=error))
            slicer.util.errorDisplay(
                _("FBANet segmentation failed.") + f"\n\n{error}",
                detailedText="\n".join(job.log_lines()),
            )
            return
        if status.fraction is not None:
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.value = round(100 * status.fraction)
        if status.state is JobState.SUCCEEDED:
            seconds = status.result.seconds
            self._finish(status.result, _("Done in {seconds:.1f} s.").format(seconds=seconds))
        elif not status.state.active:
            self._finish(None, _("Cancelled."))

    def onCancelButton(self) -> None:
        self._stopJob()
        self._finish(None, _("Cancelled."))

    def _stopJob(self) -> bool:
        """Cancel the running job (its whole process tree), if any; whether there was one."""
        self._timer.stop()
        job, self._job = self._job, None
        if job is not None:
            job.cancel()
        return job is not None

    def _finish(self, result: SegmentationResult | None, message: str) -> None:
        self._timer.stop()
        volume = self._job.volumeNode if self._job is not None else None
        self._job = None
        self.ui.statusLabel.text = message
        if result is not None and self._parameterNode is not None:
            self._parameterNode.outputSegmentation = result.segmentationNode
            result.segmentationNode.CreateClosedSurfaceRepresentation()  # shows it in 3D too
            slicer.util.setSliceViewerLayers(background=volume, fit=False)
            if self._parameterNode.showInSegmentEditor:
                showInSegmentEditor(result.segmentationNode, volume)
        self._setRunning(False)

    def onSegmentEditorButton(self) -> None:
        params = self._parameterNode
        with user_error_display(_("Could not open the Segment Editor.")):
            showInSegmentEditor(params.outputSegmentation, params.inputVolume)


class FBANetSegmentationLogic(ScriptedLoadableModuleLogic):
    """Entry points for scripts; the work is in ``FBANetSegmentationLib``."""

    def getParameterNode(self):
        return FBANetSegmentationParameterNode(super().getParameterNode())

    @staticmethod
    def modelsFolder() -> Path:
        """Where FBANet Training saves models (``<settings folder>/FBANet/models``)."""
        return environment.models_folder(slicer.app.slicerUserSettingsFilePath)

    def modelPath(self, params) -> Path:
        return resolveModelPath(
            params.modelSource, params.trainedModel, params.modelFile, self.modelsFolder()
        )

    def createJob(self, params, workDir=None) -> SegmentationJob:
        """A job for the panel's settings (not started)."""
        options = SegmentationOptions(
            self.modelPath(params),
            device=params.device.value,
            largestComponent=params.largestComponent,
            mirroring=params.mirroring,
            probabilityMap=params.probabilityMap,
            uncertaintyMap=params.uncertaintyMap,
        )
        return SegmentationJob(
            params.inputVolume, options, params.roi, params.outputSegmentation, workDir=workDir
        )

    def segment(self, volumeNode, modelPath, roiNode=None, outputSegmentation=None,
                timeout=None, **options) -> SegmentationResult:  # fmt: skip
        """Segment and wait (blocks: for scripts and tests). ``options``: SegmentationOptions."""
        job = SegmentationJob(
            volumeNode, SegmentationOptions(Path(modelPath), **options), roiNode,
            outputSegmentation, workDir=slicer.app.temporaryPath,
        )  # fmt: skip
        job.start()
        return job.waitForResult(timeout=timeout)


class FBANetSegmentationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SyntheticEllipsoid()

    def test_SyntheticEllipsoid(self):
        """A bright ellipsoid in a rotated, anisotropic volume comes back as 'Left atrium'."""
        self.delayDisplay("Starting the test")
        skipWithoutDependencies(self)  # a self-test never installs (PyTorch is several GB)
        model = testing.thresholdModel(Path(slicer.app.temporaryPath) / "FBANet-test.safetensors")

        def segment(volume):
            return FBANetSegmentationLogic().segment(volume, model, device="cpu", timeout=600)

        overlap = testing.checkSyntheticEllipsoid(self, slicer.mrmlScene, segment)
        self.delayDisplay(f"Test passed (Dice {overlap:.3f})")
