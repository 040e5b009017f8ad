"""Where training runs live on disk, and their cleaning up.

A run folder holds uncompressed copies of every volume and label map of the scene, the
checkpoints and the log: gigabytes for a real cohort. Runs go under Slicer's temporary
folder (``slicer.app.temporaryPath``, which the user sets in the application settings), not
the system's; a run's folder is deleted when the next run starts or Slicer exits, and
folders left behind (a crash, another session) are deleted after a week.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

RUNS_SUBFOLDER = ("FBANet", "runs")
MAX_AGE_SECONDS = 7 * 24 * 3600


def runsRoot() -> Path:
    """``<Slicer temporary folder>/FBANet/runs`` (the system's temporary folder outside Slicer)."""
    try:
        import slicer

        base = Path(slicer.app.temporaryPath)
    except (ImportError, AttributeError):  # slicer-core (no application) or plain Python
        base = Path(tempfile.gettempdir())
    return base.joinpath(*RUNS_SUBFOLDER)


def newRunFolder(root: Path, name: str) -> Path:
    """A new, empty ``<root>/<name>-<date>-<time>-<random>`` folder."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.mkdtemp(prefix=f"{name}-{stamp}-", dir=root))


def discardRunFolder(runDir: Path, root: Path) -> bool:
    """Delete ``runDir`` if it lies inside ``root`` (a folder the user chose is kept)."""
    try:
        runDir.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    shutil.rmtree(runDir, ignore_errors=True)
    return not runDir.exists()


def pruneRunFolders(
    root: Path, maxAgeSeconds: float = MAX_AGE_SECONDS, keep: Path | None = None,
    now: float | None = None,
) -> list[Path]:  # fmt: skip
    """Delete the run folders under ``root`` untouched for ``maxAgeSeconds``; returns them."""
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for folder in root.iterdir():
        if not folder.is_dir() or (keep is not None and folder.resolve() == keep.resolve()):
            continue
        if now - folder.stat().st_mtime > maxAgeSeconds:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            logger.info("removed the old training run %s", folder)
    return removed
