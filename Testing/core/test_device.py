"""Device and precision choice, and the bfloat16 gradient probe that guards training."""

from __future__ import annotations

import logging

import pytest
import torch

import fbanet.device as device
from fbanet.config import Precision, level_sizes


def test_level_sizes_halve_four_times() -> None:
    assert level_sizes((112, 112, 80)) == (
        (112, 112, 80), (56, 56, 40), (28, 28, 20), (14, 14, 10), (7, 7, 5),
    )  # fmt: skip


def test_fp32_is_never_autocast() -> None:
    assert device.resolve_precision(Precision.FP32, torch.device("cpu")) is None


@pytest.fixture
def bf16_cpu(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """A CPU that claims bfloat16 and whose probe fails at sides of 2 (records the probes)."""
    probed: list[tuple[int, int, int]] = []

    def probe(size: tuple[int, int, int], channels_last: bool = True) -> bool:
        probed.append(size)
        return size[0] != 2

    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(device, "bf16_conv_gradients_ok", probe)
    return probed


def test_training_falls_back_to_fp32_where_bf16_gradients_are_wrong(
    bf16_cpu: list[tuple[int, int, int]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fbanet.device"):
        setup = device.compute_setup("cpu", "auto", training_sizes=level_sizes((32, 32, 32)))
    assert setup.autocast_dtype is None
    assert bf16_cpu == list(level_sizes((32, 32, 32)))
    assert "2x2x2" in caplog.text and "float32" in caplog.text


def test_training_keeps_bf16_where_the_probe_passes(bf16_cpu: list[tuple[int, int, int]]) -> None:
    setup = device.compute_setup("cpu", "auto", training_sizes=level_sizes((64, 64, 48)))
    assert setup.autocast_dtype is torch.bfloat16


def test_inference_is_not_probed(bf16_cpu: list[tuple[int, int, int]]) -> None:
    # Only the weight gradient is affected; forward passes in bfloat16 are right.
    assert device.compute_setup("cpu", "auto").autocast_dtype is torch.bfloat16
    assert bf16_cpu == []


def test_forced_bf16_with_wrong_gradients_is_an_error(
    bf16_cpu: list[tuple[int, int, int]],
) -> None:
    with pytest.raises(RuntimeError, match="--precision fp32"):
        device.compute_setup("cpu", "bf16", training_sizes=level_sizes((32, 32, 32)))


@pytest.mark.skipif(not device.cpu_supports_bf16(), reason="this CPU has no bfloat16 support")
def test_probe_agrees_with_a_direct_comparison() -> None:
    # The probe's verdict at a healthy size: bfloat16 gradients within rounding of float32.
    assert device.bf16_conv_gradients_ok((4, 4, 3))


@pytest.mark.parametrize(
    ("native", "precision", "expected"),
    [
        (False, "auto", "float32 because this CPU lacks native bfloat16 (AVX-512 BF16 or AMX)"),
        (True, "auto", "bfloat16 because this CPU has native bfloat16 (AVX-512 BF16 or AMX)"),
        (True, "fp32", "float32 as requested (--precision fp32)"),
    ],
)
def test_the_start_up_log_says_why_bf16_is_or_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    native: bool,
    precision: str,
    expected: str,
) -> None:
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: native)
    with caplog.at_level(logging.INFO, logger="fbanet.device"):
        setup = device.compute_setup("cpu", precision)
    assert (setup.autocast_dtype is not None) == (native and precision == "auto")
    assert "compute: cpu" in caplog.text and expected in caplog.text


def test_channels_last_float32_gradients_are_exact_to_rounding_here() -> None:
    # Against float64, single convolutions of each kind: channels-last 6.8e-07 at worst
    # (3x3x3 weight gradient, 12^3), contiguous 2.5e-07; a wrong kernel is >= 1e-2 off.
    for size in [(12, 12, 12), (7, 7, 5), (2, 2, 2)]:
        assert device.channels_last_gradients_ok(size), size


def test_training_turns_channels_last_off_where_its_gradients_are_wrong(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    probed: list[tuple[int, int, int]] = []

    def probe(size: tuple[int, int, int]) -> bool:
        probed.append(size)
        return size != (7, 7, 5)

    monkeypatch.setattr(device, "channels_last_gradients_ok", probe)
    with caplog.at_level(logging.WARNING, logger="fbanet.device"):
        setup = device.compute_setup("cpu", "fp32", True, level_sizes((112, 112, 80)))
    assert not setup.channels_last
    assert setup.memory_format is torch.contiguous_format
    assert "7x7x5" in caplog.text and "contiguous layout" in caplog.text
    assert probed[0] == (12, 12, 12)  # whole patches are probed at a small size
    # Where the probe passes, and for inference, the layout stays as asked.
    monkeypatch.setattr(device, "channels_last_gradients_ok", lambda size: True)
    assert device.compute_setup("cpu", "fp32", True, level_sizes((112, 112, 80))).channels_last
    monkeypatch.setattr(device, "channels_last_gradients_ok", lambda size: False)
    assert device.compute_setup("cpu", "fp32", True).channels_last
