"""What a host program (the Slicer panels) needs to run fbanet workers.

- The Python that runs workers and its environment (:func:`python_executable`,
  :func:`worker_environment`).
- The packages a worker needs, checked by version without importing them
  (:func:`missing_requirements`, :func:`torch_problem`), and :func:`ensure_dependencies`,
  which installs what is missing through an :class:`Installer` (in Slicer:
  :class:`fbanet_slicer.host.SlicerInstaller`) after asking, and never while a
  self-test runs.

Nothing here imports Qt, Slicer or torch: the panels open instantly and pytest runs it.
"""

from __future__ import annotations

import enum
import importlib
import importlib.metadata
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fbanet.config import DeviceKind


@dataclass(frozen=True)
class Requirement:
    """A package a worker imports: its import name, distribution name and lowest version."""

    module: str
    distribution: str
    minimum: str

    @property
    def pip(self) -> str:
        """The pip requirement, e.g. ``h5py>=3.8``."""
        return f"{self.distribution}>={self.minimum}"


# What `fbanet segment/train/rank` import besides torch (pyproject.toml's dependencies; a
# test keeps the two equal). Slicer 5.10 ships numpy, scipy, pillow and SimpleITK only.
REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("numpy", "numpy", "1.24"),
    Requirement("SimpleITK", "SimpleITK", "2.3"),
    Requirement("h5py", "h5py", "3.8"),
    Requirement("safetensors", "safetensors", "0.4"),
    Requirement("scipy", "scipy", "1.10"),
    Requirement("tqdm", "tqdm", "4.60"),
    Requirement("slicerio", "slicerio", "1.0"),
    Requirement("PIL", "pillow", "9.1"),
)
# torch comes from PyTorch Utils (matched to the GPU driver), never from a bare requirement.
TORCH = Requirement("torch", "torch", "2.1")
TORCH_REQUIREMENT = f">={TORCH.minimum}"

VersionLookup = Callable[[str], str]


def version_tuple(text: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``.

    (Slicer 5.10 does not ship the ``packaging`` library; release numbers are all that
    the minimum versions here compare.)
    """
    match = re.match(r"\d+(\.\d+)*", text.strip())
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def unsatisfied(requirement: Requirement, version_of: VersionLookup | None = None) -> str | None:
    """Why ``requirement`` is not met (not installed, or too old), or None when it is."""
    version_of = version_of or importlib.metadata.version
    try:
        installed = version_of(requirement.distribution)
    except importlib.metadata.PackageNotFoundError:
        return f"{requirement.distribution} is not installed"
    if version_tuple(installed) < version_tuple(requirement.minimum):
        return f"{requirement.distribution} {installed} is older than {requirement.minimum}"
    return None


def missing_requirements(
    requirements: tuple[Requirement, ...] = REQUIREMENTS, version_of: VersionLookup | None = None
) -> list[str]:
    """The pip requirements that are not installed, or installed in too old a version."""
    importlib.invalidate_caches()  # a pip install a moment ago must be seen
    return [r.pip for r in requirements if unsatisfied(r, version_of) is not None]


def torch_problem(version_of: VersionLookup | None = None) -> str | None:
    """Why torch cannot be used (missing or older than required), or None."""
    importlib.invalidate_caches()
    return unsatisfied(TORCH, version_of)


class MissingDependenciesError(RuntimeError):
    """Packages are missing and may not be installed now (a self-test); the message names them."""


class Installer(Protocol):
    """How a host asks the user and installs packages."""

    def testing(self) -> bool:
        """Whether a self-test runs (then nothing is installed)."""

    def confirm(self, question: str) -> bool:
        """Ask the user; True to go ahead."""

    def install_torch(self, requirement: str) -> None:
        """Install torch (``requirement`` such as ``>=2.1``), matched to the hardware."""

    def pip_install(self, requirements: list[str]) -> None:
        """Install pip requirements."""


def ensure_dependencies(installer: Installer) -> bool:
    """Make sure workers can run: install what is missing after asking the user.

    Returns:
        True when everything is there (now), False when the user declined.

    Raises:
        MissingDependenciesError: Something is missing while a self-test runs (it must skip).
        RuntimeError: The installation ran but did not provide what is needed.
    """
    torch, missing = torch_problem(), missing_requirements()
    if torch is None and not missing:
        return True
    needed = ([f"torch{TORCH_REQUIREMENT} (through PyTorch Utils)"] if torch else []) + missing
    if installer.testing():
        raise MissingDependenciesError(
            "FBANet's Python packages are not installed (" + ", ".join(needed) + "); "
            "self-tests never install them: press Apply once in FBANet Segmentation or "
            "Start in FBANet Training outside testing mode"
        )
    question = (
        "FBANet needs these Python packages, which are not installed yet:\n\n"
        + "\n".join(needed)
        + "\n\nInstall them now? This downloads them (PyTorch is large) and needs an "
        "internet connection."
    )
    if not installer.confirm(question):
        return False
    if torch:
        installer.install_torch(TORCH_REQUIREMENT)
    if missing:
        installer.pip_install(missing)
    still = ([torch_problem()] if torch_problem() else []) + missing_requirements()
    if still:
        raise RuntimeError("Installing FBANet's packages failed: " + "; ".join(map(str, still)))
    return True


def python_executable() -> str:
    """The Python that runs workers: Slicer's ``PythonSlicer`` when there is one.

    Inside Slicer, ``sys.executable`` is the application itself, and ``PythonSlicer`` (on the
    ``PATH`` Slicer sets up, or next to it) is its Python with the same packages. Elsewhere
    (pytest, a plain Python) the running interpreter is used.
    """
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    found = shutil.which("PythonSlicer")
    if found:
        return found
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.is_file() else sys.executable


def worker_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment additions for a worker: this process's ``fbanet`` first on ``PYTHONPATH``."""
    import fbanet

    parent = str(Path(fbanet.__file__).resolve().parent.parent)
    existing = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys([parent, *existing])), **(extra or {})}


class DeviceChoice(enum.Enum):
    """Where a worker computes, as both panels offer it; ``value`` is ``--device``'s."""

    AUTO = DeviceKind.AUTO.value
    CUDA = DeviceKind.CUDA.value
    MPS = DeviceKind.MPS.value
    CPU = DeviceKind.CPU.value
    # Scenes saved by FBANet Segmentation before both panels shared this enum name "GPU"
    # (the parameter node stores the member's name): an alias, not listed in the combo box.
    GPU = DeviceKind.CUDA.value

    def label(self) -> str:
        """Text of the combo box item (Slicer's parameter node wrapper calls this)."""
        return {
            DeviceChoice.AUTO: "Automatic (GPU if available)",
            DeviceChoice.CUDA: "NVIDIA GPU (CUDA)",
            DeviceChoice.MPS: "Apple GPU (MPS)",
            DeviceChoice.CPU: "CPU",
        }[self]


MODELS_SUBFOLDER = ("FBANet", "models")


def models_folder(settings_file: str | Path) -> Path:
    """Where FBANet Training saves models and FBANet Segmentation lists them.

    Args:
        settings_file: Slicer's user settings file (``slicer.app.slicerUserSettingsFilePath``);
            its folder is the per-user, per-version Slicer settings folder.
    """
    return Path(settings_file).parent.joinpath(*MODELS_SUBFOLDER)
