"""What only a CUDA GPU can check: autocast, channels-last, CPU-GPU agreement, DDP with NCCL.

Skipped (and reported as skipped) without CUDA; ``benchmarks/gpu_check.sh`` runs them on a
GPU machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from builders import trained_looking_model

from fbanet.config import ModelConfig, TrainConfig
from fbanet.device import compute_setup
from fbanet.infer.config import InferenceConfig
from fbanet.infer.segmenter import Segmenter
from fbanet.io.volumes import Geometry, Volume
from fbanet.metrics import dice
from fbanet.model.files import ModelMetadata

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: run benchmarks/gpu_check.sh there"
)
TINY = ModelConfig(base_filters=4, patch_size=(32, 32, 16), projection_dim=8, dropout=0.0)


def _volume(seed: int = 0, shape: tuple[int, int, int] = (48, 40, 24)) -> Volume:
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    inside = sum(((g - s / 2) / (s / 4)) ** 2 for g, s in zip(grid, shape, strict=True)) <= 1
    array = (inside * 2.0 + rng.normal(0.0, 0.5, shape)).astype(np.float32)
    return Volume(array, Geometry((1.0, 1.0, 1.0)))


def _segmenter(config: InferenceConfig) -> Segmenter:
    metadata = ModelMetadata(TINY, spacing=(1.0, 1.0, 1.0))
    return Segmenter(trained_looking_model(TINY, with_contrast=False), metadata, config)


def test_autocast_is_bfloat16_where_the_gpu_supports_it() -> None:
    setup = compute_setup("cuda", "auto", True)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    assert setup.device.type == "cuda" and setup.autocast_dtype is expected
    model = trained_looking_model(TINY).cuda()
    x = torch.randn(2, 1, *TINY.patch_size, device="cuda")
    with setup.autocast():
        out = model.segment(x)
    assert torch.isfinite(out).all()


def test_channels_last_matches_contiguous_on_the_gpu() -> None:
    model = trained_looking_model(TINY).cuda()
    x = torch.randn(2, 1, *TINY.patch_size, device="cuda")
    with torch.no_grad():
        plain = model.segment(x)
        model.to(memory_format=torch.channels_last_3d)
        last = model.segment(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(last, plain, rtol=1e-4, atol=1e-4)


def test_gpu_inference_agrees_with_the_cpu() -> None:
    volume = _volume()
    cpu = _segmenter(InferenceConfig(device="cpu", precision="fp32"))
    gpu32 = _segmenter(InferenceConfig(device="cuda", precision="fp32"))
    fast = _segmenter(InferenceConfig(device="cuda"))  # bf16 autocast, channels-last
    a = cpu.segment(volume, probability=True)
    b = gpu32.segment(volume, probability=True)
    c = fast.segment(volume, probability=True)
    assert a.probability is not None and b.probability is not None and c.probability is not None
    np.testing.assert_allclose(b.probability.array, a.probability.array, atol=1e-4)
    assert np.abs(c.probability.array - a.probability.array).max() < 0.05
    assert dice(c.labelmap.array == 1, a.labelmap.array == 1) > 0.98


def test_training_step_on_the_gpu(tmp_path: Path) -> None:
    from ddp_worker import data

    from fbanet.train.trainer import Trainer

    config = TrainConfig(iterations=2, device="cuda", seed=7, rampup_length=0.0)
    trainer = Trainer(
        ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8), config, data(),
        tmp_path / "run", show_progress=False,
    )  # fmt: skip
    losses = [trainer.step()["loss"] for _ in range(2)]
    assert all(np.isfinite(losses))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP with NCCL needs 2 GPUs")
def test_two_gpus_take_the_step_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ddp_worker import check_ok, compare_step, launch

    monkeypatch.setenv("FBANET_TEST_DEVICE", "cuda")
    check_ok(launch("step", tmp_path))
    error, update = compare_step(tmp_path)
    assert update > 0.1
    assert error / update < 1e-2, (error, update)
