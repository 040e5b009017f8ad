"""Completeness checks for image files that SimpleITK reads or writes without complaint
when they are cut short.

SimpleITK (ITK's NIfTI reader) fills the missing part of a truncated ``.nii`` or ``.nii.gz``
with zeros, and its NIfTI writer does not report a disk that fills up. NRRD and MetaImage
truncation is reported by ITK itself. These checks read the NIfTI header's data size and
compare it with what the file (the decompressed stream for gzip) holds; a gzip stream is
also read to its end, which checks its CRC and end marker.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

_CHUNK = 1 << 22
_NIFTI1_HEADER = 348
_NIFTI2_HEADER = 540


def _gzip_length(path: Path) -> int:
    """Decompressed length of a gzip file, read to its end (CRC and end marker checked)."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(
            f"{path} is truncated or damaged ({error}); copy or download it again"
        ) from error
    return total


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Header plus voxel bytes that a NIfTI-1/2 header announces; None if not NIfTI."""
    for order in "<>":
        if len(header) >= _NIFTI1_HEADER and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = max(int(struct.unpack(order + "f", header[108:112])[0]), _NIFTI1_HEADER)
            break
        if len(header) >= _NIFTI2_HEADER and struct.unpack(order + "i", header[:4])[0] == 540:
            dims = struct.unpack(order + "8q", header[16:80])
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            offset = max(struct.unpack(order + "q", header[168:176])[0], _NIFTI2_HEADER)
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return None
    voxels = 1
    for size in dims[1 : dims[0] + 1]:
        voxels *= max(int(size), 1)
    return offset + voxels * bitpix // 8


def _read_head(path: Path, compressed: bool) -> bytes:
    opener = gzip.open if compressed else open
    with opener(path, "rb") as stream:
        return bytes(stream.read(_NIFTI2_HEADER))


def check_complete(path: str | Path) -> None:
    """Refuse a ``.nii``/``.nii.gz`` (or any ``.gz``) file that is shorter than it says.

    Other formats are left to their readers, which report truncation themselves.

    Raises:
        ValueError: The gzip stream is cut short or damaged, or the NIfTI voxel data is
            shorter than the header announces; the message says how much is missing.
    """
    path = Path(path)
    name = path.name.lower()
    compressed = name.endswith(".gz")
    if not (compressed or name.endswith(".nii")):
        return
    length = _gzip_length(path) if compressed else path.stat().st_size
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return
    try:
        expected = _nifti_expected_bytes(_read_head(path, compressed))
    except (OSError, EOFError, struct.error):
        expected = None
    if expected is not None and length < expected:
        raise ValueError(
            f"{path} is truncated: its header announces {expected} bytes of image, it holds "
            f"{length} ({int(100 * length / expected)}%); copy or write it again"
        )
