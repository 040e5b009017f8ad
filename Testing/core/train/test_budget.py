"""Tests of the time budget: fbanet.train.progress.TimeBudget and a run that ends on it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from builders import blob_case

from fbanet.config import ModelConfig, TrainConfig
from fbanet.model.files import read_model_header
from fbanet.train.progress import TimeBudget
from fbanet.train.trainer import Trainer, TrainingData

TINY = ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


class _Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_budget_starts_with_training_and_asks_for_a_validation_every_fifth() -> None:
    clock = _Clock()
    budget = TimeBudget(10.0, clock=clock)
    clock.now += 50  # data loading does not count
    assert not budget.requested and not budget.validation_due()
    budget.start()
    clock.now += 1.9
    assert not budget.validation_due()
    clock.now += 0.1  # a fifth of 10 s
    assert budget.validation_due() and not budget.requested
    budget.validated()
    assert not budget.validation_due()
    clock.now += 8.0
    assert budget.spent and budget.requested
    for bad in (0, -1.0, True, "60"):
        with pytest.raises(ValueError, match="--time-budget must be a number of seconds > 0"):
            TimeBudget(bad)  # type: ignore[arg-type]


def test_a_run_ends_on_its_budget_validated_finished_and_resumable(tmp_path: Path) -> None:
    data = TrainingData(
        labeled=[blob_case(f"lab{i}", i, True) for i in range(2)],
        unlabeled=[blob_case(f"unl{i}", 100 + i, False) for i in range(2)],
        validation=[blob_case(f"val{i}", 200 + i, True) for i in range(2)],
        spacing=(1.0, 1.0, 1.0),
    )
    config = TrainConfig(
        iterations=1000, batch_size=4, labeled_batch_size=2, device="cpu", precision="fp32",
        seed=3, checkpoint_every=1000, validate_every=1000,
    )  # fmt: skip
    ticks = itertools.count(0.0, 0.25)  # every look at the clock is a quarter second later
    budget = TimeBudget(10.0, clock=lambda: next(ticks))
    run = tmp_path / "run"
    result = Trainer(TINY, config, data, run, stop=budget, show_progress=False).run()
    assert result.budget_spent and not result.stopped
    assert 5 < result.iterations < 1000
    lines = [json.loads(x) for x in (run / "progress.jsonl").read_text().splitlines()]
    validated = [e["iteration"] for e in lines if e["event"] == "validation"]
    # Validated every fifth of the budget, not only every 1000 iterations, and at the end.
    assert len(validated) >= 5 and validated[-1] == result.iterations
    assert lines[-1]["event"] == "finished"
    best = read_model_header(result.best_model_path)
    assert best.validation_dice == pytest.approx(result.best_validation_dice)
    # A checkpoint of the last step: the run resumes from it.
    resumed = Trainer(
        TINY, TrainConfig(**{**config.__dict__, "iterations": result.iterations + 1}), data, run,
        resume=True, show_progress=False,
    ).run()  # fmt: skip
    assert resumed.iterations == result.iterations + 1
