"""Segmentation metrics for binary 3D masks: Dice, Jaccard, 95% Hausdorff and average surface
distance, with the exact definitions of ``medpy.metric.binary`` (``dc``, ``jc``, ``hd95``,
``asd``) but without depending on medpy, and with explicit flags for empty masks.

Surfaces are the foreground voxels removed by one erosion with the 6-connected (face)
structuring element, where everything outside the volume counts as background, so a mask
touching the volume border has its border voxels on the surface. Distances are Euclidean in mm
(``spacing`` is the voxel size per axis) from each surface voxel of one mask to the nearest
surface voxel of the other.

medpy raises on an empty mask; here an empty mask never yields a (perfect) zero distance: one
empty mask gives ``inf`` distances, both empty give ``nan``, and :class:`CaseMetrics` says
which mask was empty.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

# The metrics of a case, in column order (fbanet.infer.report tabulates them).
METRIC_NAMES: tuple[str, ...] = ("dice", "jaccard", "hd95", "asd")
# Erosion with border_value=0 already treats everything outside the crop as background, which
# is what lies there (the crop holds both masks), so margin 0 would be exact too; one voxel of
# real background around the masks just keeps that argument independent of scipy's border rule.
_CROP_MARGIN = 1


@dataclass(frozen=True)
class CaseMetrics:
    """The metrics of one predicted mask against its reference.

    Attributes:
        dice: Dice coefficient in [0, 1] (1.0 when both masks are empty).
        jaccard: Jaccard index in [0, 1] (1.0 when both masks are empty).
        hd95: 95th percentile of the surface distances of both directions, in mm; ``inf`` when
            exactly one mask is empty, ``nan`` when both are.
        asd: Mean distance from the prediction's surface to the reference's, in mm; ``inf``
            when exactly one mask is empty, ``nan`` when both are.
        pred_empty: The prediction has no foreground voxel.
        ref_empty: The reference has no foreground voxel.
    """

    dice: float
    jaccard: float
    hd95: float
    asd: float
    pred_empty: bool
    ref_empty: bool

    def __post_init__(self) -> None:
        # Plain Python types, so that repr/CSV output never shows numpy scalar wrappers.
        for name in METRIC_NAMES:
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "pred_empty", bool(self.pred_empty))
        object.__setattr__(self, "ref_empty", bool(self.ref_empty))

    def as_dict(self) -> dict[str, float | bool]:
        """Returns the fields as a plain dictionary, in declaration order."""
        return dataclasses.asdict(self)


def _as_masks(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checks that both arrays are 3D of the same shape and returns them as boolean masks."""
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(
            f"pred and ref must have the same shape, got pred {pred.shape} and ref {ref.shape}"
        )
    if pred.ndim != 3:
        raise ValueError(f"pred and ref must be 3D masks, got shape {pred.shape}")
    return pred.astype(bool, copy=False), ref.astype(bool, copy=False)


def _as_spacing(spacing: Sequence[float] | np.ndarray) -> np.ndarray:
    """Checks that spacing is three positive finite numbers and returns it as float64."""
    message = f"spacing must be 3 positive finite numbers (voxel size in mm), got {spacing!r}"
    try:
        values = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(message) from error
    if values.shape != (3,) or not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise ValueError(message)
    return values


def _union_crop(a: np.ndarray, b: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of ``a | b`` grown by ``margin`` voxels, clipped to the volume."""
    union = a | b
    box = []
    for axis in range(union.ndim):
        other_axes = tuple(i for i in range(union.ndim) if i != axis)
        present = np.flatnonzero(np.any(union, axis=other_axes))
        start = max(int(present[0]) - margin, 0)
        stop = min(int(present[-1]) + 1 + margin, union.shape[axis])
        box.append(slice(start, stop))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background face neighbour (outside the array is background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, iterations=1, border_value=0)
    return mask ^ eroded


def _distances_to(surface: np.ndarray, targets: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from every voxel of ``targets`` to the nearest voxel of ``surface``."""
    # The EDT measures the distance to the nearest zero, so the surface must be the zeros.
    field_mm = ndimage.distance_transform_edt(~surface, sampling=spacing)
    return field_mm[targets]


def _cropped_surfaces(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Surfaces of two non-empty boolean masks, on the bounding box of both.

    The distance transforms then run on this crop only: every surface voxel of either mask lies
    inside it, so the nearest surface voxel found in the crop is the nearest one in the whole
    volume and the distances are identical to a full-volume run (a large speed-up on LA scans).
    """
    crop = _union_crop(pred, ref, _CROP_MARGIN)
    logger.debug("surface distances on crop %s of volume %s", crop, pred.shape)
    return _surface(pred[crop]), _surface(ref[crop])


def _empty_distance(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float | None:
    """The distance convention for empty masks (nan both, inf one), None if neither is empty."""
    pred_empty, ref_empty = not pred_mask.any(), not ref_mask.any()
    if pred_empty and ref_empty:
        return math.nan
    return math.inf if pred_empty or ref_empty else None


def _overlap(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[float, float]:
    """(Dice, Jaccard) of two boolean masks; (1.0, 1.0) when both are empty, as medpy."""
    n_pred = np.count_nonzero(pred_mask)
    n_ref = np.count_nonzero(ref_mask)
    if n_pred + n_ref == 0:
        return 1.0, 1.0
    n_both = np.count_nonzero(pred_mask & ref_mask)
    # Same arithmetic as medpy's dc/jc (|P|+|R|-|P∩R| is exactly |P∪R|), so the floats agree.
    return 2.0 * n_both / float(n_pred + n_ref), float(n_both) / float(n_pred + n_ref - n_both)


def _hd95_asd(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing: np.ndarray
) -> tuple[float, float]:
    """(hd95, asd) of two validated boolean masks, with the empty-mask conventions."""
    empty = _empty_distance(pred_mask, ref_mask)
    if empty is not None:
        return empty, empty
    pred_surface, ref_surface = _cropped_surfaces(pred_mask, ref_mask)
    pred_to_ref = _distances_to(ref_surface, pred_surface, spacing)
    ref_to_pred = _distances_to(pred_surface, ref_surface, spacing)
    hd95_mm = float(np.percentile(np.hstack((pred_to_ref, ref_to_pred)), 95))
    return hd95_mm, float(pred_to_ref.mean())


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2|P∩R| / (|P| + |R|)``, as ``medpy.metric.binary.dc``.

    Args:
        pred: Predicted mask, 3D, nonzero is foreground.
        ref: Reference mask of the same shape.

    Returns:
        The Dice coefficient; 1.0 when both masks are empty.

    Raises:
        ValueError: If the masks are not 3D arrays of the same shape.
    """
    return _overlap(*_as_masks(pred, ref))[0]


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index ``|P∩R| / |P∪R|``, as ``medpy.metric.binary.jc``.

    Args and Raises as :func:`dice`.

    Returns:
        The Jaccard index; 1.0 when both masks are empty.
    """
    return _overlap(*_as_masks(pred, ref))[1]


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Distance from each surface voxel of ``pred`` to the nearest surface voxel of ``ref``.

    The values (in the C order of the surface voxels) equal medpy's internal
    ``__surface_distances(pred, ref, spacing, connectivity=1)``.

    Args:
        pred: Predicted mask, 3D, nonzero is foreground.
        ref: Reference mask of the same shape.
        spacing: Voxel size in mm along each of the three axes.

    Returns:
        A float64 array with one distance (mm) per surface voxel of ``pred``: empty when
        ``pred`` is empty, all ``inf`` when only ``ref`` is empty.

    Raises:
        ValueError: If the masks are not 3D arrays of the same shape, or the spacing is bad.
    """
    pred_mask, ref_mask = _as_masks(pred, ref)
    spacing_mm = _as_spacing(spacing)
    if _empty_distance(pred_mask, ref_mask) is not None:
        return np.full(np.count_nonzero(_surface(pred_mask)), np.inf)
    pred_surface, ref_surface = _cropped_surfaces(pred_mask, ref_mask)
    return _distances_to(ref_surface, pred_surface, spacing_mm)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th percentile of the pooled surface distances of both directions, in mm.

    Equals ``medpy.metric.binary.hd95(pred, ref, voxelspacing=spacing)`` for non-empty masks.
    Args and Raises as :func:`surface_distances`.

    Returns:
        The distance in mm; ``inf`` when exactly one mask is empty, ``nan`` when both are.
    """
    pred_mask, ref_mask = _as_masks(pred, ref)
    return _hd95_asd(pred_mask, ref_mask, _as_spacing(spacing))[0]


def asd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Mean distance from the surface of ``pred`` to the surface of ``ref``, in mm.

    Equals ``medpy.metric.binary.asd(pred, ref, voxelspacing=spacing)`` for non-empty masks
    (one direction only, not the symmetric ``assd``). Args and Raises as
    :func:`surface_distances`.

    Returns:
        The distance in mm; ``inf`` when exactly one mask is empty, ``nan`` when both are.
    """
    pred_mask, ref_mask = _as_masks(pred, ref)
    empty = _empty_distance(pred_mask, ref_mask)
    if empty is not None:
        _as_spacing(spacing)  # still reject a bad spacing, whatever the masks
        return empty
    return float(surface_distances(pred_mask, ref_mask, spacing).mean())


def compute_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> CaseMetrics:
    """Computes all four metrics of one case, sharing the surface extraction between them.

    Args:
        pred: Predicted mask, 3D, any dtype, nonzero is foreground.
        ref: Reference mask of the same shape.
        spacing: Voxel size in mm along each of the three axes.

    Returns:
        The metrics, with the empty-mask flags; see :class:`CaseMetrics` for the conventions.

    Raises:
        ValueError: If the masks are not 3D arrays of the same shape, or the spacing is not
            three positive finite numbers.
    """
    pred_mask, ref_mask = _as_masks(pred, ref)
    spacing_mm = _as_spacing(spacing)
    dice_value, jaccard_value = _overlap(pred_mask, ref_mask)
    hd95_mm, asd_mm = _hd95_asd(pred_mask, ref_mask, spacing_mm)
    return CaseMetrics(
        dice_value, jaccard_value, hd95_mm, asd_mm, not pred_mask.any(), not ref_mask.any()
    )
