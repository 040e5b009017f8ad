"""Where things are: the fbanet package, the Python that runs the worker, its packages, GPUs.

Nothing here imports Qt, Slicer or torch at import time, so the panel opens instantly and
the functions run under pytest.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path

# Import name -> pip requirement of what ``fbanet segment`` needs besides torch (which the
# PyTorch extension installs, matched to the GPU driver). numpy and SimpleITK ship with Slicer.
REQUIRED_PACKAGES: dict[str, str] = {
    "numpy": "numpy>=1.24",
    "SimpleITK": "SimpleITK>=2.3",
    "safetensors": "safetensors>=0.4",
    "h5py": "h5py>=3.8",
    "scipy": "scipy>=1.10",
    "tqdm": "tqdm>=4.60",
    "slicerio": "slicerio>=1.0",
    "nrrd": "pynrrd>=1.0",
    "PIL": "pillow>=9.1",
}
TORCH_REQUIREMENT = ">=2.1"
MODELS_SUBFOLDER = ("FBANet", "models")


def sourceTreeFbanetFolder(moduleDir: str | Path) -> Path | None:
    """The repository's ``src`` folder when a module runs from a source checkout, else None.

    A module folder ``<repo>/FBANetSegmentation`` has the package at ``<repo>/src/fbanet``.
    """
    candidate = Path(moduleDir).resolve().parent / "src"
    return candidate if (candidate / "fbanet" / "__init__.py").is_file() else None


def ensureFbanetImportable(moduleDir: str | Path) -> Path:
    """Make ``import fbanet`` work; returns the folder that holds the ``fbanet`` package.

    An installed extension has the package next to the modules (already on ``sys.path``); a
    source checkout run with ``--additional-module-paths`` gets ``<repo>/src`` added.

    Raises:
        ImportError: fbanet is neither importable nor in a source checkout next to the module.
    """
    try:
        import fbanet
    except ImportError:
        source = sourceTreeFbanetFolder(moduleDir)
        if source is None:
            raise ImportError(
                "the fbanet package was not found: install the FBANet extension from the "
                "Extensions Manager, or run Slicer with --additional-module-paths pointing into "
                "a complete FBANet source checkout (with its src/fbanet folder)"
            ) from None
        sys.path.insert(0, str(source))
        importlib.invalidate_caches()
        import fbanet
    return Path(fbanet.__file__).resolve().parent.parent


def pythonExecutable() -> str:
    """The Python that runs workers: Slicer's ``PythonSlicer`` when there is one.

    Inside Slicer, ``sys.executable`` is the application itself, and ``PythonSlicer`` (on the
    ``PATH`` Slicer sets up) is its Python with the same packages. Elsewhere (pytest, a plain
    Python) the running interpreter is used.
    """
    found = shutil.which("PythonSlicer")
    if found:
        return found
    beside = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
    return str(beside) if beside.is_file() else sys.executable


def workerEnvironment(fbanetParent: str | Path) -> dict[str, str]:
    """Environment additions for a worker: ``fbanet`` first on its ``PYTHONPATH``."""
    existing = os.environ.get("PYTHONPATH", "")
    parts = [str(fbanetParent), *[p for p in existing.split(os.pathsep) if p]]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(parts))}


def missingRequirements(packages: dict[str, str] | None = None) -> list[str]:
    """Pip requirements of the packages that cannot be imported (found without importing)."""
    packages = REQUIRED_PACKAGES if packages is None else packages
    return [req for name, req in packages.items() if importlib.util.find_spec(name) is None]


def torchInstalled() -> bool:
    """Whether torch can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def describeDevices() -> str:
    """One line for the panel: the GPU that "auto" will use, or why it will use the CPU."""
    if not torchInstalled():
        return "PyTorch is not installed yet: it is set up when you first press Apply."
    try:
        import torch
    except Exception as error:  # a broken install raises anything from OSError to ImportError
        return f"PyTorch cannot be loaded ({error}); reinstall it in the PyTorch Utils module."
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        more = f" (+{count - 1} more)" if count > 1 else ""
        return f"GPU: {name}{more}, PyTorch {torch.__version__}"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return f"GPU: Apple Metal (MPS), PyTorch {torch.__version__}"
    return f"No CUDA GPU found: segmentation runs on the CPU (PyTorch {torch.__version__})."


def modelsFolder(settingsFilePath: str | Path) -> Path:
    """Where the training panel saves models: ``<settings folder>/FBANet/models``.

    Args:
        settingsFilePath: Slicer's user settings file (``slicer.app.slicerUserSettingsFilePath``);
            its folder is the per-user, per-version Slicer settings folder.
    """
    return Path(settingsFilePath).parent.joinpath(*MODELS_SUBFOLDER)
