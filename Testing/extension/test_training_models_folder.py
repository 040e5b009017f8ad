"""One models folder: FBANet Training writes where FBANet Segmentation lists (no panel option)."""

from __future__ import annotations

import ast
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import training_support as support
from training_support import ROOT, logic, settings

from fbanet.cli import environment


def _segmentationFolderCall() -> str:
    """The body of FBANetSegmentationLogic.modelsFolder (its module needs Qt to import)."""
    tree = ast.parse((ROOT / "FBANetSegmentation" / "FBANetSegmentation.py").read_text())
    [method] = [n for n in ast.walk(tree)
                if isinstance(n, ast.FunctionDef) and n.name == "modelsFolder"]  # fmt: skip
    return ast.unparse(method.body[-1])


def test_a_model_trained_in_the_panel_lands_where_segmentation_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settingsFile = tmp_path / "settings" / "Slicer.ini"
    app = types.SimpleNamespace(slicerUserSettingsFilePath=str(settingsFile))
    monkeypatch.setattr(support.slicer, "app", app, raising=False)
    assert _segmentationFolderCall() == (
        "return environment.models_folder(slicer.app.slicerUserSettingsFilePath)"
    )
    listed = environment.models_folder(app.slicerUserSettingsFilePath)
    # The panel's parameters, as a scene saved with an older version may still hold them.
    node = types.SimpleNamespace(
        startFrom=settings.StartChoice.SCRATCH, initModelPath=Path("."), iterations=7,
        device=environment.DeviceChoice.CPU, patchSizeX=64, patchSizeY=48, patchSizeZ=32,
        batchSize=4, labeledBatchSize=2, learningRate=0.05, validationCases=1,
        validateEvery=3, modelName="Mine", settingsChoice=settings.SettingsChoice.CUSTOM,
        useTimeBudget=False, trainMinutes=2.5, modelsFolder=tmp_path / "elsewhere",
    )  # fmt: skip
    trainingLogic = logic.FBANetTrainingLogic(support.newScene(), runsFolder=tmp_path / "runs")
    settings.applyParameters(trainingLogic.settings, node)
    assert trainingLogic.modelsFolder() == listed
    assert trainingLogic.modelPath() == listed / "Mine.safetensors"


def test_the_panel_offers_no_models_folder_option() -> None:
    ui = ET.parse(ROOT / "FBANetTraining" / "Resources" / "UI" / "FBANetTraining.ui")
    bound = {p.findtext("string") for p in ui.getroot().iter("property")
             if p.get("name") == "SlicerParameterName"}  # fmt: skip
    assert "modelsFolder" not in bound and "modelName" in bound
    tree = ast.parse((ROOT / "FBANetTraining" / "FBANetTraining.py").read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    node = classes["FBANetTrainingParameterNode"]
    fields = {f.target.id for f in node.body
              if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name)}  # fmt: skip
    assert "modelsFolder" not in fields and "modelName" in fields
