"""fbanet's side of the 3D Slicer application: installing packages, showing user errors.

Both FBANet modules use these (neither can import the other at load time). ``slicer`` and
``PyTorchUtils`` are imported only inside the functions, when Slicer runs them; nothing
here imports Qt.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import subprocess
import unittest
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from fbanet.cli.environment import Installer, MissingDependenciesError, ensure_dependencies

logger = logging.getLogger(__name__)

PYTORCH_INDEX = "https://download.pytorch.org/whl/{backend}"
# Both modules' help links here (the README's section on the extension).
DOCUMENTATION_URL = "https://github.com/fbanet/SlicerFBANet#3d-slicer-extension"
# Node attribute on the maps FBANet computes (probability, uncertainty): not MRI, so never
# offered as an unlabeled volume for training. Its value says which map it is.
DERIVED_MAP_ATTRIBUTE = "FBANet.DerivedMap"


# First use without a connection: pip fails (CalledProcessError from slicer.util.pip_install,
# also inside PyTorch Utils' own install of light-the-torch); the user gets this instead.
TORCH_DOWNLOAD_FAILED = (
    "FBANet could not download PyTorch; check the connection or install it from the PyTorch "
    "module (PyTorch Utils), then try again."
)
PACKAGES_DOWNLOAD_FAILED = (
    "FBANet could not download its Python packages ({packages}); check the connection and "
    "try again."
)


class DownloadError(ValueError):
    """Installing packages failed (no connection, no index): a user-fixable problem whose
    message says what to do (shown without a traceback)."""


# CUDA versions PyTorch publishes wheel indexes for (download.pytorch.org/whl/<backend>);
# a driver may support a newer CUDA (cu120, cu125...) that has no index of its own.
PUBLISHED_CUDA_BACKENDS = ("cu118", "cu121", "cu124", "cu126", "cu128")


def backend_name(backend: object) -> str:
    """A computation backend as text: ``"cu121"``, ``"cpu"``.

    PyTorch Utils returns light-the-torch's backend objects (``CUDABackend``, ``CPUBackend``),
    whose ``local_specifier`` is that text; plain strings pass through.
    """
    return str(getattr(backend, "local_specifier", backend)).strip().lower()


def _cuda_number(name: str) -> int | None:
    match = re.fullmatch(r"cu(\d+)", name)
    return int(match.group(1)) if match else None


def best_backend(
    backends: Iterable[object], published: Sequence[str] = PUBLISHED_CUDA_BACKENDS
) -> str:
    """The PyTorch index to install from: the newest published CUDA one the driver runs.

    Args:
        backends: What the driver supports (strings or light-the-torch backend objects).
        published: CUDA backends that have a PyTorch index.

    Returns:
        The newest of ``published`` not newer than the newest CUDA backend listed (a cu125
        driver gets cu124), or ``cpu`` without a CUDA backend or when the driver is older
        than every published one.
    """
    numbers = [n for n in map(_cuda_number, map(backend_name, backends)) if n is not None]
    if not numbers:
        return "cpu"
    newest = max(numbers)
    usable = [p for p in published if (_cuda_number(p) or 0) <= newest]
    return max(usable, key=lambda p: _cuda_number(p) or 0) if usable else "cpu"


class SlicerInstaller:
    """:class:`fbanet.cli.environment.Installer` for the Slicer application.

    torch comes from PyTorch's own index for the CUDA version the PyTorch extension finds
    for this driver (PyTorch Utils' ``installTorch`` would add torchvision, which FBANet
    does not use). The question comes with the normal cursor (the callers show no wait
    cursor around :func:`~fbanet.cli.environment.ensure_dependencies`); the downloads show
    a wait cursor, and a failed one raises :class:`DownloadError` saying what to do.
    """

    def testing(self) -> bool:
        import slicer

        return bool(slicer.app.testingEnabled())

    def confirm(self, question: str) -> bool:
        import slicer

        return bool(slicer.util.confirmOkCancelDisplay(question, windowTitle="FBANet"))

    def install_torch(self, requirement: str) -> None:
        import slicer

        try:
            from PyTorchUtils import PyTorchUtilsLogic
        except ImportError:
            raise RuntimeError(
                "FBANet runs on PyTorch, which the PyTorch extension installs: open View > "
                "Extensions Manager, install 'PyTorch', restart Slicer and try again"
            ) from None
        with slicer.util.WaitCursor():
            try:  # (PyTorch Utils first pip-installs light-the-torch to read the driver)
                backends = PyTorchUtilsLogic.getCompatibleComputationBackends(None, requirement)
                index = PYTORCH_INDEX.format(backend=best_backend(backends))
                slicer.util.pip_install([f"torch{requirement}", "--index-url", index])
            except (subprocess.CalledProcessError, OSError, ValueError) as error:
                logger.warning("installing PyTorch failed: %s", error)
                raise DownloadError(TORCH_DOWNLOAD_FAILED) from error

    def pip_install(self, requirements: list[str]) -> None:
        import slicer

        with slicer.util.WaitCursor():
            try:
                slicer.util.pip_install(list(requirements))
            except (subprocess.CalledProcessError, OSError) as error:
                logger.warning("installing %s failed: %s", requirements, error)
                packages = ", ".join(requirements)
                raise DownloadError(PACKAGES_DOWNLOAD_FAILED.format(packages=packages)) from error


def showInSegmentEditor(segmentationNode: Any, volumeNode: Any) -> None:  # noqa: N802, N803
    """Open the Segment Editor on ``segmentationNode`` with ``volumeNode`` as source."""
    import slicer

    slicer.util.selectModule("SegmentEditor")
    editor = slicer.modules.SegmentEditorWidget.editor
    editor.setSegmentationNode(segmentationNode)
    if hasattr(editor, "setSourceVolumeNode"):
        editor.setSourceVolumeNode(volumeNode)
    else:  # Slicer before 5.2
        editor.setMasterVolumeNode(volumeNode)


def refreshSegmentationModels() -> None:  # noqa: N802 (Slicer's style)
    """Let the FBANet Segmentation panel list a newly trained model, if it was ever opened.

    ``slicer.modules.FBANetSegmentationWidget`` exists only once the panel was created (Slicer
    sets it when it instantiates a scripted module's widget); ``widgetRepresentation()``
    would create it, with its parameter node and its GPU probe process.
    """
    import slicer

    widget = getattr(slicer.modules, "FBANetSegmentationWidget", None)
    refresh = getattr(widget, "refreshTrainedModels", None)
    if refresh is not None:
        refresh()


def skipWithoutDependencies(  # noqa: N802 (Slicer's style)
    test: unittest.TestCase, installer: Installer | None = None
) -> None:
    """Skip a module self-test, saying what is missing, when FBANet's packages are not there.

    In testing mode nothing is installed (PyTorch is several GB, and a test machine may be
    offline); outside it (Reload and Test) the user is asked, as on Apply, and a "no" skips
    too (the test would only fail on the missing packages).
    """
    try:
        installed = ensure_dependencies(installer or SlicerInstaller())
    except MissingDependenciesError as missing:
        test.skipTest(str(missing))
    if not installed:
        test.skipTest("FBANet's Python packages are not installed (the installation was declined)")


SKIPPED_SELF_TEST = "The FBANet self-test needs PyTorch and FBANet's packages and was skipped:"


def runSelfTestReportingSkip(  # noqa: N802 (Slicer's style)
    run: Callable[[], None], show: Callable[[str], Any]
) -> bool:
    """Run a module's self-test as Slicer's Test and Reload and Test buttons do.

    They call the test outside a unittest runner (``ScriptedLoadableModule.runTest``), so a
    :class:`unittest.SkipTest` would show "Reload and Test failed."; here it is shown as
    what it is, through ``show``. ctest runs the test case in a runner, which reports the
    skip itself, and never comes here.

    Returns:
        Whether the test ran (False: skipped; ``show`` was called with the reason).
    """
    try:
        run()
    except unittest.SkipTest as skipped:
        show(f"{SKIPPED_SELF_TEST} {skipped}")
        return False
    return True


class ReportsSkippedSelfTest:
    """Mixin of a module class (before ``ScriptedLoadableModule``): its Test and Reload and
    Test buttons say that a skipped self-test was skipped (:func:`runSelfTestReportingSkip`)."""

    def runTest(self, msec: int = 100, **kwargs: Any) -> None:  # noqa: N802 (Slicer's name)
        import slicer

        run = functools.partial(super().runTest, msec, **kwargs)  # type: ignore[misc]
        runSelfTestReportingSkip(run, slicer.util.infoDisplay)


@contextlib.contextmanager
def user_error_display(
    message: str, user_errors: tuple[type[BaseException], ...] = (ValueError,),
    wait_cursor: bool = False,
) -> Iterator[None]:  # fmt: skip
    """Show a failure in a message box; ordinary user mistakes without a traceback.

    ``user_errors`` (by default ValueError, which every "fix your input" error of FBANet
    derives from) show their message only; anything else is a bug or a broken machine and
    goes through ``slicer.util.tryWithErrorDisplay`` (message and traceback). Neither is
    re-raised: the caller continues after the ``with`` block, as after a message box.
    """
    import slicer

    cursor = slicer.util.WaitCursor() if wait_cursor else contextlib.nullcontext()
    try:
        with slicer.util.tryWithErrorDisplay(message):
            user_error: BaseException | None = None
            with cursor:
                try:
                    yield
                except user_errors as error:
                    user_error = error
            if user_error is not None:
                slicer.util.warningDisplay(f"{message}\n\n{user_error}", windowTitle="FBANet")
    except Exception:  # shown by tryWithErrorDisplay, which re-raises
        logger.exception(message)
