"""Segmentation progress moves per mirrored pass, not only per window."""

from __future__ import annotations

import numpy as np
import pytest
from builders import trained_looking_model

from fbanet.config import ModelConfig
from fbanet.infer.config import InferenceConfig, Mirroring, Window
from fbanet.infer.segmenter import Segmenter
from fbanet.io.volumes import Geometry, Volume
from fbanet.model.files import ModelMetadata

TINY = ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _progress(shape: tuple[int, int, int], **config: object) -> list[tuple[int, int]]:
    model = trained_looking_model(TINY, seed=2, with_contrast=False)
    settings = InferenceConfig(device="cpu", precision="fp32", **config)  # type: ignore[arg-type]
    segmenter = Segmenter(model, ModelMetadata(TINY), settings)
    volume = Volume(np.random.default_rng(2).normal(size=shape).astype(np.float32), Geometry())
    calls: list[tuple[int, int]] = []
    segmenter.segment(volume, normalized=True, progress=lambda *a: calls.append(a))
    return calls


def test_one_window_mirrored_three_times_reports_each_pass() -> None:
    # An LA-sized region fits one window: before, one report (1/1), a jump from 0 to 100 %.
    assert _progress((20, 18, 16), flips=Mirroring.AXES) == [(1, 3), (2, 3), (3, 3)]
    assert _progress((20, 18, 16), flips=Mirroring.ALL) == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_without_mirroring_each_window_is_one_step() -> None:
    assert _progress((20, 18, 16), flips=Mirroring.NONE) == [(1, 1)]


def test_several_windows_count_windows_times_passes_to_the_end() -> None:
    calls = _progress((40, 16, 16), flips=Mirroring.AXES, window=Window.PATCH,
                      windows_per_batch=1)  # fmt: skip
    totals = {total for _, total in calls}
    [total] = totals  # known from the first report on
    assert total % 3 == 0 and total > 3
    assert [done for done, _ in calls] == list(range(1, total + 1))
