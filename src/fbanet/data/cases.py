"""Training cases: loading and validating image/label pairs.

Every array here is (X, Y, Z). Images become float32 (normalized), labels uint8 class
indices aligned voxel-for-voxel with their image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import SimpleITK as sitk

from fbanet.config import IntensityNormalization, check_int, parse_enum
from fbanet.data.manifest import CaseRef
from fbanet.data.preprocess import normalize
from fbanet.io.volumes import (
    Geometry,
    Volume,
    grid_difference,
    is_hdf5,
    read_volume,
    split_extension,
)

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Case:
    """One image, optionally with its label.

    Attributes:
        name: Identifier (file name without extension by default).
        image: float32 (X, Y, Z), normalized.
        label: uint8 (X, Y, Z) class indices on the image grid, or None.
        spacing: Voxel size (mm, X, Y, Z) of the image.
    """

    name: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]


def _h5_has_dataset(path: Path, dataset: str) -> bool:
    # Only called after read_volume opened the same file, so it is valid HDF5.
    with h5py.File(path, "r") as handle:
        return isinstance(handle.get(dataset), h5py.Dataset)


def has_geometry(path: Path, dataset: str) -> bool:
    """Whether ``path`` stores its own geometry (HDF5 only with a ``spacing`` attribute)."""
    if not is_hdf5(path):
        return True
    with h5py.File(path, "r") as handle:
        return "spacing" in handle[dataset].attrs or "spacing" in handle.attrs


def _check_label_values(label: np.ndarray, num_classes: int, source: Path) -> np.ndarray:
    if label.dtype.kind not in "biuf":
        raise ValueError(f"label {source} has non-numeric dtype {label.dtype}")
    if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):
        raise ValueError(f"label {source} holds non-integer values; class indices are needed")
    low, high = label.min(), label.max()
    if low < 0 or high > num_classes - 1:
        bad = np.unique(label[(label < 0) | (label > num_classes - 1)])[:10]
        raise ValueError(
            f"label {source} has values {bad.tolist()} outside 0..{num_classes - 1}; "
            f"check num_classes ({num_classes}) or remap the label"
        )
    return label.astype(np.uint8)


def _blank(shape: tuple[int, ...], geometry: Geometry, value: int) -> sitk.Image:
    image = sitk.Image([int(s) for s in shape], sitk.sitkUInt8)
    if value:
        image += value
    return geometry.to_sitk(image)


def _resample_label(
    label: Volume,
    image_shape: tuple[int, ...],
    image_geom: Geometry,
    names: str,
    allow_partial: bool,
) -> np.ndarray:
    """Nearest-neighbour resample of ``label`` onto the image grid (outside -> 0)."""
    reference = _blank(image_shape, image_geom, 0)
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampler.SetDefaultPixelValue(0)
    # Resampling an all-ones image on the label grid shows which image voxels it covers.
    coverage = resampler.Execute(_blank(label.array.shape, label.geometry, 1))
    covered = float(sitk.GetArrayViewFromImage(coverage).mean())
    if covered == 0.0:
        difference = grid_difference(image_shape, image_geom, label.array.shape, label.geometry)
        raise ValueError(
            f"{names} do not overlap in physical space (image vs label: {difference}); "
            "is the label for this image?"
        )
    if covered < 1.0 and not allow_partial:
        raise ValueError(
            f"{names}: the label covers only {100 * covered:.1f}% of the image, and training "
            "would teach the rest as background; give a label over the whole image (or crop "
            "the image to the label), or pass --allow-partial-labels if the rest truly is "
            "background"
        )
    if covered < 1.0:
        logger.warning("%s: label covers %.1f%% of the image grid", names, 100 * covered)
    out = resampler.Execute(label.to_sitk())
    return np.ascontiguousarray(sitk.GetArrayFromImage(out).transpose(2, 1, 0))


def align_label(
    image: Volume,
    label: Volume,
    image_path: Path,
    label_path: Path,
    geometry_known: bool,
    allow_partial: bool = True,
) -> np.ndarray:
    """``label``'s array on ``image``'s grid: as is, or resampled (nearest) when it differs.

    Training and evaluation both align their pairs with this, so they accept the same ones.

    Args:
        image: The scan.
        label: Its label, on any grid that overlaps the scan.
        image_path: For messages.
        label_path: For messages.
        geometry_known: False when a file stores no geometry (HDF5 without ``spacing``):
            the grids must then have the same size.
        allow_partial: Accept a label that covers only part of the image (the rest is
            background); training refuses it unless asked.

    Raises:
        ValueError: The grids do not overlap, differ in size without known geometry, or
            have the same size but another spacing (almost always a label that lost its
            geometry); a partial label when not allowed.
    """
    names = f"image {image_path} and label {label_path}"
    same_shape = label.array.shape == image.array.shape
    if not geometry_known:
        if not same_shape:
            raise ValueError(
                f"{names} have different shapes ({image.array.shape} vs "
                f"{label.array.shape}) and HDF5 stores no geometry to align them"
            )
        return label.array
    if same_shape and image.geometry.matches(label.geometry):
        return label.array
    if same_shape and not np.allclose(
        image.geometry.spacing, label.geometry.spacing, rtol=0.0, atol=1e-4
    ):
        difference = grid_difference(
            image.array.shape, image.geometry, label.array.shape, label.geometry
        )
        raise ValueError(
            f"{names} lie on different voxel grids (image vs label: {difference}); scores "
            "would compare unrelated voxels. A label of its image's size with another spacing "
            "has almost always lost its geometry (saved from numpy, for example): write it "
            "again with the image's spacing, origin and direction (SimpleITK: "
            "label.CopyInformation(image)), or resample it onto the image if it truly lies "
            "on another grid"
        )
    logger.info("%s: label geometry differs; resampling it onto the image grid", names)
    return _resample_label(label, image.array.shape, image.geometry, names, allow_partial)


def _load_label(
    image: Volume,
    image_path: Path,
    label_path: Path | None,
    *,
    num_classes: int,
    h5_spacing: Sequence[float] | None,
    require_label: bool,
    allow_partial: bool,
) -> np.ndarray | None:
    """The validated uint8 label on the image grid, or None."""
    if label_path is None and is_hdf5(image_path) and _h5_has_dataset(image_path, "label"):
        label_path = image_path
    if label_path is None:
        if require_label:
            raise ValueError(
                f"no label for image {image_path}: give a label file, or an HDF5 file with "
                "a 'label' dataset"
            )
        return None
    label_vol = read_volume(label_path, dataset="label", h5_spacing=h5_spacing)
    values = _check_label_values(label_vol.array, num_classes, label_path)
    geometry_known = has_geometry(image_path, "image") and has_geometry(label_path, "label")
    label = align_label(
        image, Volume(values, label_vol.geometry), image_path, label_path, geometry_known,
        allow_partial,
    )  # fmt: skip
    if not label.any():
        raise ValueError(
            f"label {label_path} has no foreground voxel on the grid of image "
            f"{image_path}; an empty label cannot supervise training"
        )
    return label


def load_case(
    image_path: PathLike,
    label_path: PathLike | None = None,
    *,
    normalization: IntensityNormalization | str,
    num_classes: int = 2,
    h5_spacing: Sequence[float] | None = None,
    name: str | None = None,
    require_label: bool = False,
    read_label: bool = True,
    allow_partial_label: bool = False,
) -> Case:
    """Load, validate and normalize one case.

    Args:
        image_path: Image file or DICOM folder (see :func:`fbanet.io.volumes.read_volume`).
        label_path: Label file; None takes the ``label`` dataset of an HDF5 image if any.
        normalization: ``ZSCORE`` (over the whole scan) or ``AS_STORED``.
        num_classes: Label values must lie in 0..num_classes-1.
        h5_spacing: Spacing (mm, X, Y, Z) of HDF5 data without a ``spacing`` attribute.
        name: Case name; defaults to the image file name without extension.
        require_label: Fail when no label is found.
        read_label: False ignores any label (unlabeled cases).
        allow_partial_label: Accept a label (on another grid) that covers only part of the
            image; the rest is then background.

    Returns:
        The case: image float32 (X, Y, Z), label uint8 (X, Y, Z) or None.

    Raises:
        ValueError: Bad image (not 3D, NaN/inf, constant under ``ZSCORE``) or bad label
            (missing when required, values out of range, no foreground, not alignable).
    """
    mode = parse_enum(IntensityNormalization, normalization)
    if not 2 <= check_int("num_classes", num_classes, 2) <= 256:
        raise ValueError(f"num_classes must be in 2..256 (uint8 labels), got {num_classes}")
    if require_label and not read_label:
        raise ValueError("require_label=True contradicts read_label=False")
    image_path = Path(image_path)
    image = read_volume(image_path, dataset="image", h5_spacing=h5_spacing)
    if image.array.dtype.kind not in "biuf":
        raise ValueError(f"image {image_path} has non-numeric dtype {image.array.dtype}")
    finite = np.isfinite(image.array)
    if not finite.all():
        raise ValueError(
            f"image {image_path} has {int(finite.size - finite.sum())} NaN or infinite "
            "voxels; fix or mask them before training"
        )
    label = None
    if read_label:
        label = _load_label(
            image,
            image_path,
            None if label_path is None else Path(label_path),
            num_classes=num_classes,
            h5_spacing=h5_spacing,
            require_label=require_label,
            allow_partial=allow_partial_label,
        )
    case_name = name if name is not None else split_extension(image_path)[0]
    spacing = image.geometry.spacing
    try:
        normalized = normalize(image.array, mode)
    except ValueError as exc:
        raise ValueError(f"image {image_path}: {exc}") from exc
    return Case(case_name, normalized, label, spacing)


def load_cases(
    refs: Sequence[CaseRef],
    *,
    normalization: IntensityNormalization | str,
    num_classes: int = 2,
    h5_spacing: Sequence[float] | None = None,
    require_label: bool = False,
    read_label: bool = True,
    allow_partial_label: bool = False,
) -> list[Case]:
    """Load several cases with :func:`load_case` (same options for all).

    Returns:
        The cases, in the order of ``refs``.
    """
    cases = []
    for i, ref in enumerate(refs):
        cases.append(
            load_case(
                ref.image,
                ref.label,
                normalization=normalization,
                num_classes=num_classes,
                h5_spacing=h5_spacing,
                name=ref.name,
                require_label=require_label,
                read_label=read_label,
                allow_partial_label=allow_partial_label,
            )
        )
        logger.debug("loaded case %d/%d: %s", i + 1, len(refs), ref.name)
    logger.info("loaded %d case(s)", len(cases))
    return cases
