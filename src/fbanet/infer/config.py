"""How a volume is segmented: one typed, frozen dataclass and its enums.

The defaults are the measured choice for the bundled left-atrium model (``benchmarks/la_tta.py``,
the model card): one window over the whole region where it fits, mirrored along each in-plane
axis and averaged. The authors' protocol is :func:`fbanet.infer.segmenter.paper_config`.
"""

from __future__ import annotations

import dataclasses
from enum import Enum

from fbanet.config import DeviceKind, Precision, check_int, parse_enum


class Blend(str, Enum):
    """How overlapping sliding windows are combined."""

    GAUSSIAN = "gaussian"  # weight each window by a Gaussian centred on it (default)
    CONSTANT = "constant"  # plain mean of the overlapping windows (the authors' protocol)


class Protocol(str, Enum):
    """Sliding-window protocol of inference."""

    DEFAULT = "default"  # fbanet's fast path (overlap, Gaussian blending, batched windows)
    PAPER = "paper"  # the authors' evaluation: stride 18/18/4, mean of softmax, one window


class Window(str, Enum):
    """The size of the windows the network sees (default protocol)."""

    # One window over the whole region, its sides rounded up to a multiple of 16, where it
    # holds at most ``max_window_voxels``; otherwise sliding windows of the training patch.
    VOLUME = "volume"
    PATCH = "patch"  # sliding windows of the training patch, always


class Mirroring(str, Enum):
    """Test-time augmentation: predictions on in-plane mirrored inputs, averaged."""

    NONE = "none"  # one pass
    AXES = "axes"  # the input, mirrored along X, mirrored along Y: 3 passes (default)
    ALL = "all"  # also mirrored along X and Y at once: 4 passes


# Array axes of a window batch (B, C, X, Y, Z) that each Mirroring mirrors; () = as is. The
# segmenter puts the scan's axes in the patient's order first (infer.orientation), so X and Y
# are the in-plane axes of training's augmentation whatever the acquisition plane.
MIRROR_AXES: dict[Mirroring, tuple[tuple[int, ...], ...]] = {
    Mirroring.NONE: ((),),
    Mirroring.AXES: ((), (2,), (3,)),
    Mirroring.ALL: ((), (2,), (3,), (2, 3)),
}


def _parse_mirroring(value: object) -> Mirroring:
    # True/False were the values of the old on/off option (``--flips``): all four, or none.
    if isinstance(value, bool):
        return Mirroring.ALL if value else Mirroring.NONE
    return parse_enum(Mirroring, value)


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """How a volume is segmented.

    Attributes:
        protocol: ``DEFAULT`` (fast) or ``PAPER`` (the authors' evaluation protocol).
        overlap: Fraction of a window shared with its neighbour (default protocol).
        blend: Gaussian or constant (mean) blending of overlapping windows.
        windows_per_batch: Windows per forward pass.
        paper_stride: Window stride (X, Y, Z) of the paper protocol.
        decoders: Decoders whose softmax outputs are averaged; (0,) is the authors' choice.
        device: Where to compute.
        precision: bfloat16 autocast where supported, or fp32.
        channels_last: Channels-last 3D memory layout.
        largest_component: Keep only the largest connected component of each class; None
            takes the model file's default.
        flips: Test-time mirroring (:class:`Mirroring`); ``True``/``False`` read as
            ``ALL``/``NONE``.
        window: Whole-region window or training-patch windows (default protocol).
        max_window_voxels: The largest whole-region window, in voxels at the model's
            spacing; bounds memory (about 1 GB of activations at the default).
    """

    protocol: Protocol = Protocol.DEFAULT
    overlap: float = 0.25
    blend: Blend = Blend.GAUSSIAN
    windows_per_batch: int = 4
    paper_stride: tuple[int, int, int] = (18, 18, 4)
    decoders: tuple[int, ...] = (0,)
    device: DeviceKind = DeviceKind.AUTO
    precision: Precision = Precision.AUTO
    channels_last: bool = True
    largest_component: bool | None = None
    flips: Mirroring = Mirroring.AXES
    window: Window = Window.VOLUME
    max_window_voxels: int = 2**21

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", parse_enum(Protocol, self.protocol))
        object.__setattr__(self, "blend", parse_enum(Blend, self.blend))
        object.__setattr__(self, "device", parse_enum(DeviceKind, self.device))
        object.__setattr__(self, "precision", parse_enum(Precision, self.precision))
        object.__setattr__(self, "flips", _parse_mirroring(self.flips))
        object.__setattr__(self, "window", parse_enum(Window, self.window))
        check_int("max_window_voxels", self.max_window_voxels)
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, (int, float)):
            raise TypeError(f"overlap must be a number, got {self.overlap!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap!r}")
        check_int("windows_per_batch", self.windows_per_batch)
        stride = tuple(self.paper_stride)
        if len(stride) != 3:
            raise ValueError(f"paper_stride needs 3 values, got {self.paper_stride!r}")
        for side in stride:
            check_int("paper_stride", side)
        object.__setattr__(self, "paper_stride", stride)
        decoders = tuple(self.decoders)
        if not decoders or len(set(decoders)) != len(decoders) or not set(decoders) <= {0, 1, 2}:
            raise ValueError(f"decoders must be distinct values of 0, 1, 2, got {self.decoders!r}")
        object.__setattr__(self, "decoders", decoders)
