"""Sliding-window inference over a 3D volume with any patch predictor.

Small, separately testable parts: window corners and blending weights
(:mod:`fbanet.infer.windows`), padding (:func:`pad_to_patch`), accumulation (:class:`Aggregator`)
and the drivers :func:`sliding_window_inference` and :func:`paper_protocol_inference`.

Layouts: an image is ``(C, X, Y, Z)``; a predictor maps ``(B, C, px, py, pz)`` to
``(B, K, px, py, pz)``; results are ``(K, X, Y, Z)`` float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fbanet.config import check_int
from fbanet.infer.windows import (
    Triple,
    as_triple,
    check_fits,
    constant_importance_map,
    gaussian_importance_map,
    paper_starts,
    patch_starts,
)

logger = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]
BLENDS = ("gaussian", "constant")


def pad_to_patch(
    image: torch.Tensor, patch_size: Sequence[int]
) -> tuple[torch.Tensor, tuple[slice, slice, slice, slice]]:
    """Zero-pad a ``(C, X, Y, Z)`` image symmetrically up to the patch size where smaller.

    The split is ``pad // 2`` before and ``pad - pad // 2`` after, as in the authors' code.

    Args:
        image: Tensor ``(C, X, Y, Z)``.
        patch_size: Window shape ``(px, py, pz)``.

    Returns:
        ``(padded, crop)`` where ``padded`` is ``(C, max(X, px), ...)`` (the input itself if
        no axis needed padding) and ``result[crop]`` undoes the padding on any
        ``(K, X', Y', Z')`` tensor of the padded spatial shape.
    """
    patch = as_triple(patch_size, "patch_size")
    _check_image(image)
    before, after, crop = [], [], [slice(None)]
    for s, p in zip(image.shape[1:], patch, strict=True):
        pad = max(0, p - s)
        before.append(pad // 2)
        after.append(pad - pad // 2)
        crop.append(slice(pad // 2, pad // 2 + s))
    if any(before) or any(after):
        # F.pad lists the last axis first.
        pads = [v for axis in (2, 1, 0) for v in (before[axis], after[axis])]
        image = F.pad(image, pads, mode="constant", value=0.0)
    return image, tuple(crop)  # type: ignore[return-value]


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def _zeros(shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Single allocation point, so tests can simulate an out-of-memory device."""
    return torch.zeros(tuple(shape), device=device, dtype=dtype)


class Aggregator:
    """Accumulates weighted window predictions into a full-volume average.

    Holds ``sum (K, X, Y, Z)`` of ``pred * importance`` and ``count (1, X, Y, Z)`` of
    ``importance``; :meth:`result` divides them. If ``device`` runs out of memory for these
    buffers, they go to CPU host memory instead (slower adds, but the volume still fits).

    Args:
        num_channels: ``K``, the predictor's output channels.
        image_shape: Spatial shape ``(X, Y, Z)``.
        importance: Weight ``(px, py, pz)``, positive everywhere.
        device: Where to keep the buffers (normally the predictor's device).
        dtype: Accumulation dtype.
    """

    def __init__(
        self,
        num_channels: int,
        image_shape: Sequence[int],
        importance: torch.Tensor,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        check_int("num_channels", num_channels)
        self.image_shape = as_triple(image_shape, "image_shape")
        if importance.ndim != 3:
            shape = tuple(importance.shape)
            raise ValueError(f"importance must be (px, py, pz), got shape {shape}")
        self.patch_size = as_triple(importance.shape, "importance shape")
        check_fits(self.image_shape, self.patch_size)
        self.num_channels = int(num_channels)
        self.device = torch.device(device)
        self._sum, self._count = self._allocate(self.device, dtype)
        self.device = self._sum.device
        self.importance = importance.to(device=self.device, dtype=dtype)
        self._result: torch.Tensor | None = None

    def _allocate(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        try:
            return self._allocate_on(device, dtype)
        except RuntimeError as error:  # torch.OutOfMemoryError is a RuntimeError
            if device.type == "cpu" or not _is_oom(error):
                raise
            reason = str(error)
        # Retry only after the except block, so the traceback (and any half-allocated
        # device buffer it keeps alive) is released first.
        shape = (self.num_channels, *self.image_shape)
        msg = "Out of memory for %s aggregation buffers on %s; falling back to CPU memory (%s)"
        logger.warning(msg, shape, device, reason)
        return self._allocate_on(torch.device("cpu"), dtype)

    def _allocate_on(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        total = _zeros((self.num_channels, *self.image_shape), device, dtype)
        count = _zeros((1, *self.image_shape), device, dtype)
        return total, count

    def add(self, preds: torch.Tensor, starts: Sequence[Sequence[int]]) -> None:
        """Add a batch of window predictions.

        Args:
            preds: Tensor ``(B, K, px, py, pz)``, any float dtype and device.
            starts: ``B`` start corners ``(x, y, z)``, one per prediction.
        """
        if self._result is not None:
            raise RuntimeError("Aggregator.add called after result()")
        expected = (len(starts), self.num_channels, *self.patch_size)
        if tuple(preds.shape) != expected:
            raise ValueError(
                f"predictions must have shape (B, K, px, py, pz) = {expected}, "
                f"got {tuple(preds.shape)}"
            )
        _check_starts(starts, self.image_shape, self.patch_size)
        weighted = preds.to(device=self.device, dtype=self._sum.dtype) * self.importance
        for pred, start in zip(weighted, starts, strict=True):
            window = _window(start, self.patch_size)
            self._sum[window] += pred
            self._count[window] += self.importance

    def result(self) -> torch.Tensor:
        """Return the weighted average ``(K, X, Y, Z)`` on the buffer device.

        Divides in place to avoid a second full-size buffer, so no more adds are allowed.
        """
        if self._result is None:
            uncovered = int((self._count == 0).sum())
            if uncovered:
                raise ValueError(f"{uncovered} voxels are not covered by any window")
            self._result = self._sum.div_(self._count)
        return self._result


def _check_image(image: object) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor (C, X, Y, Z), got {type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(f"image must be 4D (C, X, Y, Z), got shape {tuple(image.shape)}")


def _window(start: Sequence[int], patch: Triple) -> tuple[slice, ...]:
    """Index of one window in a ``(C, X, Y, Z)`` tensor (all channels)."""
    return (slice(None), *(slice(s, s + p) for s, p in zip(start, patch, strict=True)))


def _check_starts(starts: Sequence[Sequence[int]], shape: Triple, patch: Triple) -> None:
    for start in starts:
        fits = len(start) == 3 and all(
            0 <= s <= n - p for s, n, p in zip(start, shape, patch, strict=True)
        )
        if not fits:
            raise ValueError(
                f"window start {tuple(start)} with patch {patch} does not fit in image {shape}"
            )


def _importance(blend: str, patch: Triple) -> torch.Tensor:
    if blend == "gaussian":
        return gaussian_importance_map(patch)
    if blend == "constant":
        return constant_importance_map(patch)
    raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")


def _run_predictor(
    predictor: Predictor,
    padded: torch.Tensor,
    batch: list[Triple],
    patch: Triple,
    device: torch.device,
) -> torch.Tensor:
    windows = torch.stack([padded[_window(start, patch)] for start in batch])
    out = predictor(windows.to(device))
    if not isinstance(out, torch.Tensor) or out.ndim != 5:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"predictor must return (B, K, px, py, pz), got {shape}")
    if out.shape[0] != len(batch) or tuple(out.shape[2:]) != patch:
        raise ValueError(
            f"predictor output shape {tuple(out.shape)} does not match batch size "
            f"{len(batch)} and patch size {patch}"
        )
    return out


def sliding_window_inference(
    image: torch.Tensor,
    predictor: Predictor,
    patch_size: Sequence[int],
    *,
    overlap: float = 0.5,
    starts: Sequence[Sequence[int]] | None = None,
    blend: str = "gaussian",
    windows_per_batch: int = 4,
    device: torch.device | str | None = None,
    output_device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Predict a whole volume by blending predictions on overlapping windows.

    Args:
        image: Tensor ``(C, X, Y, Z)``; sides smaller than the patch are zero-padded
            (:func:`pad_to_patch`) and the padding is cropped from the result.
        predictor: Maps ``(B, C, px, py, pz)`` to ``(B, K, px, py, pz)`` (any float dtype).
        patch_size: Window shape ``(px, py, pz)``.
        overlap: Overlap for :func:`patch_starts`; ignored when ``starts`` is given.
        starts: Explicit window corners in the *padded* image (e.g. :func:`paper_starts`).
        blend: ``"gaussian"`` (centre-weighted) or ``"constant"`` (plain mean).
        windows_per_batch: Windows stacked into one predictor call.
        device: Device of the predictor input (default ``image.device``); the aggregation
            buffers live there too, falling back to CPU if they do not fit.
        output_device: Device of the result (default ``image.device``).
        progress: Called as ``progress(done, total)`` after each batch of windows.

    Returns:
        Float32 tensor ``(K, X, Y, Z)`` on ``output_device``.

    Raises:
        TypeError: If ``image`` is not a tensor or ``predictor`` is not callable.
        ValueError: On a bad shape, patch, blend, batch size, start or predictor output.
    """
    _check_image(image)
    if not callable(predictor):
        raise TypeError(f"predictor must be callable, got {type(predictor).__name__}")
    patch = as_triple(patch_size, "patch_size")
    check_int("windows_per_batch", windows_per_batch)
    importance = _importance(blend, patch)
    device = torch.device(device) if device is not None else image.device
    output_device = torch.device(output_device) if output_device is not None else image.device

    padded, crop = pad_to_patch(image, patch)
    shape: Triple = tuple(padded.shape[1:])  # type: ignore[assignment]
    if starts is None:
        windows = patch_starts(shape, patch, overlap)
    else:
        windows = [tuple(int(v) for v in s) for s in starts]  # type: ignore[misc]
        if not windows:
            raise ValueError("starts is empty")
        _check_starts(windows, shape, patch)
    logger.debug("sliding window: %d windows of %s over %s", len(windows), patch, shape)

    with torch.inference_mode():
        result = _aggregate_windows(
            predictor, padded, windows, patch, importance, device, windows_per_batch, progress
        )
        return result[crop].to(output_device).contiguous()


def _aggregate_windows(
    predictor: Predictor,
    padded: torch.Tensor,
    windows: list[Triple],
    patch: Triple,
    importance: torch.Tensor,
    device: torch.device,
    windows_per_batch: int,
    progress: Callable[[int, int], None] | None,
) -> torch.Tensor:
    """Run the predictor over ``windows`` in batches; return the blended ``(K, X, Y, Z)``."""
    shape: Triple = tuple(padded.shape[1:])  # type: ignore[assignment]
    aggregator: Aggregator | None = None
    for i in range(0, len(windows), windows_per_batch):
        batch = windows[i : i + windows_per_batch]
        out = _run_predictor(predictor, padded, batch, patch, device)
        if aggregator is None:  # K is only known once the predictor has run
            aggregator = Aggregator(out.shape[1], shape, importance, device)
        aggregator.add(out, batch)
        if progress is not None:
            progress(i + len(batch), len(windows))
    if aggregator is None:
        raise ValueError("no windows to predict")
    return aggregator.result()


def paper_protocol_inference(
    image: torch.Tensor,
    predictor: Predictor,
    patch_size: Sequence[int],
    stride: Sequence[int] = (18, 18, 4),
    *,
    device: torch.device | str | None = None,
    output_device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The FBA-Net authors' evaluation: fixed-stride windows, one at a time, plain mean.

    Equivalent to their ``test_single_case``: symmetric zero padding up to the patch,
    :func:`paper_starts`, averaging of overlapping outputs, crop back. (They kept only the
    foreground softmax channel; here all ``K`` channels are averaged the same way.)

    Args:
        image: Tensor ``(C, X, Y, Z)``.
        predictor: Maps ``(1, C, px, py, pz)`` to ``(1, K, px, py, pz)`` (e.g. softmax).
        patch_size: Window shape; ``(112, 112, 80)`` for LA.
        stride: Step per axis; the authors use ``(18, 18, 4)`` (stride_xy, stride_z).
        device: Device of the predictor input (default ``image.device``).
        output_device: Device of the result (default ``image.device``).
        progress: Called as ``progress(done, total)`` after each window.

    Returns:
        Float32 tensor ``(K, X, Y, Z)``.
    """
    _check_image(image)
    patch = as_triple(patch_size, "patch_size")
    padded_shape = tuple(max(s, p) for s, p in zip(image.shape[1:], patch, strict=True))
    return sliding_window_inference(
        image,
        predictor,
        patch,
        starts=paper_starts(padded_shape, patch, stride),
        blend="constant",
        windows_per_batch=1,
        device=device,
        output_device=output_device,
        progress=progress,
    )
