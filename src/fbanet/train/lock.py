"""One training per run folder: an operating-system lock that dies with its process.

Two ``fbanet train`` commands given the same ``-o`` folder would write over each other's
checkpoints and logs. The first takes an exclusive lock on ``<run>/.fbanet-train.lock``
(``flock`` on POSIX, ``msvcrt.locking`` on Windows) and writes its pid there; the second is
refused, naming the folder and that pid. The operating system drops the lock when the owner
ends in any way (Ctrl-C, a crash, SIGKILL), so a killed run can be resumed at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType
from typing import IO

LOCK_NAME = ".fbanet-train.lock"
# Windows locks a byte range that readers cannot read: lock a byte past the pid.
_WINDOWS_LOCK_OFFSET = 1 << 20


def _try_lock(handle: IO[str]) -> bool:
    """Take the lock without waiting; False when another process holds it."""
    try:
        if sys.platform == "win32":
            import msvcrt

            handle.seek(_WINDOWS_LOCK_OFFSET)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(handle: IO[str]) -> None:
    if sys.platform == "win32":
        import msvcrt

        handle.seek(_WINDOWS_LOCK_OFFSET)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _owner(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()[:20] or "unknown"
    except OSError:
        return "unknown"


class RunFolderLock:
    """Context manager holding the run folder's lock for the whole training.

    Args:
        run_dir: The run folder. Created if needed; a folder this lock created is removed
            again on release when it is still empty (a run refused at start leaves none).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._handle: IO[str] | None = None
        self._created: list[Path] = []  # folders this lock made, innermost first

    def acquire(self) -> None:
        """Take the lock and record this process's pid.

        Raises:
            ValueError: Another process holds it: the folder and that process's pid named.
        """
        self._created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            handle = self.path.open("a+", encoding="utf-8")
            if not _try_lock(handle):
                handle.close()
                self._remove_created_folder()
                raise ValueError(
                    f"the run folder {str(self.run_dir)!r} is in use by another training "
                    f"(pid {_owner(self.path)}); wait for it to end or stop it, resume it "
                    "later with --resume, or give another -o folder"
                )
            # The previous owner may have removed the file between our open and lock.
            if self.path.exists() and os.path.samefile(self.path, handle.name):
                break
            _unlock(handle)
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Remove the lock file, then drop the lock (the run folder stays unless empty)."""
        if self._handle is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked: no one can take this inode
        _unlock(self._handle)
        self._handle.close()
        self._handle = None
        self._remove_created_folder()

    def _remove_created_folder(self) -> None:
        for folder in self._created:
            try:
                folder.rmdir()  # only when empty: a run that started keeps its folder
            except OSError:
                return

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()
