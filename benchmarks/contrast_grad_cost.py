"""What measuring ``contrastive_grad_norm`` costs a training step, per contrastive module.

The norm needs a partial backward pass of its own (from the contrastive term to the
activations it reads), so the trainer measures it on logged steps only. This prints the
median seconds of steps with and without the measurement, interleaved (so a busy machine
slows both alike), and their ratio::

    python benchmarks/contrast_grad_cost.py                 # patch 64x64x48, 8 filters
    python benchmarks/contrast_grad_cost.py --steps 10 --base-filters 16
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fbanet.config import ModelConfig, TrainConfig
from fbanet.data.cases import Case
from fbanet.train.trainer import Trainer, TrainingData


def _case(name: str, seed: int, labeled: bool, shape: tuple[int, int, int]) -> Case:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32)
    label = (image > 0.5).astype(np.uint8) if labeled else None
    return Case(name, image, label, (1.0, 1.0, 1.0))


def step_seconds(contrast: str, base_filters: int, steps: int, run_dir: Path) -> list[float]:
    """Median seconds of a step without and with the measurement."""
    patch = (64, 64, 48)
    shape = (72, 72, 52)
    data = TrainingData(
        labeled=[_case(f"l{i}", i, True, shape) for i in range(2)],
        unlabeled=[_case(f"u{i}", 10 + i, False, shape) for i in range(2)],
    )
    model = ModelConfig(base_filters=base_filters, patch_size=patch, contrast=contrast)
    config = TrainConfig(
        iterations=2 * steps + 2, device="cpu", precision="fp32", seed=1, rampup_length=0.0
    )
    trainer = Trainer(model, config, data, run_dir / contrast, show_progress=False)
    trainer.step(measure=True)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(steps):
        for measure in (False, True):
            started = time.perf_counter()
            trainer.step(measure=measure)
            times[measure].append(time.perf_counter() - started)
    return [statistics.median(times[False]), statistics.median(times[True])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each kind")
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    print("| module | s/step without | s/step with | ratio |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for contrast in ("authors", "learning"):
            without, with_ = step_seconds(contrast, args.base_filters, args.steps, Path(tmp))
            print(f"| {contrast} | {without:.3f} | {with_:.3f} | {with_ / without:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
