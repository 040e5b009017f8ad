"""Choosing the compute device and precision for whatever hardware is found."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
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
) -> ComputeSetup:
    """Resolve device, precision and layout into a :class:`ComputeSetup`."""
    torch_device = select_device(device)
    setup = ComputeSetup(torch_device, resolve_precision(precision, torch_device), channels_last)
    logger.info("compute: %s", setup.describe())
    return setup
