"""FBANet Segmentation panel behaviour on real MRML: outputs per volume, user errors."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
from FBANetSegmentationLib import logic, testing  # noqa: E402
from FBANetSegmentationLib.job import SegmentationJob, SegmentationOptions  # noqa: E402
from test_slicer_segmentation_logic import add_volume, labelmap_on  # noqa: E402

from fbanet_slicer.host import user_error_display  # noqa: E402


def _segment(volume: Any, model: Path, output: Any, work: Path) -> Any:
    options = SegmentationOptions(model, device="cpu")
    job = SegmentationJob(volume, options, outputSegmentation=output, workDir=work)
    job.start()
    return job.waitForResult(timeout=300).segmentationNode


def test_a_second_volume_gets_its_own_result(
    mrml_scene: Any, threshold_model: Path, tmp_path: Path
) -> None:
    first = add_volume(mrml_scene, testing.syntheticCase(seed=1), np.diag([1.0, 1, 1, 1]), "A")
    moved = testing.syntheticCase(center=(16.0, 14.0, 12.0), seed=2)
    second = add_volume(mrml_scene, moved, np.diag([1.0, 1, 1, 1]), "B")
    resultA = _segment(first, threshold_model, None, tmp_path)
    (segmentA,) = logic.segmentIdsByName(resultA).values()
    before = labelmap_on(resultA, segmentA, first)
    # The panel still shows A's result when the user picks B and presses Apply again.
    resultB = _segment(second, threshold_model, resultA, tmp_path)
    assert resultB is not resultA and resultB.GetName() == "B FBANet"
    assert list(logic.segmentIdsByName(resultA).values()) == [segmentA]
    assert np.array_equal(labelmap_on(resultA, segmentA, first), before)
    # A segmentation the user made is theirs to write into, whichever volume it is for.
    own = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    assert _segment(second, threshold_model, own, tmp_path) is own
    assert logic.outputSegmentationFor(second, resultA) is None
    assert logic.outputSegmentationFor(first, resultA) is resultA


@pytest.fixture
def displays(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """Slicer's message boxes, recorded (slicer-core has no application to show them)."""
    shown: list[tuple[str, str, str]] = []
    app = types.SimpleNamespace(testingEnabled=lambda: False)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer.util, "warningDisplay",
                        lambda text, **kw: shown.append(("warning", text, "")))  # fmt: skip
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown.append(
        ("error", text, kw.get("detailedText", ""))))  # fmt: skip
    return shown


def test_a_user_mistake_shows_its_message_without_a_traceback(displays: list[Any]) -> None:
    with user_error_display("FBANet could not start."):
        raise ValueError("select an input volume")
    assert displays == [("warning", "FBANet could not start.\n\nselect an input volume", "")]


def test_a_bug_shows_its_traceback_and_is_not_re_raised(displays: list[Any]) -> None:
    reached = []
    with user_error_display("FBANet could not start."):
        raise KeyError("broken")
    reached.append(True)
    ((kind, text, details),) = displays
    assert kind == "error" and text.startswith("FBANet could not start.\n\n")
    assert "KeyError" in details and "Traceback" in details
    assert reached == [True]


def test_a_self_test_skips_without_its_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    import unittest

    from fbanet.cli import environment
    from fbanet_slicer.host import skipWithoutDependencies

    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(testingEnabled=lambda: True),
                        raising=False)  # fmt: skip
    monkeypatch.setattr(environment, "torch_problem", lambda: "torch is not installed")
    installs: list[Any] = []
    monkeypatch.setattr(slicer.util, "pip_install", installs.append)
    with pytest.raises(unittest.SkipTest, match=r"not installed \(torch>=2\.1"):
        skipWithoutDependencies(unittest.TestCase())
    assert installs == []


@pytest.mark.parametrize("module", ["FBANetSegmentation", "FBANetTraining"])
def test_titles_and_help_are_translatable_and_link_the_documentation(module: str) -> None:
    import ast

    from conftest import ROOT

    tree = ast.parse((ROOT / module / f"{module}.py").read_text(encoding="utf-8"))
    wrapped = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]).startswith("self.parent."):
            wrapped[ast.unparse(node.targets[0])[12:]] = ast.unparse(node.value)
    for field in ("title", "helpText", "acknowledgementText"):
        assert wrapped[field].startswith("_("), (field, wrapped[field])
    assert wrapped["categories"].startswith("[translate('qSlicerAbstractCoreModule'")
    assert "DOCUMENTATION_URL" in wrapped["helpText"]


def test_the_module_self_test_body_passes_on_slicer_core(
    mrml_scene: Any, threshold_model: Path, tmp_path: Path
) -> None:
    import unittest

    def segment(volume: Any) -> Any:
        job = SegmentationJob(volume, SegmentationOptions(threshold_model, device="cpu"),
                              workDir=tmp_path)  # fmt: skip
        job.start()
        return job.waitForResult(timeout=300)

    assert testing.checkSyntheticEllipsoid(unittest.TestCase(), mrml_scene, segment) > 0.9


@pytest.mark.parametrize(
    ("names", "wanted", "index"),
    [
        (["newest", "older"], "older", 1),  # the scene's model, wherever it is listed
        (["newest", "older"], "", 0),  # none chosen yet: the newest
        (["newest", "older"], "deleted", -1),  # gone: none (the panel says so), not another
        ([], "", -1),
    ],
)
def test_the_trained_model_box_shows_the_parameter_nodes_model(
    names: list[str], wanted: str, index: int
) -> None:
    from FBANetSegmentationLib.models import trainedModelIndex

    assert trainedModelIndex(names, wanted) == index
