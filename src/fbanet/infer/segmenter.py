"""Segmenting whole volumes: preprocessing, sliding windows, post-processing, and back.

The result always lies on the input grid: same size, origin, spacing and direction.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from fbanet.config import PATCH_MULTIPLE
from fbanet.data.preprocess import IndexBox, prepare_input, resample_channels
from fbanet.device import ComputeSetup, compute_setup
from fbanet.infer.config import MIRROR_AXES, Blend, InferenceConfig, Mirroring, Protocol, Window
from fbanet.infer.orientation import training_axis_order
from fbanet.infer.sliding_window import paper_protocol_inference, sliding_window_inference
from fbanet.infer.windows import Triple, paper_starts, patch_starts, whole_window
from fbanet.io.segments import SegmentInfo, segments_from_model
from fbanet.io.volumes import Volume
from fbanet.model.files import ModelMetadata, load_model_file
from fbanet.model.network import FBANet

logger = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]


@dataclasses.dataclass
class SegmentationResult:
    """A segmentation on the input grid.

    Attributes:
        labelmap: Class per voxel (uint8, (X, Y, Z)), 0 = background, 0 outside the ROI.
        probability: Foreground probability (float32), if asked for.
        uncertainty: Standard deviation of the decoders' foreground probabilities (all
            three, or those the model file holds; float32, high where they disagree).
        seconds: Wall time of the segmentation.
    """

    labelmap: Volume
    probability: Volume | None = None
    uncertainty: Volume | None = None
    seconds: float = 0.0


def largest_component(labelmap: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Keep only the largest 26-connected component of each class (others become 0)."""
    out = labelmap.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for value in classes:
        components, count = ndimage.label(labelmap == value, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        out[(components != int(sizes.argmax())) & (labelmap == value)] = 0
    return out


def with_flips(
    predictor: Predictor,
    axes: Sequence[Sequence[int]] = MIRROR_AXES[Mirroring.ALL],
    on_pass: Callable[[int], None] | None = None,
) -> Predictor:
    """Test-time augmentation: average ``predictor`` over inputs mirrored along ``axes``.

    ``on_pass`` is called with the batch's window count after each (mirrored) pass.
    """
    if not axes:
        raise ValueError("with_flips needs at least one set of axes; () is the identity")

    def run(x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for dims in axes:
            flip = list(dims)
            out = predictor(x.flip(flip) if flip else x).float()
            out = out.flip(flip) if flip else out
            total = out if total is None else total + out
            if on_pass is not None:
                on_pass(x.shape[0])
        assert total is not None  # axes is not empty
        return total / len(axes)

    return run


class PassProgress:
    """Progress in predictor passes (windows x mirrored passes), so that one window mirrored
    three times reports 1/3, 2/3, 3/3 instead of jumping from 0 to 100 %.

    Args:
        progress: Called with (passes done, passes in all).
        passes: Mirrored passes per window.
        windows: Windows the image will take (the sliding window's own count corrects it).
    """

    def __init__(self, progress: Progress, passes: int, windows: int) -> None:
        self.progress, self.passes = progress, passes
        self.total, self.done = windows * passes, 0

    def on_pass(self, windows: int) -> None:
        """One pass over a batch of ``windows`` windows is done."""
        self.done = min(self.done + windows, self.total)
        self.progress(self.done, self.total)

    def on_windows(self, done: int, total: int) -> None:
        """The sliding window's report: ``done`` of ``total`` windows (every pass) done."""
        self.total = total * self.passes
        if done * self.passes != self.done:  # (reported by the last pass already)
            self.done = done * self.passes
            self.progress(self.done, self.total)


def check_image(volume: Volume) -> None:
    """Refuse images that cannot be segmented, saying why."""
    if volume.array.ndim != 3:
        raise ValueError(f"the image must be 3-D (X, Y, Z), got shape {volume.array.shape}")
    finite = np.isfinite(volume.array)
    if not finite.all():
        raise ValueError(
            f"the image has {int(finite.size - finite.sum())} NaN or infinite voxels; "
            f"replace them (for example with the minimum) before segmenting"
        )


# The fewest voxels along each axis, at the model's spacing, that a 3D model segments. The
# V-Net halves the resolution four times and pads a window to a multiple of 16; with fewer
# than 4 voxels over three quarters of that axis would be padding and the second halving
# would leave less than one voxel of the scan: one slice, or two or three, is not a 3D scan.
MIN_EXTENT_VOXELS = PATCH_MULTIPLE // 4


def check_extent(
    shape: Sequence[int],
    spacing: Sequence[float],
    model_spacing: Sequence[float] | None,
) -> None:
    """Refuse a region too thin for a 3D model (a single slice, a 2D image stored as 3D).

    Args:
        shape: The region's size in voxels (X, Y, Z).
        spacing: Its voxel spacing (mm).
        model_spacing: The model's spacing (mm); None segments at the scan's own spacing.

    Raises:
        ValueError: Fewer than :data:`MIN_EXTENT_VOXELS` voxels along an axis at the model's
            spacing, with the size the region has and the size it needs.
    """
    target = model_spacing if model_spacing is not None else spacing
    voxels = [n * s / t for n, s, t in zip(shape, spacing, target, strict=True)]
    if min(voxels) >= MIN_EXTENT_VOXELS:
        return
    have = " x ".join(f"{v:.4g}" for v in voxels)
    need = " x ".join(f"{MIN_EXTENT_VOXELS * t:.4g}" for t in target)
    at = " x ".join(f"{t:.4g}" for t in target)
    raise ValueError(
        f"the region to segment is {' x '.join(str(n) for n in shape)} voxels, {have} voxels "
        f"at the model's spacing ({at} mm); a 3D model needs at least {MIN_EXTENT_VOXELS} "
        f"along each axis ({need} mm): give a 3D scan (or a larger --roi) that covers it"
    )


class Segmenter:
    """Segments volumes with an FBA-Net model (nnU-Net's predictor object, in small).

    Args:
        model: The network (contrastive heads not needed).
        metadata: The model file's metadata (patch, spacing, normalization, classes).
        config: Inference settings.
    """

    def __init__(
        self, model: FBANet, metadata: ModelMetadata, config: InferenceConfig | None = None
    ) -> None:
        self.config = config or InferenceConfig()
        self.metadata = metadata
        self.setup: ComputeSetup = compute_setup(
            self.config.device, self.config.precision, self.config.channels_last
        )
        self.model = model.to(  # type: ignore[call-overload]  # Module.to takes memory_format
            self.setup.device, memory_format=self.setup.memory_format
        ).eval()

    @classmethod
    def from_file(cls, path: str | Path, config: InferenceConfig | None = None) -> Segmenter:
        """Load a model file (safely) and build a segmenter."""
        model, metadata = load_model_file(path)
        return cls(model, metadata, config)

    @property
    def segments(self) -> list[SegmentInfo]:
        """The model's classes as named, coloured segments (for :func:`write_segmentation`)."""
        config = self.metadata.model
        return segments_from_model(config.class_names, config.class_colors)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """Window size: the training patch."""
        return self.metadata.model.patch_size

    def predictor(
        self, decoders: Sequence[int], on_pass: Callable[[int], None] | None = None
    ) -> Predictor:
        """Windows (B, C, X, Y, Z) -> softmax of each decoder, concatenated (B, K*n, X, Y, Z).

        ``on_pass``: called after each mirrored pass (see :func:`with_flips`).
        """
        fmt = self.setup.memory_format

        def run(x: torch.Tensor) -> torch.Tensor:
            x = x.to(self.setup.device).contiguous(memory_format=fmt)
            with self.setup.autocast():
                logits = self.model.decode(x, decoders)
            return torch.cat([torch.softmax(out.float(), dim=1) for out in logits], dim=1)

        if self.config.flips is Mirroring.NONE:
            return run
        return with_flips(run, MIRROR_AXES[self.config.flips], on_pass)

    def window_size(self, image_shape: Sequence[int]) -> Triple:
        """The window of the default protocol for an image of ``image_shape`` (X, Y, Z)."""
        if self.config.window is Window.VOLUME:
            whole = whole_window(
                image_shape, self.patch_size, PATCH_MULTIPLE, self.config.max_window_voxels
            )
            if whole is not None:
                return whole
        return self.patch_size

    def predict(
        self, image: np.ndarray, decoders: Sequence[int], progress: Progress | None = None
    ) -> np.ndarray:
        """Per-decoder class probabilities of a normalized image.

        Args:
            image: Normalized image (X, Y, Z).
            decoders: Decoder indices.
            progress: Called with (passes done, passes in all): windows x mirrored passes.

        Returns:
            Probabilities (n_decoders, K, X, Y, Z), float32.
        """
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        passes = len(MIRROR_AXES[self.config.flips])
        if progress is not None and passes > 1:  # report each mirrored pass
            tracker = PassProgress(progress, passes, self._window_count(image.shape))
            predictor, progress = self.predictor(decoders, tracker.on_pass), tracker.on_windows
        else:
            predictor = self.predictor(decoders)
        with torch.inference_mode():
            if self.config.protocol is Protocol.PAPER:
                probs = paper_protocol_inference(
                    tensor, predictor, self.patch_size, self.config.paper_stride,
                    device=self.setup.device, output_device=torch.device("cpu"),
                    progress=progress,
                )  # fmt: skip
            else:
                probs = sliding_window_inference(
                    tensor, predictor, self.window_size(image.shape),
                    overlap=self.config.overlap, blend=self.config.blend.value,
                    windows_per_batch=self.config.windows_per_batch,
                    device=self.setup.device, output_device=torch.device("cpu"),
                    progress=progress,
                )  # fmt: skip
        k = self.metadata.model.num_classes
        return probs.numpy().reshape(len(decoders), k, *image.shape)

    def _window_count(self, image_shape: Sequence[int]) -> int:
        """How many windows the protocol takes over an image of ``image_shape`` (padded up
        to the window where smaller, as the sliding window does)."""
        if self.config.protocol is Protocol.PAPER:
            patch = self.patch_size
            padded = tuple(max(s, p) for s, p in zip(image_shape, patch, strict=True))
            return len(paper_starts(padded, patch, self.config.paper_stride))
        window = self.window_size(image_shape)
        padded = tuple(max(s, w) for s, w in zip(image_shape, window, strict=True))
        return len(patch_starts(padded, window, self.config.overlap))

    def segment(
        self,
        volume: Volume,
        roi: IndexBox | None = None,
        *,
        normalized: bool = False,
        probability: bool = False,
        uncertainty: bool = False,
        progress: Progress | None = None,
    ) -> SegmentationResult:
        """Segment ``volume``; the result lies on its grid voxel for voxel.

        Args:
            volume: The scan, any size, spacing and orientation (the network sees it with
                its axes in the patient's order, as in training: :mod:`.orientation`).
            roi: Region to segment (default: the whole volume).
            normalized: The image is in the LA HDF5 layout, already normalized as stored;
                only models trained on that layout as stored use it so
                (:func:`fbanet.data.preprocess.prepare_input`). Z-scored models normalize
                the region they are given, whatever the file.
            probability: Also return the foreground probability map.
            uncertainty: Also return the decoders' disagreement (runs every decoder).
            progress: Called with (passes done, passes in all): windows x mirrored passes.
        """
        started = time.monotonic()
        check_image(volume)
        box = roi or IndexBox((0, 0, 0), volume.array.shape)
        check_extent(box.shape, volume.geometry.spacing, self.metadata.spacing)
        # The network sees the scan in the training's axis order (axial planes in X, Y).
        order = training_axis_order(volume.geometry)
        prepared = prepare_input(
            order.volume(volume), normalization=self.metadata.normalization,
            spacing=self.metadata.spacing, normalized=normalized, roi=order.box(box),
        )  # fmt: skip
        region, network_input = prepared.region, prepared.network
        available = self.metadata.decoders
        if not set(self.config.decoders) <= set(available):
            raise ValueError(
                f"decoders {list(self.config.decoders)} were asked for, but the model file holds "
                f"only {list(available)}"
            )
        if uncertainty and len(available) < 2:
            raise ValueError(
                "uncertainty needs the disagreement of several decoders, but this model file "
                "holds only one; use a model written by 'fbanet train'"
            )
        decoders = available if uncertainty else self.config.decoders
        probs = self.predict(network_input.array, decoders, progress)
        chosen = [decoders.index(d) for d in self.config.decoders]
        mean = probs[chosen].mean(axis=0)
        extra = [mean]
        if uncertainty:
            extra.append(probs[:, 1:].sum(axis=1).std(axis=0, keepdims=False)[None])
        channels = np.concatenate(extra, axis=0)
        if network_input is not region:
            channels = resample_channels(
                channels, network_input.geometry, region.geometry, region.array.shape
            )
        channels = order.restore(channels)
        result = self._assemble(volume, box, channels, probability, uncertainty)
        result.seconds = time.monotonic() - started
        return result

    def _assemble(
        self,
        volume: Volume,
        box: IndexBox,
        channels: np.ndarray,
        probability: bool,
        uncertainty: bool,
    ) -> SegmentationResult:
        k = self.metadata.model.num_classes
        labels = np.zeros(volume.array.shape, dtype=np.uint8)
        labels[box.slices] = channels[:k].argmax(axis=0).astype(np.uint8)
        keep = self.config.largest_component
        if keep is None:
            keep = self.metadata.largest_component and self.config.protocol is Protocol.DEFAULT
        if keep:
            labels = largest_component(labels, range(1, k))
        result = SegmentationResult(Volume(labels, volume.geometry))

        def full(channel: np.ndarray) -> Volume:
            array = np.zeros(volume.array.shape, dtype=np.float32)
            array[box.slices] = channel
            return Volume(array, volume.geometry)

        if probability:
            result.probability = full(channels[1:k].sum(axis=0))
        if uncertainty:
            result.uncertainty = full(channels[k])
        return result


def paper_config(**overrides: object) -> InferenceConfig:
    """The authors' evaluation protocol: stride 18/18/4, mean, one window a pass, no mirroring."""
    base = InferenceConfig(
        protocol=Protocol.PAPER, blend=Blend.CONSTANT, windows_per_batch=1,
        flips=Mirroring.NONE, window=Window.PATCH,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
