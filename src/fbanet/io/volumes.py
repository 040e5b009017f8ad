"""Volume I/O: HDF5, NRRD, NIfTI, MetaImage and DICOM series, with atomic writes.

Arrays are always in (X, Y, Z) axis order, like the HDF5 training files. SimpleITK's
``GetArrayFromImage`` returns (Z, Y, X), so every conversion here transposes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import SimpleITK as sitk

from fbanet.io.atomic import atomic_write, disk_is_full, no_space_error
from fbanet.io.integrity import check_complete

logger = logging.getLogger(__name__)

HDF5_EXTENSIONS: tuple[str, ...] = (".h5", ".hdf5")
# Longest first so ".nii.gz" wins over a bare ".gz".
SITK_READ_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd")
# Detached-header formats (.nhdr, .mhd) are left out: their header names the data file, so a
# header renamed from a temporary name would point at the wrong file.
WRITE_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nrrd", ".nii", ".mha")
_SUPPORTED_READ = ", ".join((*HDF5_EXTENSIONS, *SITK_READ_EXTENSIONS)) + ", or a DICOM folder"

# SimpleITK has no bool or float16 pixel type; these are widened losslessly.
_WIDEN = {np.dtype(bool): np.uint8, np.dtype(np.float16): np.float32}


def split_extension(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Split a file name into (stem, extension), treating ``.nii.gz`` as one extension.

    Args:
        path: A file path.

    Returns:
        The name without the extension, and the lower-case extension ('' if none).
    """
    name = Path(path).name
    lower = name.lower()
    for ext in (*SITK_READ_EXTENSIONS, *HDF5_EXTENSIONS):
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], ext
    suffix = Path(name).suffix
    return name[: len(name) - len(suffix)], suffix.lower()


def is_hdf5(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has an HDF5 extension (``.h5`` or ``.hdf5``)."""
    return split_extension(path)[1] in HDF5_EXTENSIONS


def _float_tuple(name: str, values: Sequence[float], length: int) -> tuple[float, ...]:
    try:
        result = tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be {length} numbers, got {values!r}") from exc
    if len(result) != length or not all(math.isfinite(v) for v in result):
        raise ValueError(f"{name} must be {length} finite numbers, got {values!r}")
    return result


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a voxel grid, in SimpleITK's (LPS) convention.

    Attributes:
        spacing: Voxel size in mm along X, Y, Z.
        origin: Physical position (mm) of the centre of voxel (0, 0, 0).
        direction: 3x3 direction cosine matrix, row-major (9 values), as SimpleITK.
    """

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        spacing = _float_tuple("spacing", self.spacing, 3)
        if any(s <= 0 for s in spacing):
            raise ValueError(f"spacing must be positive, got {self.spacing!r}")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", _float_tuple("origin", self.origin, 3))
        object.__setattr__(self, "direction", _float_tuple("direction", self.direction, 9))

    def to_sitk(self, image: sitk.Image) -> sitk.Image:
        """Set this geometry on a 3D SimpleITK image, in place; returns the image."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Geometry:
        """The geometry of a 3D SimpleITK image."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    def matches(self, other: Geometry, tol: float = 1e-4) -> bool:
        """Whether spacing, origin and direction agree with ``other`` within ``tol``."""
        return all(
            np.allclose(getattr(self, f), getattr(other, f), rtol=0.0, atol=tol)
            for f in ("spacing", "origin", "direction")
        )


def _rounded(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


def grid_difference(
    shape: Sequence[int], geometry: Geometry, other_shape: Sequence[int], other: Geometry
) -> str:
    """What differs between two voxel grids, e.g. "size (8, 8, 8) vs (9, 8, 8)"; '' if none.

    Every check of whether two volumes lie on the same grid (training pairs, evaluation,
    scoring saved files) uses this, so they agree and their messages say what differs.
    """
    parts = []
    if tuple(shape) != tuple(other_shape):
        parts.append(f"size {tuple(int(s) for s in shape)} vs {tuple(int(s) for s in other_shape)}")
    for name in ("spacing", "origin", "direction"):
        mine, theirs = getattr(geometry, name), getattr(other, name)
        if not np.allclose(mine, theirs, rtol=0.0, atol=1e-4):
            parts.append(f"{name} {_rounded(mine)} vs {_rounded(theirs)}")
    return "; ".join(parts)


def _describe_sitk(image: sitk.Image) -> str:
    size = tuple(image.GetSize())
    comps = image.GetNumberOfComponentsPerPixel()
    return f"size {size}" + (f" with {comps} components per voxel" if comps > 1 else "")


def _check_sitk_3d(image: sitk.Image, source: str) -> None:
    dim = image.GetDimension()
    if dim != 3:
        raise ValueError(
            f"{source} is a {dim}D image ({_describe_sitk(image)}); a single 3D volume is "
            "needed: for a 2D slice, supply the full volume; for 4D data, extract one frame"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{source} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            f"(size {tuple(image.GetSize())}); a single-channel (scalar) 3D volume is needed: "
            "convert it to grayscale or extract one channel"
        )


@dataclass
class Volume:
    """A 3D array with its physical geometry.

    Attributes:
        array: Voxel values, shape (X, Y, Z).
        geometry: Spacing, origin and direction of the grid.
    """

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            raise TypeError(f"array must be a numpy array, got {type(self.array).__name__}")
        if self.array.ndim != 3:
            raise ValueError(f"array must be 3D (X, Y, Z), got shape {self.array.shape}")

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image of this volume (size X, Y, Z; geometry set)."""
        array = self.array
        if array.dtype.kind not in "biuf":
            raise TypeError(
                f"cannot convert an array of dtype {array.dtype} to an image; use an integer "
                "or real dtype"
            )
        if array.dtype in _WIDEN:
            array = array.astype(_WIDEN[array.dtype])
        try:
            image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        except (RuntimeError, TypeError) as exc:
            raise TypeError(f"cannot convert an array of dtype {array.dtype} to an image") from exc
        return self.geometry.to_sitk(image)

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        """A volume from a scalar 3D SimpleITK image."""
        _check_sitk_3d(image, "the image")
        array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))
        return cls(array, Geometry.from_sitk(image))


def _h5_dataset_names(handle: h5py.File) -> list[str]:
    names: list[str] = []
    handle.visititems(
        lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None
    )
    return names


def _hdf5_spacing(
    path: Path, handle: h5py.File, node: h5py.Dataset, h5_spacing: Sequence[float] | None
) -> Any:
    """The dataset's ``spacing`` attribute, else the file's, else ``h5_spacing``; never a guess."""
    for attrs in (node.attrs, handle.attrs):
        if "spacing" in attrs:
            return attrs["spacing"]
    if h5_spacing is None:
        raise ValueError(
            f"{path} is HDF5, which stores no voxel spacing here (no 'spacing' attribute): give "
            "it with --h5-spacing X Y Z in mm (h5_spacing= in Python); the LA data set's is "
            "0.625 0.625 0.625"
        )
    return h5_spacing


def _read_hdf5(path: Path, dataset: str, h5_spacing: Sequence[float] | None) -> Volume:
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"cannot read {path} as HDF5 ({exc}); is the file complete?") from exc
    with handle:
        node = handle.get(dataset)
        if not isinstance(node, h5py.Dataset):
            raise ValueError(
                f"{path} has no dataset {dataset!r}; datasets present: "
                f"{_h5_dataset_names(handle) or 'none'}"
            )
        if node.ndim != 3:
            raise ValueError(
                f"dataset {dataset!r} of {path} has shape {node.shape}; a 3D (X, Y, Z) "
                "array is needed"
            )
        array = np.asarray(node[()])
        attrs = node.attrs
        spacing = _hdf5_spacing(path, handle, node, h5_spacing)
        try:
            geometry = Geometry(
                spacing,
                attrs.get("origin", (0.0, 0.0, 0.0)),
                attrs.get("direction", Geometry().direction),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad geometry attributes on {dataset!r} of {path}: {exc}") from exc
    return Volume(array, geometry)


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ValueError(
            f"{folder} is a folder without a DICOM series; give a DICOM series folder or an "
            f"image file ({_SUPPORTED_READ})"
        )
    files = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series}
    chosen = max(series, key=lambda sid: len(files[sid]))
    if len(series) > 1:
        logger.warning(
            "%s holds %d DICOM series; reading %s (%d files), the largest",
            folder,
            len(series),
            chosen,
            len(files[chosen]),
        )
    reader.SetFileNames(files[chosen])
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise ValueError(f"cannot read the DICOM series in {folder}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # SimpleITK puts the useful sentence last, after source locations.
    return lines[-1] if lines else type(exc).__name__


def read_volume(
    path: str | os.PathLike[str],
    *,
    dataset: str = "image",
    h5_spacing: Sequence[float] | None = None,
) -> Volume:
    """Read a 3D scalar volume.

    Args:
        path: An ``.h5``/``.hdf5`` file, an NRRD (``.nrrd``, ``.nhdr``), NIfTI (``.nii``,
            ``.nii.gz``) or MetaImage (``.mha``, ``.mhd``) file, or a DICOM series folder.
        dataset: HDF5 only: the dataset to read.
        h5_spacing: HDF5 only: spacing (mm, X, Y, Z) when neither the dataset nor the file
            has a ``spacing`` attribute; required then (HDF5 has no standard geometry, and a
            wrong spacing gives plausible but wrong results). Origin defaults to 0 and
            direction to identity.

    Returns:
        The volume, array (X, Y, Z) with the dtype as stored.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: Unsupported extension, unreadable or truncated file, not a scalar 3D
            image, an HDF5 file without ``dataset``, or HDF5 without spacing and no
            ``h5_spacing``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; check the path")
    if path.is_dir():
        image = _read_dicom_series(path)
    else:
        ext = split_extension(path)[1]
        if ext in HDF5_EXTENSIONS:
            return _read_hdf5(path, dataset, h5_spacing)
        if ext not in SITK_READ_EXTENSIONS:
            raise ValueError(
                f"{path} has an unsupported extension {ext!r}; supported: {_SUPPORTED_READ}"
            )
        check_complete(path)  # ITK reads a truncated NIfTI as zeros without a word
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise ValueError(
                f"cannot read {path} ({_first_line(exc)}); is it a complete, valid {ext} file?"
            ) from exc
    _check_sitk_3d(image, str(path))
    return Volume.from_sitk(image)


def write_volume(volume: Volume, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write a volume with SimpleITK, atomically.

    Args:
        volume: The volume; array (X, Y, Z).
        path: Destination ending in ``.nrrd``, ``.nii``, ``.nii.gz`` or ``.mha``.
        compress: Compress the voxel data where the format allows it.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: Unsupported extension.
        TypeError: The array dtype has no SimpleITK pixel type.
    """
    path = Path(path)
    ext = split_extension(path)[1]
    if ext not in WRITE_EXTENSIONS:
        raise ValueError(
            f"cannot write {path}: extension {ext!r} is not supported for writing; use one "
            f"of {', '.join(WRITE_EXTENSIONS)}"
        )
    image = volume.to_sitk()

    def write(tmp: Path) -> None:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as exc:
            if disk_is_full(path.parent):
                raise no_space_error(path) from exc
            raise OSError(f"cannot write {path}: {_first_line(exc)}") from exc
        try:
            check_complete(tmp)  # ITK's NIfTI writer says nothing when the disk fills up
        except ValueError as exc:
            if disk_is_full(path.parent):
                raise no_space_error(path) from exc
            raise OSError(f"cannot write {path}: the file came out incomplete") from exc

    atomic_write(path, write)
    logger.debug("wrote %s (%s, %s)", path, volume.array.shape, volume.array.dtype)
    return path
