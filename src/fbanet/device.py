"""Choosing the compute device and precision for whatever hardware is found."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from fbanet.config import DeviceKind, Precision, parse_enum

logger = logging.getLogger(__name__)


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX-512 BF16 or AMX), so autocast pays off."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def select_device(kind: DeviceKind | str = DeviceKind.AUTO) -> torch.device:
    """The torch device for ``kind``: AUTO takes CUDA, then MPS, then CPU.

    Raises:
        RuntimeError: An explicitly requested GPU is not available; the message says what to
            choose instead.
    """
    kind = parse_enum(DeviceKind, kind)
    has_cuda = torch.cuda.is_available()
    has_mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if kind is DeviceKind.AUTO:
        if has_cuda:
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if kind is DeviceKind.CUDA and not has_cuda:
        raise RuntimeError(
            "device 'cuda' was requested but no CUDA GPU is available to this PyTorch build; "
            "use --device auto or --device cpu (or install a CUDA build of PyTorch)"
        )
    if kind is DeviceKind.MPS and not has_mps:
        raise RuntimeError(
            "device 'mps' was requested but is not available; use --device auto or cpu"
        )
    return torch.device(kind.value)


def resolve_precision(precision: Precision | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for plain float32.

    Raises:
        RuntimeError: bfloat16 was forced on a device that cannot run it.
    """
    precision = parse_enum(Precision, precision)
    if precision is Precision.FP32:
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        supported = cpu_supports_bf16()
    else:
        supported = False  # MPS autocast support differs across macOS versions
    if precision is Precision.BF16 and not supported:
        raise RuntimeError(
            f"bfloat16 was requested but {device.type} does not support it; use fp32"
        )
    return torch.bfloat16 if supported else None


def precision_reason(
    precision: Precision | str, device: torch.device, dtype: torch.dtype | None
) -> str:
    """Why a run computes in ``dtype`` (None: float32) on ``device``, for the start-up log."""
    precision = parse_enum(Precision, precision)
    if precision is Precision.FP32:
        return "float32 as requested (--precision fp32)"
    if device.type == "cpu":
        if dtype is not None:
            return "bfloat16 because this CPU has native bfloat16 (AVX-512 BF16 or AMX)"
        return (
            "float32 because this CPU lacks native bfloat16 (AVX-512 BF16 or AMX), where "
            "bfloat16 would be emulated and slower"
        )
    if device.type == "cuda":
        if dtype is not None:
            return "bfloat16 because this GPU supports it"
        return "float32 because this GPU has no bfloat16 support"
    return f"float32: bfloat16 autocast is not used on {device.type}"


@dataclass(frozen=True)
class ComputeSetup:
    """Device, autocast dtype (None = float32) and memory layout of a run."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory format to put 5-D tensors and the model in."""
        return torch.channels_last_3d if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        """A one-line description for logs."""
        name = self.device.type
        if self.device.type == "cuda":
            name = f"cuda ({torch.cuda.get_device_name(self.device)})"
        dtype = "bfloat16 autocast" if self.autocast_dtype is not None else "float32"
        layout = "channels-last" if self.channels_last else "contiguous"
        return f"{name}, {dtype}, {layout}"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast context for the forward pass (a no-op for float32)."""
        if self.autocast_dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
            yield


def compute_setup(
    device: DeviceKind | str = DeviceKind.AUTO,
    precision: Precision | str = Precision.AUTO,
    channels_last: bool = True,
    training_sizes: Sequence[tuple[int, int, int]] = (),
) -> ComputeSetup:
    """Resolve device, precision and layout into a :class:`ComputeSetup`.

    Args:
        device: Where to compute.
        precision: AUTO, BF16 or FP32.
        channels_last: Whether to use the channels-last 3D layout.
        training_sizes: For training, the spatial sizes (X, Y, Z) that the convolutions see
            (the patch at every encoder level). On a CPU, bfloat16 is used only when its
            convolution gradients are right at every one of them
            (:func:`bf16_conv_gradients_ok`); AUTO then falls back to float32 with a warning.

    Raises:
        RuntimeError: A requested device or precision cannot be used here.
    """
    precision = parse_enum(Precision, precision)
    torch_device = select_device(device)
    dtype = resolve_precision(precision, torch_device)
    why = precision_reason(precision, torch_device, dtype)
    if dtype is not None and torch_device.type == "cpu" and training_sizes:
        bad = [s for s in training_sizes if not bf16_conv_gradients_ok(s, channels_last)]
        if bad:
            reason = (
                "this CPU's bfloat16 convolution gradients are wrong at the feature-map size "
                f"{'x'.join(map(str, bad[0]))} (a known oneDNN problem with a side of 2); "
            )
            if precision is Precision.BF16:
                raise RuntimeError(
                    reason + "use --precision fp32 or a patch whose sides divided by 16 are not 2"
                )
            logger.warning("%straining in float32 instead", reason)
            dtype = None
            why = "float32 because this CPU's bfloat16 convolution gradients are wrong here"
    if channels_last and torch_device.type == "cpu" and training_sizes:
        bad = [s for s in training_sizes if not channels_last_gradients_ok(_probe_size(s))]
        if bad:
            logger.warning(
                "this CPU's float32 convolution gradients in the channels-last layout are "
                "wrong at the feature-map size %s; training in the contiguous layout instead",
                "x".join(map(str, _probe_size(bad[0]))),
            )
            channels_last = False
    setup = ComputeSetup(torch_device, dtype, channels_last)
    logger.info("compute: %s (%s)", setup.describe(), why)
    return setup


def _probe_size(size: tuple[int, int, int]) -> tuple[int, int, int]:
    # Float64 references of whole training patches would take seconds; the layout's kernels
    # are chosen by shape class, which sides up to 12 reach.
    return tuple(min(side, 12) for side in size)  # type: ignore[return-value]


# What the layouts' float32 gradients may differ from float64 by: rounding gives ~1e-7 to
# ~2e-6 here (channels-last up to 10x the contiguous layout); a wrong kernel gives >= 1e-2.
CHANNELS_LAST_TOLERANCE = 1e-4


@functools.lru_cache(maxsize=64)
def channels_last_gradients_ok(size: tuple[int, int, int]) -> bool:
    """Whether float32 3D convolution gradients in the channels-last layout are exact here.

    The kinds of convolution FBA-Net trains (3x3x3, 2x2x2 stride 2, 2x2x2 transposed
    stride 2) run once in float32 channels-last, their weight and input gradients compared
    with float64 (relative error below :data:`CHANNELS_LAST_TOLERANCE`). Small networks'
    whole gradients are no test: batch norm over a few values and the ranked contrastive
    loss amplify any rounding, so there float32 is percents off float64 in either layout.

    Args:
        size: Spatial size (X, Y, Z) of the feature map (a few milliseconds at 12^3).
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, *size, generator=generator, dtype=torch.float64)
    layers: list[torch.nn.Module] = [torch.nn.Conv3d(8, 8, 3, padding=1)]
    if min(size) >= 2:
        layers.append(torch.nn.Conv3d(8, 8, 2, stride=2))
    layers.append(torch.nn.ConvTranspose3d(8, 8, 2, stride=2))
    for layer in layers:
        layer = layer.double()
        reference = _conv_gradients(layer, x, torch.contiguous_format)
        layout = _conv_gradients(layer.float(), x.float(), torch.channels_last_3d)
        for got, want in zip(layout, reference, strict=True):
            error = float((got.double() - want).norm() / want.norm().clamp_min(1e-30))
            if not error < CHANNELS_LAST_TOLERANCE:  # NaN fails too
                return False
    return True


def _conv_gradients(
    layer: torch.nn.Module, x: torch.Tensor, fmt: torch.memory_format
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and input gradients of sum(out * r), r fixed, in layout ``fmt``."""
    layer = copy.deepcopy(layer).to(memory_format=fmt)  # type: ignore[call-overload]
    x = x.detach().contiguous(memory_format=fmt).requires_grad_()
    out = layer(x)
    weights = torch.randn(
        out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    (out * weights.to(out.dtype)).sum().backward()
    weight = layer.weight
    assert isinstance(weight, torch.Tensor) and weight.grad is not None and x.grad is not None
    return weight.grad, x.grad


@functools.lru_cache(maxsize=64)
def bf16_conv_gradients_ok(size: tuple[int, int, int], channels_last: bool = True) -> bool:
    """Whether a bfloat16 3D convolution's weight gradient on this CPU matches float32.

    Some oneDNN builds return garbage (up to inf/NaN) for the weight gradient of a 3x3x3
    convolution when the first spatial side is 2, which corrupts training silently. This
    probe runs one small convolution both ways and compares (a few milliseconds).

    Args:
        size: Spatial size (X, Y, Z) of the feature map.
        channels_last: Layout to probe, as training will use it.
    """
    generator = torch.Generator().manual_seed(0)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    x = torch.randn(2, 16, *size, generator=generator).contiguous(memory_format=fmt)
    conv = torch.nn.Conv3d(16, 16, 3, padding=1).to(memory_format=fmt)  # type: ignore[call-overload]
    grads = []
    for dtype in (torch.bfloat16, None):
        conv.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            out = conv(x).float()
        out.square().sum().backward()
        assert conv.weight.grad is not None
        grads.append(conv.weight.grad.clone())
    error = float((grads[0] - grads[1]).norm() / grads[1].norm().clamp_min(1e-12))
    # bfloat16 rounding gives ~0.3 % here; the broken kernel gives ~100 % or inf/NaN.
    return bool(torch.isfinite(grads[0]).all()) and error < 0.05
