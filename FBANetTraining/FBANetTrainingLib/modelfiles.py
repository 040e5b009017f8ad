"""Model files of the models folder: the atomic copy that registers or imports one.

A leaf of ``FBANetTrainingLib`` (only fbanet's own I/O below it): the logic registers a
run's model with it and ``jobexport`` imports a model trained elsewhere with it, so neither
of those two modules imports the other.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fbanet.io.atomic import atomic_write


def copyModelFile(source: Path, target: Path) -> Path:
    """Copy a model file into the models folder atomically (a hidden temporary, renamed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(target, lambda temporary: shutil.copyfile(source, temporary))
