"""Where training runs live on disk, and their cleaning up.

A run folder holds uncompressed copies of every volume and label map of the scene, the
checkpoints and the log: gigabytes for a real cohort. Runs go under Slicer's temporary
folder (``slicer.app.temporaryPath``, which the user sets in the application settings), not
the system's; a run's folder is deleted when the next run starts or Slicer exits, and
folders left behind (a crash, another session) are deleted after a week. Deleting happens
in a background thread: the GUI never waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

RUNS_SUBFOLDER = ("FBANet", "runs")
MAX_AGE_SECONDS = 7 * 24 * 3600
TRASH_PREFIX = ".deleting-"  # a run folder being deleted (see deleteInBackground)


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


def deleteInBackground(folder: Path, root: Path) -> threading.Thread | None:
    """Delete ``folder`` without making the caller (the GUI) wait for gigabytes to go.

    The folder is first renamed to a hidden ``<root>/.deleting-...`` name (instant, unless it
    has one already), so it is gone from its place at once; a daemon thread then removes it.
    One that Slicer's exit cuts short is removed by the next :func:`pruneRunFolders`.
    Returns the thread (None when there was nothing to delete).
    """
    if not folder.exists():
        return None
    target = folder
    if not folder.name.startswith(TRASH_PREFIX):
        with contextlib.suppress(OSError):  # a file in use (Windows): delete it where it is
            target = folder.rename(root / f"{TRASH_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}")
    thread = threading.Thread(
        target=shutil.rmtree, args=(target,), kwargs={"ignore_errors": True}, daemon=True,
        name=f"FBANet: deleting {folder.name}",
    )  # fmt: skip
    thread.start()
    return thread


def discardRunFolder(runDir: Path, root: Path) -> threading.Thread | None:
    """Delete ``runDir`` in the background if it lies inside ``root`` (a folder the user
    chose is kept); returns the deleting thread, None when nothing is deleted."""
    try:
        runDir.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return deleteInBackground(runDir, root)


def pruneRunFolders(
    root: Path, maxAgeSeconds: float = MAX_AGE_SECONDS, keep: Path | None = None,
    now: float | None = None,
) -> list[threading.Thread]:  # fmt: skip
    """Delete, in the background, the run folders under ``root`` untouched for
    ``maxAgeSeconds`` and what an earlier deletion left; returns the deleting threads."""
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    threads = []
    for folder in root.iterdir():
        if not folder.is_dir() or (keep is not None and folder.resolve() == keep.resolve()):
            continue
        leftover = folder.name.startswith(TRASH_PREFIX)
        if leftover or now - folder.stat().st_mtime > maxAgeSeconds:
            thread = deleteInBackground(folder, root)
            if thread is not None:
                threads.append(thread)
            logger.info("removing the old training run %s", folder)
    return threads
