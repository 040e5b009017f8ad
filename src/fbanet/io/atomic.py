"""Atomic file writes: readers see the old file or the complete new one, never a part.

:func:`atomic_write` writes one file to a hidden temporary sibling and renames it into place.
Inside :func:`staged_writes`, every :func:`atomic_write` only writes its temporary file; all
of them are renamed into place together when the block ends without an error, and all are
removed when it fails, so one run's outputs appear together or not at all.

A failed write is reported against the path the user gave (never the hidden temporary name),
and a full disk as "no space left on ..." with the folder, whatever library did the writing.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

# A write failing while less than this is free is taken as a full disk: libraries such as ITK
# report it in their own words, without errno.
DISK_FULL_BYTES = 1 << 20

# The (temporary, final) pairs of the innermost staged_writes block, if one is active.
_STAGE: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar(
    "fbanet_staged_writes", default=None
)


def _temporary_sibling(path: Path) -> Path:
    stem, ext = path.name, ""
    # Keep every suffix ("a.seg.nrrd" -> ".a.tmp-xx.seg.nrrd") so writers chosen by
    # extension (SimpleITK, h5py users) still recognize the file.
    body = stem.lstrip(".")
    if "." in body:
        cut = len(stem) - len(body) + body.index(".")
        stem, ext = stem[:cut], stem[cut:]
    for _ in range(100):
        candidate = path.with_name(f".{stem.lstrip('.')}.tmp-{secrets.token_hex(4)}{ext}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"could not find a free temporary name next to {path}")


def _default_mode(path: Path) -> int:
    """The mode an existing ``path`` has, else what a new file gets under the umask."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def disk_is_full(folder: Path) -> bool:
    """Whether the file system holding ``folder`` has (almost) no space left."""
    try:
        return shutil.disk_usage(folder).free < DISK_FULL_BYTES
    except OSError:
        return False


def no_space_error(path: Path) -> OSError:
    """The error for a write to ``path`` that ran out of disk space."""
    return OSError(
        errno.ENOSPC,
        f"no space left on the disk holding {path.parent} while writing {path}; free some "
        "space or choose another output folder (nothing was written)",
    )


def check_output_folder(path: Path) -> None:
    """Refuse an output ``path`` whose folder cannot exist, with what to do instead.

    Raises:
        NotADirectoryError: A parent of ``path`` is a file.
    """
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(
                    errno.ENOTDIR,
                    f"cannot write {path}: {parent} is a file, not a folder; choose another "
                    "output location",
                )
            return


def _user_error(path: Path, error: BaseException) -> BaseException:
    """``error`` restated against ``path`` (a full disk as such), or ``error`` itself."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return no_space_error(path)
    if isinstance(error, OSError) and error.errno is not None:
        # OSError(errno, text) picks the subclass (PermissionError, ...) from the errno.
        return OSError(error.errno, f"cannot write {path}: {error.strerror or error}")
    if isinstance(error, Exception) and disk_is_full(path.parent):
        return no_space_error(path)
    return error


def _write_temporary(path: Path, write_fn: Callable[[Path], object]) -> Path:
    """Write ``path``'s content to a synced temporary sibling; returns the temporary path."""
    check_output_folder(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist; create it first")
    tmp = _temporary_sibling(path)
    try:
        write_fn(tmp)
        if not tmp.is_file():
            raise RuntimeError(f"the writer did not create {tmp}")
        with open(tmp, "r+b") as handle:
            os.fsync(handle.fileno())
        # Some writers (safetensors) create owner-only files; give the usual permissions.
        os.chmod(tmp, _default_mode(path))
    except BaseException as error:
        translated = _user_error(path, error)
        tmp.unlink(missing_ok=True)
        if translated is not error:
            raise translated from error
        raise
    return tmp


def atomic_write(path: str | os.PathLike[str], write_fn: Callable[[Path], object]) -> Path:
    """Write a file so readers see either the old file or the complete new one.

    ``write_fn`` writes to a temporary file in the same folder, whose name ends with the
    same suffixes as ``path``; it then replaces ``path`` in one ``os.replace`` (inside
    :func:`staged_writes`, when the block ends). If ``write_fn`` raises, the temporary file
    is removed and ``path`` is left untouched.

    Args:
        path: The final file.
        write_fn: Called with the temporary path; must create that file.

    Returns:
        ``path`` as a Path.

    Raises:
        FileNotFoundError: The folder of ``path`` does not exist.
        NotADirectoryError: A parent of ``path`` is a file.
        OSError: The write failed; the message names ``path`` ("no space left on ..." for
            a full disk).
    """
    path = Path(path)
    tmp = _write_temporary(path, write_fn)
    stage = _STAGE.get()
    if stage is not None:
        stage.append((tmp, path))
        return path
    try:
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise _user_error(path, error) from error
    return path


@contextlib.contextmanager
def staged_writes() -> Iterator[None]:
    """Hold every :func:`atomic_write` of the block back until all of them succeeded.

    On success the files are renamed into place together (renames cannot run out of space);
    on any error every temporary file of the block is removed and no final file is touched.
    """
    if _STAGE.get() is not None:  # nested: the outer block decides
        yield
        return
    stage: list[tuple[Path, Path]] = []
    token = _STAGE.set(stage)
    try:
        yield
    except BaseException:
        for tmp, _ in stage:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _STAGE.reset(token)
    for index, (tmp, path) in enumerate(stage):
        try:
            os.replace(tmp, path)
        except OSError as error:
            for later, _ in stage[index:]:
                later.unlink(missing_ok=True)
            raise _user_error(path, error) from error


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: after resolving ``..``, ``.`` and links, or a hard link."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwriting_inputs(
    outputs: Iterable[Path | None], inputs: Mapping[str, Iterable[Path | None]]
) -> None:
    """Refuse to write any output over an input (the image, a ROI, the model, a manifest).

    Args:
        outputs: Every file the command will write (None entries are skipped).
        inputs: What each group of inputs is (e.g. ``"image"``, ``"model"``) and its files.

    Raises:
        ValueError: An output resolves to an input, however it is spelled; the input would be
            lost, so nothing is written.
    """
    named = [(what, Path(p)) for what, paths in inputs.items() for p in paths if p is not None]
    for output in (Path(p) for p in outputs if p is not None):
        for what, source in named:
            if _same_file(output, source):
                raise ValueError(
                    f"the output {str(output)!r} is the input {what} {str(source)!r}: writing "
                    "it would destroy the input; choose another output name"
                )
