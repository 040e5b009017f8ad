"""Where sliding windows go and how much each voxel of a window counts.

Pure functions, testable alone: the window size (:func:`whole_window`), window corners
(:func:`patch_starts`, or the FBA-Net authors' :func:`paper_starts`) and blending weights
(:func:`gaussian_importance_map`, :func:`constant_importance_map`).
:mod:`fbanet.infer.sliding_window` drives them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from fbanet.config import is_int

Triple = tuple[int, int, int]


def as_triple(value: object, name: str) -> Triple:
    """Validate ``value`` as three positive ints (patch size, stride, image shape)."""
    try:
        items: tuple[object, ...] = tuple(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be 3 positive ints, got {value!r}") from None
    if len(items) != 3 or not all(is_int(v) and v > 0 for v in items):  # type: ignore[operator]
        raise ValueError(f"{name} must be 3 positive ints, got {value!r}")
    return (int(items[0]), int(items[1]), int(items[2]))  # type: ignore[call-overload]


def check_fits(image_shape: Triple, patch: Triple) -> None:
    if any(s < p for s, p in zip(image_shape, patch, strict=True)):
        raise ValueError(
            f"image shape {image_shape} is smaller than patch size {patch} on some axis; "
            "pad it first (see pad_to_patch)"
        )


def patch_starts(
    image_shape: Sequence[int], patch_size: Sequence[int], overlap: float = 0.5
) -> list[Triple]:
    """Window start corners that cover every voxel with roughly ``overlap`` overlap.

    Per axis, ``n = ceil((S - P) / step) + 1`` windows with
    ``step = max(1, round(P * (1 - overlap)))``, spread evenly from 0 to ``S - P``.

    Args:
        image_shape: Spatial shape ``(X, Y, Z)``; every side must be >= the patch side.
        patch_size: Window shape ``(px, py, pz)``.
        overlap: Fraction of a window shared with its neighbour, in ``[0, 1)``.

    Returns:
        Start corners ``(x, y, z)`` in C order (z fastest).

    Raises:
        ValueError: On a bad shape, a patch larger than the image, or overlap outside [0, 1).
    """
    shape = as_triple(image_shape, "image_shape")
    patch = as_triple(patch_size, "patch_size")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    check_fits(shape, patch)
    per_axis = []
    for s, p in zip(shape, patch, strict=True):
        step = max(1, round(p * (1.0 - overlap)))
        n = math.ceil((s - p) / step) + 1
        # Rounding can merge neighbours only when they are closer than a voxel; the gap
        # between kept starts never exceeds step <= p, so coverage holds.
        per_axis.append(sorted({int(v) for v in np.rint(np.linspace(0, s - p, n))}))
    return [tuple(c) for c in itertools.product(*per_axis)]  # type: ignore[misc]


def whole_window(
    image_shape: Sequence[int], patch_size: Sequence[int], multiple: int, max_voxels: int
) -> Triple | None:
    """One window over the whole image, or None where it would be too large.

    Each side is the larger of the image's and the patch's, rounded up to ``multiple`` (the
    network's downsampling factor), so the image is seen in one pass with all its context.

    Args:
        image_shape: Spatial shape ``(X, Y, Z)``.
        patch_size: The training patch ``(px, py, pz)``: the smallest window.
        multiple: Every side of the window is a multiple of this.
        max_voxels: The largest window allowed (memory bound).

    Returns:
        The window ``(wx, wy, wz)``, or None when it holds more than ``max_voxels`` voxels.
    """
    shape = as_triple(image_shape, "image_shape")
    patch = as_triple(patch_size, "patch_size")
    window = tuple(-(-max(s, p) // multiple) * multiple for s, p in zip(shape, patch, strict=True))
    return window if math.prod(window) <= max_voxels else None  # type: ignore[return-value]


def paper_starts(
    image_shape: Sequence[int], patch_size: Sequence[int], stride: Sequence[int]
) -> list[Triple]:
    """Window start corners of the FBA-Net authors' evaluation (``test_single_case``).

    Per axis ``sx = ceil((S - P) / stride) + 1`` and ``start_i = min(stride * i, S - P)``,
    visited in their nested x, y, z loop order.

    Args:
        image_shape: Spatial shape ``(X, Y, Z)`` of the (already padded) image.
        patch_size: Window shape ``(px, py, pz)``.
        stride: Step per axis; the authors use ``(18, 18, 4)`` for the LA data.

    Returns:
        Start corners ``(x, y, z)``.

    Raises:
        ValueError: On a bad shape/stride or a patch larger than the image.
    """
    shape = as_triple(image_shape, "image_shape")
    patch = as_triple(patch_size, "patch_size")
    steps = as_triple(stride, "stride")
    check_fits(shape, patch)
    if any(t > p for t, p in zip(steps, patch, strict=True)):
        raise ValueError(
            f"stride {steps} is larger than the window {patch} on some axis, which would leave "
            f"voxels unseen; use a stride no larger than the window"
        )
    per_axis = [
        [min(t * i, s - p) for i in range(math.ceil((s - p) / t) + 1)]
        for s, p, t in zip(shape, patch, steps, strict=True)
    ]
    return [tuple(c) for c in itertools.product(*per_axis)]  # type: ignore[misc]


def gaussian_importance_map(
    patch_size: Sequence[int],
    sigma_scale: float = 0.125,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Separable Gaussian weight ``(px, py, pz)`` peaking at the patch centre.

    Window borders are the least reliable (least context), so they get low weight. The
    centre is ``(P - 1) / 2`` so the map is exactly mirror-symmetric; sigma is
    ``sigma_scale * P`` per axis. Normalized to max 1; zeros from underflow are raised to the
    smallest nonzero value so every voxel keeps a positive weight (no 0/0 at image corners).

    Args:
        patch_size: Window shape ``(px, py, pz)``.
        sigma_scale: Sigma as a fraction of each side; must be > 0.
        dtype: Output dtype.
        device: Output device.

    Returns:
        Tensor ``(px, py, pz)`` with values in ``(0, 1]``.
    """
    patch = as_triple(patch_size, "patch_size")
    if not sigma_scale > 0:
        raise ValueError(f"sigma_scale must be > 0, got {sigma_scale!r}")
    axes = []
    for p in patch:
        offset = torch.arange(p, dtype=torch.float64) - (p - 1) / 2.0
        g = torch.exp(-0.5 * (offset / (sigma_scale * p)) ** 2)
        axes.append(g / g.max())
    weights = (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).to(dtype)
    positive = weights[weights > 0]
    weights = torch.where(weights > 0, weights, positive.min())
    return weights.to(device) if device is not None else weights


def constant_importance_map(
    patch_size: Sequence[int],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """All-ones weight ``(px, py, pz)``: overlapping windows are plainly averaged."""
    return torch.ones(as_triple(patch_size, "patch_size"), dtype=dtype, device=device)
