"""fbanet's side of the 3D Slicer application: installing packages, showing user errors.

Both FBANet modules use these (neither can import the other at load time). ``slicer`` and
``PyTorchUtils`` are imported only inside the functions, when Slicer runs them; nothing
here imports Qt.
"""

from __future__ import annotations

import contextlib
import logging
import re
import unittest
from collections.abc import Iterator

from fbanet.cli.environment import MissingDependenciesError, ensure_dependencies

logger = logging.getLogger(__name__)

PYTORCH_INDEX = "https://download.pytorch.org/whl/{backend}"
# Both modules' help links here (the README's section on the extension).
DOCUMENTATION_URL = "https://github.com/fbanet/SlicerFBANet#3d-slicer-extension"


def best_backend(backends: list[str]) -> str:
    """The newest CUDA backend (``cu121`` over ``cu118``) of those listed, else ``cpu``."""
    cuda = [b for b in backends if re.fullmatch(r"cu\d+", b)]
    return max(cuda, key=lambda b: int(b[2:])) if cuda else "cpu"


class SlicerInstaller:
    """:class:`fbanet.cli.environment.Installer` for the Slicer application.

    torch comes from PyTorch's own index for the CUDA version the PyTorch extension finds
    for this driver (PyTorch Utils' ``installTorch`` would add torchvision, which FBANet
    does not use).
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
        backends = PyTorchUtilsLogic.getCompatibleComputationBackends(None, requirement)
        index = PYTORCH_INDEX.format(backend=best_backend(list(backends)))
        slicer.util.pip_install([f"torch{requirement}", "--index-url", index])

    def pip_install(self, requirements: list[str]) -> None:
        import slicer

        slicer.util.pip_install(list(requirements))


def skipWithoutDependencies(test: unittest.TestCase) -> None:  # noqa: N802 (Slicer's style)
    """Skip a module self-test, saying what is missing, when FBANet's packages are not there.

    In testing mode nothing is installed (PyTorch is several GB, and a test machine may be
    offline); outside it (Reload and Test) the user is asked, as on Apply.
    """
    try:
        ensure_dependencies(SlicerInstaller())
    except MissingDependenciesError as missing:
        test.skipTest(str(missing))


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
