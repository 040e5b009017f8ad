"""Finding the fbanet package, and where models live; the rest is in fbanet itself.

This runs before ``fbanet`` can be imported (a source checkout adds ``<repo>/src`` here), so it
imports nothing of fbanet, Qt, Slicer or torch. What workers need (their Python, packages,
devices) is :mod:`fbanet.cli.environment`, shared with FBANet Training.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

MODELS_SUBFOLDER = ("FBANet", "models")


def sourceTreeFbanetFolder(moduleDir: str | Path) -> Path | None:
    """The repository's ``src`` folder when a module runs from a source checkout, else None.

    A module folder ``<repo>/FBANetSegmentation`` has the package at ``<repo>/src/fbanet``.
    """
    candidate = Path(moduleDir).resolve().parent / "src"
    return candidate if (candidate / "fbanet" / "__init__.py").is_file() else None


def ensureFbanetImportable(moduleDir: str | Path) -> Path:
    """Make ``import fbanet`` and ``import fbanet_slicer`` work; returns fbanet's folder.

    An installed extension has both packages next to the modules (already on ``sys.path``);
    a source checkout run with ``--additional-module-paths`` gets ``<repo>/src`` added.

    Raises:
        ImportError: fbanet is neither importable nor in a source checkout next to the module.
    """
    try:
        import fbanet
        import fbanet_slicer  # noqa: F401 (the Slicer-side helpers both modules use)
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


def modelsFolder(settingsFilePath: str | Path) -> Path:
    """Where the training panel saves models: ``<settings folder>/FBANet/models``.

    Args:
        settingsFilePath: Slicer's user settings file (``slicer.app.slicerUserSettingsFilePath``);
            its folder is the per-user, per-version Slicer settings folder.
    """
    return Path(settingsFilePath).parent.joinpath(*MODELS_SUBFOLDER)
