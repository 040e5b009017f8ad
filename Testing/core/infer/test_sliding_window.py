"""Tests for fbanet.infer.sliding_window: padding, aggregation and the drivers."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from authors_protocol import authors_starts

from fbanet.infer import sliding_window as sw
from fbanet.infer import windows


def _conv_predictor(in_ch: int = 1, out_ch: int = 2, seed: int = 0):
    """A fixed random conv: its zero padding makes outputs depend on window position."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_ch, in_ch, 3, 3, 3, generator=gen)
    bias = torch.randn(out_ch, generator=gen)

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv3d(x, weight, bias, padding=1)

    return predict


def test_pad_to_patch_symmetric_split_and_crop() -> None:
    image = torch.arange(2 * 5 * 9 * 3, dtype=torch.float32).reshape(2, 5, 9, 3)
    padded, crop = sw.pad_to_patch(image, (8, 4, 6))
    assert padded.shape == (2, 8, 9, 6)
    # x: pad 3 -> 1 before, 2 after; z: pad 3 -> 1 before, 2 after; y untouched.
    assert crop[1] == slice(1, 6) and crop[2] == slice(0, 9) and crop[3] == slice(1, 4)
    assert torch.equal(padded[crop], image)
    assert padded.sum() == image.sum()
    same, _ = sw.pad_to_patch(image, (5, 9, 3))
    assert same is image


# --- aggregation and driver -----------------------------------------------------------------


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_constant_predictor_gives_constant(blend) -> None:
    image = torch.randn(1, 23, 17, 11)
    out = sw.sliding_window_inference(
        image,
        lambda x: torch.full((x.shape[0], 2, *x.shape[2:]), 3.0),
        (8, 8, 6),
        blend=blend,
    )
    assert out.shape == (2, 23, 17, 11) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full_like(out, 3.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.8])
def test_identity_like_predictor_reconstructs_input(blend, overlap) -> None:
    torch.manual_seed(1)
    image = torch.randn(2, 19, 14, 10)
    out = sw.sliding_window_inference(
        image, lambda x: x + 1, (7, 6, 5), overlap=overlap, blend=blend
    )
    # Only float32 rounding of the weighted sum / weight count separates it from exact.
    torch.testing.assert_close(out, image + 1, rtol=1e-5, atol=1e-5)


def test_image_smaller_than_patch_is_padded_and_cropped() -> None:
    torch.manual_seed(2)
    image = torch.randn(1, 5, 12, 3)
    out = sw.sliding_window_inference(image, lambda x: x * 2, (8, 8, 8))
    assert out.shape == (1, 5, 12, 3)
    torch.testing.assert_close(out, image * 2, rtol=1e-6, atol=1e-6)


def test_windows_per_batch_does_not_change_result() -> None:
    torch.manual_seed(3)
    image = torch.randn(1, 21, 18, 13)
    offset = torch.randn(2, 8, 7, 6)  # position-dependent inside the window, batch-exact

    def predict(x: torch.Tensor) -> torch.Tensor:
        return x * 0.5 + offset

    one = sw.sliding_window_inference(image, predict, (8, 7, 6), windows_per_batch=1)
    five = sw.sliding_window_inference(image, predict, (8, 7, 6), windows_per_batch=5)
    assert torch.equal(one, five)
    conv = _conv_predictor()
    torch.testing.assert_close(
        sw.sliding_window_inference(image, conv, (8, 7, 6), windows_per_batch=1),
        sw.sliding_window_inference(image, conv, (8, 7, 6), windows_per_batch=5),
        rtol=1e-5,
        atol=1e-5,
    )


def _brute_force_paper(image: np.ndarray, predict, patch, stride) -> np.ndarray:
    """Loop over windows, sum/count in numpy, exactly as in the authors' protocol."""
    w, h, d = image.shape
    pads = [max(0, p - s) for s, p in zip(image.shape, patch, strict=True)]
    padded = np.pad(image, [(p // 2, p - p // 2) for p in pads])
    score, cnt = None, np.zeros(padded.shape)
    for xs, ys, zs in authors_starts(padded.shape, patch, stride):
        window = padded[xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]]
        y = predict(torch.from_numpy(window[None, None].astype(np.float32)))[0].numpy()
        if score is None:
            score = np.zeros((y.shape[0], *padded.shape))
        score[:, xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]] += y
        cnt[xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]] += 1
    score = score / cnt[None]
    l0, l1, l2 = (p // 2 for p in pads)
    return score[:, l0 : l0 + w, l1 : l1 + h, l2 : l2 + d]


@pytest.mark.parametrize("shape", [(20, 17, 9), (20, 5, 9), (6, 7, 4)])
def test_paper_protocol_matches_brute_force(shape) -> None:
    rng = np.random.default_rng(4)
    image = rng.standard_normal(shape).astype(np.float32)
    predict = _conv_predictor(seed=5)
    patch, stride = (8, 8, 6), (3, 3, 2)
    calls: list[tuple[int, int]] = []
    out = sw.paper_protocol_inference(
        torch.from_numpy(image)[None], predict, patch, stride, progress=lambda *a: calls.append(a)
    )
    expected = _brute_force_paper(image, predict, patch, stride)
    assert out.shape == expected.shape == (2, *shape)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    padded = tuple(max(s, p) for s, p in zip(shape, patch, strict=True))
    total = len(authors_starts(padded, patch, stride))
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_explicit_starts_and_low_precision_output_accumulate_in_float32() -> None:
    image = torch.randn(1, 12, 10, 8)
    starts = windows.paper_starts((12, 10, 8), (6, 6, 6), (3, 2, 1))
    out = sw.sliding_window_inference(
        image, lambda x: x.to(torch.bfloat16), (6, 6, 6), starts=starts, blend="constant"
    )
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, image.to(torch.bfloat16).float(), rtol=1e-6, atol=1e-6)


def test_aggregator_sums_weights() -> None:
    agg = sw.Aggregator(1, (4, 3, 3), torch.full((2, 3, 3), 2.0), "cpu")
    agg.add(
        torch.ones(2, 1, 2, 3, 3) * torch.tensor([1.0, 4.0]).view(2, 1, 1, 1, 1),
        [(0, 0, 0), (1, 0, 0)],
    )
    agg.add(torch.zeros(1, 1, 2, 3, 3), [(2, 0, 0)])
    out = agg.result()
    assert out[0, :, 0, 0].tolist() == [1.0, 2.5, 2.0, 0.0]
    with pytest.raises(RuntimeError, match="after result"):
        agg.add(torch.zeros(1, 1, 2, 3, 3), [(0, 0, 0)])


def test_aggregator_reports_uncovered_voxels() -> None:
    agg = sw.Aggregator(1, (4, 3, 3), torch.ones(2, 3, 3), "cpu")
    agg.add(torch.ones(1, 1, 2, 3, 3), [(0, 0, 0)])
    with pytest.raises(ValueError, match="18 voxels are not covered"):
        agg.result()


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory."), RuntimeError("MPS backend out of memory")],
)
def test_aggregator_falls_back_to_cpu_on_oom(monkeypatch, caplog, error) -> None:
    real_zeros = sw._zeros
    devices: list[str] = []

    def fake_zeros(shape, device, dtype):
        devices.append(device.type)
        if device.type != "cpu":
            raise error
        return real_zeros(shape, device, dtype)

    monkeypatch.setattr(sw, "_zeros", fake_zeros)
    with caplog.at_level(logging.WARNING, logger="fbanet.infer.sliding_window"):
        agg = sw.Aggregator(2, (5, 3, 3), torch.ones(3, 3, 3), torch.device("cuda"))
    assert devices[0] == "cuda" and agg.device.type == "cpu"
    assert agg.importance.device.type == "cpu"
    assert "falling back to CPU" in caplog.text
    agg.add(torch.ones(2, 2, 3, 3, 3), [(0, 0, 0), (2, 0, 0)])
    assert agg.result().eq(1).all()


def test_aggregator_reraises_other_errors(monkeypatch) -> None:
    def broken(shape, device, dtype):
        raise RuntimeError("device-side assert triggered")

    monkeypatch.setattr(sw, "_zeros", broken)
    with pytest.raises(RuntimeError, match="device-side assert"):
        sw.Aggregator(1, (4, 4, 4), torch.ones(2, 2, 2), "cuda")

    def cpu_oom(shape, device, dtype):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(sw, "_zeros", cpu_oom)
    with pytest.raises(torch.OutOfMemoryError):  # nothing left to fall back to
        sw.Aggregator(1, (4, 4, 4), torch.ones(2, 2, 2), "cpu")


# --- validation -----------------------------------------------------------------------------


def _ok(x: torch.Tensor) -> torch.Tensor:
    return x


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"image": torch.zeros(8, 8, 8)}, ValueError, r"4D \(C, X, Y, Z\).*\(8, 8, 8\)"),
        ({"image": np.zeros((1, 8, 8, 8))}, TypeError, "torch.Tensor"),
        ({"patch_size": (4, 0, 4)}, ValueError, r"patch_size must be 3 positive ints.*\(4, 0, 4\)"),
        ({"patch_size": (4, 4)}, ValueError, "3 positive ints"),
        ({"patch_size": 4}, ValueError, "got 4"),
        ({"windows_per_batch": 0}, ValueError, "windows_per_batch must be >= 1, got 0"),
        ({"blend": "median"}, ValueError, r"one of \('gaussian', 'constant'\), got 'median'"),
        ({"overlap": 1.0}, ValueError, r"overlap must be in \[0, 1\), got 1.0"),
        ({"predictor": "net"}, TypeError, "predictor must be callable"),
        ({"predictor": lambda x: x[:, :, :-1]}, ValueError, r"does not match.*\(4, 4, 4\)"),
        ({"predictor": lambda x: x[:1]}, ValueError, "batch size 2"),
        ({"predictor": lambda x: x[0]}, ValueError, r"must return \(B, K, px, py, pz\)"),
        ({"starts": [(0, 0, 5)]}, ValueError, r"window start \(0, 0, 5\)"),
        ({"starts": []}, ValueError, "starts is empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, exc, match) -> None:
    args = {
        "image": torch.zeros(1, 8, 8, 8),
        "predictor": _ok,
        "patch_size": (4, 4, 4),
        "windows_per_batch": 2,
    }
    args.update(kwargs)
    image, predictor, patch = args.pop("image"), args.pop("predictor"), args.pop("patch_size")
    with pytest.raises(exc, match=match):
        sw.sliding_window_inference(image, predictor, patch, **args)
