"""The contrastive term in training: dead with the authors' module, alive with the learning one;
the learning-rate schedule as logged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fbanet.config import ModelConfig, TrainConfig
from fbanet.data.cases import Case
from fbanet.train.schedule import learning_rate_at
from fbanet.train.trainer import Trainer, TrainingData

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _case(name: str, seed: int, labeled: bool, shape: tuple[int, int, int] = (24, 22, 20)) -> Case:
    """A bright ellipsoid in noise, z-scored; its label is the ellipsoid."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = [rng.uniform(0.35 * s, 0.65 * s) for s in shape]
    radii = [rng.uniform(0.2 * s, 0.3 * s) for s in shape]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
    image = inside * 2.0 + rng.normal(0.0, 0.7, shape)
    image = ((image - image.mean()) / image.std()).astype(np.float32)
    return Case(name, image, inside.astype(np.uint8) if labeled else None, (1.0, 1.0, 1.0))


def _run(tmp_path: Path, contrast: str, **train: Any) -> list[dict[str, Any]]:
    model = ModelConfig(
        base_filters=4, patch_size=(16, 16, 16), projection_dim=8, contrast=contrast
    )
    config = TrainConfig(
        **{
            "iterations": 5, "batch_size": 4, "labeled_batch_size": 2, "device": "cpu",
            "precision": "fp32", "seed": 3, "checkpoint_every": 100, "validate_every": 100,
            "rampup_length": 0.0, **train,
        }
    )  # fmt: skip
    data = TrainingData(
        labeled=[_case(f"lab{i}", i, True) for i in range(2)],
        unlabeled=[_case(f"unl{i}", 100 + i, False) for i in range(2)],
        validation=[],
        spacing=(1.0, 1.0, 1.0),
    )
    Trainer(model, config, data, tmp_path / contrast, show_progress=False).run()
    lines = (tmp_path / contrast / "progress.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "iteration"]


def test_the_authors_term_sends_no_gradient_after_it_saturates(tmp_path: Path) -> None:
    events = _run(tmp_path, "authors")
    norms = [e["contrastive_grad_norm"] for e in events]
    assert norms[0] > 0.0
    # From step 2 on every similarity sits at its clamp: the term is a constant (the floor
    # 0.0077310549 of a batch of 4, as in the authors' code).
    assert norms[1:] == [0.0] * 4
    assert [e["contrastive_loss"] for e in events[1:]] == pytest.approx([0.0077310549] * 4)


def test_the_learning_term_keeps_sending_gradient(tmp_path: Path) -> None:
    events = _run(tmp_path, "learning")
    assert all(e["contrastive_grad_norm"] > 1e-4 for e in events)
    assert len({round(e["contrastive_loss"], 6) for e in events}) == len(events)


def test_a_zero_weight_sends_nothing(tmp_path: Path) -> None:
    events = _run(tmp_path, "learning", contrastive_weight=0.0)
    assert [e["contrastive_grad_norm"] for e in events] == [0.0] * 5
    assert all(e["contrastive_loss"] > 0 for e in events)  # still measured, not used


def test_the_logged_learning_rate_follows_the_schedule(tmp_path: Path) -> None:
    events = _run(tmp_path, "authors", lr_schedule="poly", learning_rate=0.02)
    expected = [learning_rate_at(0.02, t, 5, "poly") for t in range(5)]
    assert [e["lr"] for e in events] == pytest.approx(expected)
    assert events[-1]["lr"] < events[0]["lr"] / 3
