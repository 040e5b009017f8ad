"""fbanet_slicer.host: which PyTorch index to install from, and self-tests without packages."""

from __future__ import annotations

import types
import unittest
from typing import Any

import pytest

from fbanet.cli import environment
from fbanet_slicer.host import (
    backend_name,
    best_backend,
    refreshSegmentationModels,
    skipWithoutDependencies,
)


class FakeCPUBackend:
    """What light-the-torch's CPUBackend exposes (no __str__ of its own: __repr__ is it)."""

    local_specifier = "cpu"

    def __repr__(self) -> str:
        return self.local_specifier


class FakeCUDABackend:
    """light-the-torch's CUDABackend: ``local_specifier`` is ``cu<major><minor>``."""

    def __init__(self, major: int, minor: int) -> None:
        self.major, self.minor = major, minor

    @property
    def local_specifier(self) -> str:
        return f"cu{self.major}{self.minor}"

    def __repr__(self) -> str:
        return self.local_specifier


def test_light_the_torch_backend_objects_are_read_by_their_specifier() -> None:
    backends = [FakeCPUBackend(), FakeCUDABackend(11, 8), FakeCUDABackend(12, 1)]
    assert [backend_name(b) for b in backends] == ["cpu", "cu118", "cu121"]
    assert best_backend(backends) == "cu121"
    assert best_backend([FakeCPUBackend()]) == "cpu" and best_backend([]) == "cpu"


@pytest.mark.parametrize(
    ("driver", "index"),
    [
        ((12, 0), "cu118"),  # cu120 has no PyTorch index
        ((12, 5), "cu124"),
        ((12, 6), "cu126"),
        ((13, 0), "cu128"),  # newer than every published one: the newest published
        ((11, 7), "cpu"),  # older than every published one
    ],
)
def test_the_newest_published_index_the_driver_runs_is_chosen(
    driver: tuple[int, int], index: str
) -> None:
    # light-the-torch lists every CUDA version up to the driver's newest.
    versions = [(11, m) for m in range(9)] + [(12, m) for m in range(10)] + [(13, 0)]
    supported = [FakeCUDABackend(*v) for v in versions if v <= driver]
    assert best_backend([FakeCPUBackend(), *supported]) == index
    assert best_backend([backend_name(b) for b in supported]) == index  # plain strings too


class FakeInstaller:
    """An installer whose user answers ``answer``; records what it was asked to install."""

    def __init__(self, answer: bool) -> None:
        self.answer, self.asked, self.installed = answer, [], []

    def testing(self) -> bool:
        return False

    def confirm(self, question: str) -> bool:
        self.asked.append(question)
        return self.answer

    def install_torch(self, requirement: str) -> None:
        self.installed.append(f"torch{requirement}")

    def pip_install(self, requirements: list[str]) -> None:
        self.installed += requirements


def test_reload_and_test_skips_when_the_user_declines_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(environment, "torch_problem", lambda: "torch is not installed")
    installer: Any = FakeInstaller(answer=False)
    with pytest.raises(unittest.SkipTest, match="declined"):
        skipWithoutDependencies(unittest.TestCase(), installer)
    assert len(installer.asked) == 1 and installer.installed == []


def test_a_self_test_runs_on_when_everything_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "torch_problem", lambda: None)
    monkeypatch.setattr(environment, "missing_requirements", lambda: [])
    installer: Any = FakeInstaller(answer=False)
    skipWithoutDependencies(unittest.TestCase(), installer)  # no SkipTest
    assert installer.asked == []


class FakeModule:
    """A loaded module of ``slicer.modules``: asking for its widget creates the panel."""

    def __init__(self) -> None:
        self.created = 0

    def widgetRepresentation(self) -> Any:
        self.created += 1
        raise AssertionError("the FBANet Segmentation panel was created")


class FakeSegmentationWidget:
    def __init__(self) -> None:
        self.refreshed = 0

    def refreshTrainedModels(self) -> None:
        self.refreshed += 1


def test_a_finished_training_refreshes_the_segmentation_panel_only_if_it_exists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slicer = pytest.importorskip("slicer")
    module = FakeModule()
    modules = types.SimpleNamespace(fbanetsegmentation=module)
    monkeypatch.setattr(slicer, "modules", modules, raising=False)
    refreshSegmentationModels()  # never opened: nothing is created
    assert module.created == 0
    modules.FBANetSegmentationWidget = FakeSegmentationWidget()  # opened once
    refreshSegmentationModels()
    assert modules.FBANetSegmentationWidget.refreshed == 1 and module.created == 0


def test_reload_and_test_without_pytorch_says_the_test_was_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slicer's Test buttons run the test outside a unittest runner: a skip must not fail."""
    from fbanet_slicer.host import SKIPPED_SELF_TEST, runSelfTestReportingSkip

    monkeypatch.setattr(environment, "torch_problem", lambda: "torch is not installed")
    monkeypatch.setattr(FakeInstaller, "testing", lambda self: True)  # never installs
    shown: list[str] = []

    def selfTest() -> None:  # what a module's test does first
        skipWithoutDependencies(unittest.TestCase(), FakeInstaller(answer=True))
        raise AssertionError("the test ran on without PyTorch")

    assert runSelfTestReportingSkip(selfTest, shown.append) is False
    assert len(shown) == 1 and shown[0].startswith(SKIPPED_SELF_TEST)
    assert "torch" in shown[0]
    failing = unittest.TestCase().fail  # a real failure still fails
    with pytest.raises(AssertionError, match="boom"):
        runSelfTestReportingSkip(lambda: failing("boom"), shown.append)
    assert runSelfTestReportingSkip(lambda: None, shown.append) is True and len(shown) == 1


class FakeModuleBase:
    """ScriptedLoadableModule.runTest: creates the test case and runs it (no runner)."""

    def runTest(self, msec: int = 100, **kwargs: Any) -> None:
        skipWithoutDependencies(unittest.TestCase(), FakeInstaller(answer=False))


def test_the_module_mixin_shows_a_skip_instead_of_raising_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fbanet_slicer.host import SKIPPED_SELF_TEST, ReportsSkippedSelfTest

    slicer = pytest.importorskip("slicer")
    shown: list[str] = []
    monkeypatch.setattr(slicer.util, "infoDisplay", shown.append)
    monkeypatch.setattr(environment, "torch_problem", lambda: "torch is not installed")

    class Module(ReportsSkippedSelfTest, FakeModuleBase):
        pass

    Module().runTest(msec=10)  # Reload and Test: no exception
    assert len(shown) == 1 and shown[0].startswith(SKIPPED_SELF_TEST) and "declined" in shown[0]


def test_both_modules_route_their_test_buttons_through_the_skip_report() -> None:
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for name in ("FBANetSegmentation", "FBANetTraining"):
        tree = ast.parse((root / name / f"{name}.py").read_text(encoding="utf-8"))
        [module] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
        bases = [ast.unparse(b) for b in module.bases]
        assert bases == ["ReportsSkippedSelfTest", "ScriptedLoadableModule"], name


def test_first_use_offline_asks_with_the_normal_cursor_then_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import subprocess
    import sys

    from fbanet_slicer.host import TORCH_DOWNLOAD_FAILED, DownloadError, SlicerInstaller

    slicer = pytest.importorskip("slicer")
    events: list[Any] = []
    depth = [0]

    class WaitCursor:
        def __enter__(self) -> None:
            depth[0] += 1

        def __exit__(self, *exc: object) -> None:
            depth[0] -= 1

    def offlinePip(requirements: Any) -> None:
        events.append(("pip", depth[0]))
        raise subprocess.CalledProcessError(1, ["pip", "install", str(requirements)])

    class PyTorchUtilsLogic:  # what PyTorch Utils does first: pip-install light-the-torch
        @staticmethod
        def getCompatibleComputationBackends(force: Any = None, requirement: Any = None) -> Any:
            slicer.util.pip_install("light-the-torch>=0.5")

    def confirm(text: str, **kwargs: Any) -> bool:
        events.append(("ask", depth[0]))
        return True

    monkeypatch.setattr(slicer.util, "WaitCursor", WaitCursor)
    monkeypatch.setattr(slicer.util, "pip_install", offlinePip)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm)
    app = types.SimpleNamespace(testingEnabled=lambda: False)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    pytorchUtils = types.ModuleType("PyTorchUtils")
    pytorchUtils.PyTorchUtilsLogic = PyTorchUtilsLogic  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "PyTorchUtils", pytorchUtils)
    monkeypatch.setattr(environment, "torch_problem", lambda: "torch is not installed")
    monkeypatch.setattr(environment, "missing_requirements", lambda: [])
    with pytest.raises(DownloadError) as raised:
        environment.ensure_dependencies(SlicerInstaller())
    assert str(raised.value) == TORCH_DOWNLOAD_FAILED
    assert (
        "could not download PyTorch; check the connection or install it from the PyTorch "
        "module" in TORCH_DOWNLOAD_FAILED
    )
    assert isinstance(raised.value, ValueError)  # shown as a message, not a traceback
    assert events == [("ask", 0), ("pip", 1)]  # the question first, without a wait cursor
    assert depth == [0]


def test_the_panels_ask_to_install_outside_any_wait_cursor() -> None:
    import ast
    from pathlib import Path

    def waits(item: ast.withitem) -> bool:
        text = ast.unparse(item.context_expr)
        return "WaitCursor" in text or "wait_cursor=True" in text

    root = Path(__file__).resolve().parents[2]
    for name in ("FBANetSegmentation", "FBANetTraining"):
        tree = ast.parse((root / name / f"{name}.py").read_text(encoding="utf-8"))
        blocks = [n for n in ast.walk(tree) if isinstance(n, ast.With) and any(map(waits, n.items))]
        assert all("ensure_dependencies" not in ast.unparse(b) for b in blocks), name
        assert "ensure_dependencies" in ast.unparse(tree), name
