"""How hard the contrastive term pulls on the network in the first steps, per module.

For the first steps of a seeded CPU run (the la-cpu architecture, 16 filters, 64x64x48
patches, batch 2 + 2, on synthetic ellipsoid volumes), prints per step: the norm of the
contrastive term's gradient at the weights against the segmentation terms' (Dice and
consistency), and the size of the SGD update against the one without the contrastive term
(weight 0), and the weights' norm::

    python benchmarks/contrast_stability.py                  # 5 steps, every mode
    python benchmarks/contrast_stability.py --steps 3 --base-filters 8 --modes balance

Modes for the learning module: ``none`` (full weight from step 1: the instability),
``ramp`` (weighted by the consistency ramp-up), ``balance`` (capped at the segmentation
terms' pull at the decoders' last features: what the trainer does). Each run takes its
own steps (SGD at lr 0.01 with momentum, as the trainer), so later steps follow its mode.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from fbanet.config import ContrastModule, ModelConfig, TrainConfig
from fbanet.data.cases import Case
from fbanet.model.losses import balance_contrast, consistency_rampup, fba_loss
from fbanet.train.trainer import Trainer, TrainingData


def _case(name: str, seed: int, labeled: bool, shape: tuple[int, int, int]) -> Case:
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = [rng.uniform(0.35 * s, 0.65 * s) for s in shape]
    radii = [rng.uniform(0.2 * s, 0.3 * s) for s in shape]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
    image = inside * 2.0 + rng.normal(0.0, 0.7, shape)
    image = ((image - image.mean()) / image.std()).astype(np.float32)
    return Case(name, image, inside.astype(np.uint8) if labeled else None, (1.0, 1.0, 1.0))


def _norm(tensors: list[torch.Tensor | None]) -> float:
    return float(sum(float(t.double().square().sum()) for t in tensors if t is not None)) ** 0.5


MODES = ("none", "ramp", "balance")


def measure(trainer: Trainer, mode: str) -> dict[str, float]:
    """One step's gradient norms and update size, then that step (SGD, as the trainer's).

    ``mode``: the contrastive term at full weight (none), weighted by the consistency
    ramp-up (ramp), or capped at the segmentation terms' pull (balance, the trainer's).
    """
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    images, labels = trainer.batcher.next()
    trainer.model.train()
    out = trainer.model(torch.from_numpy(images))
    config, t = trainer.config, trainer.iteration + 1
    terms = fba_loss(out.logits, out.fg, out.bg, torch.from_numpy(labels), t, config)
    weight = config.contrastive_weight
    if mode == "ramp":
        weight *= consistency_rampup(t, 1.0, config.rampup_length, config.rampup_interval)
    elif mode == "balance" and trainer.model_config.contrast is ContrastModule.LEARNING:
        weight *= balance_contrast(terms, out.contrast_inputs, config)[1]
    seg = config.dice_weight * terms.dice + terms.consistency_weight * terms.consistency
    g_seg = torch.autograd.grad(seg, params, retain_graph=True, allow_unused=True)
    g_con = torch.autograd.grad(weight * terms.contrastive, params, allow_unused=True)
    decay = [config.weight_decay * p.detach() for p in params]
    zero = torch.zeros(())
    total = [
        (s if s is not None else zero) + (c if c is not None else zero) + d
        for s, c, d in zip(g_seg, g_con, decay, strict=True)
    ]
    without = [(s if s is not None else zero) + d for s, d in zip(g_seg, decay, strict=True)]
    result = {
        "seg": _norm(list(g_seg)),
        "contrast": _norm(list(g_con)),
        # This step's update from fresh momentum: lr * (gradient + weight decay).
        "update": config.learning_rate * _norm(total),
        "update_without": config.learning_rate * _norm(without),
        "weights": _norm([p.detach() for p in params]),
        "weight": weight,
    }
    for p, g in zip(params, total, strict=True):
        p.grad = (g - config.weight_decay * p.detach()).to(p.dtype)  # SGD adds the decay
    trainer.optimizer.step()
    trainer.iteration += 1
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    shape = (72, 70, 52)
    data = TrainingData(
        labeled=[_case(f"l{i}", i, True, shape) for i in range(2)],
        unlabeled=[_case(f"u{i}", 10 + i, False, shape) for i in range(2)],
    )
    print("| module | mode | step | contrast weight | |g contrast| / |g seg| | update | update "
          "without contrast | ratio | weights' norm |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("authors", "none")] + [("learning", mode) for mode in args.modes]
        for contrast, mode in runs:
            model = ModelConfig(base_filters=args.base_filters, patch_size=(64, 64, 48),
                                contrast=contrast)  # fmt: skip
            config = TrainConfig(iterations=500, rampup_interval=5, device="cpu",
                                 precision="fp32", seed=1337)  # fmt: skip
            folder = Path(tmp) / f"{contrast}-{mode}"
            trainer = Trainer(model, config, data, folder, show_progress=False)
            for step in range(1, args.steps + 1):
                m = measure(trainer, mode)
                print(
                    f"| {contrast} | {mode} | {step} | {m['weight']:.4f} | "
                    f"{m['contrast'] / m['seg']:.3g} | {m['update']:.3g} | "
                    f"{m['update_without']:.3g} | {m['update'] / m['update_without']:.3g} | "
                    f"{m['weights']:.3g} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
