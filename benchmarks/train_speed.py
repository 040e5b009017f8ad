"""Seconds per FBA-Net training iteration, in fp32 and bfloat16, at two configurations.

Measures full optimizer steps (batch sampling, forward through the three decoders and
contrastive modules, loss, backward, SGD) with :class:`fbanet.train.trainer.Trainer` and
:func:`seconds_per_iteration` (below), and prints a markdown table::

    python benchmarks/train_speed.py                       # both configs, 3 timed iterations
    python benchmarks/train_speed.py --configs small --iterations 5
    python benchmarks/train_speed.py --la ../shared/la     # real LA volumes instead of noise

Configurations:

- ``paper``: the authors' LA setting, patch 112x112x80, batch 4 (2 labeled + 2 unlabeled),
  16 base filters, three decoders.
- ``small``: patch 64x64x48, batch 4 (2 + 2), 16 base filters: a CPU-sized run.

``--steps`` instead compares the step of each fine-tuning variant (``STEPS`` below: the
``finetune`` preset with each arm of ``site_adaptation.py``, and cheaper candidates) with
today's ``--preset la-cpu`` step, interleaved step by step in one process so the noise of a
shared machine hits all alike, at the default precision::

    python benchmarks/train_speed.py --steps --iterations 10 --threads 2

Each runs in fp32 and in bfloat16 autocast, both in the channels-last memory layout (the
training default) unless ``--contiguous`` is given. Timings are the median of the timed
iterations after the warm-up ones; the reported ratio is fp32 time / bf16 time.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fbanet.config import ModelConfig, TrainConfig
from fbanet.data.cases import Case, load_case
from fbanet.train.trainer import Trainer, TrainingData


def seconds_per_iteration(trainer: Trainer, iterations: int, warmup: int = 1) -> list[float]:
    """Time ``iterations`` optimizer steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        trainer.step()
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - started)
    return times


logger = logging.getLogger("train_speed")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmarked setting.

    Attributes:
        name: Row label.
        patch_size: Training patch (X, Y, Z).
        base_filters: Width of the first encoder stage.
        volume_shape: Shape of the synthetic volumes (a little larger than the patch, so
            crops move).
    """

    name: str
    patch_size: tuple[int, int, int]
    base_filters: int
    volume_shape: tuple[int, int, int]


CONFIGS = {
    "paper": BenchConfig("paper", (112, 112, 80), 16, (144, 128, 88)),
    "small": BenchConfig("small", (64, 64, 48), 16, (80, 72, 56)),
}
BATCH_SIZE = 4
LABELED_BATCH_SIZE = 2


def synthetic_case(name: str, shape: tuple[int, int, int], seed: int, labeled: bool) -> Case:
    """A z-scored noise volume with a bright ellipsoid, and its label if ``labeled``.

    Args:
        name: Case name.
        shape: Volume shape (X, Y, Z).
        seed: Seed of the noise and the ellipsoid's position.
        labeled: Attach the ellipsoid as label.
    """
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = [rng.uniform(0.35 * s, 0.65 * s) for s in shape]
    inside = sum(((g - c) / (0.25 * s)) ** 2 for g, c, s in zip(grid, centre, shape, strict=True))
    label = (inside <= 1).astype(np.uint8)
    image = label * 1.5 + rng.normal(0.0, 1.0, shape)
    image = ((image - image.mean()) / image.std()).astype(np.float32)
    return Case(name, image, label if labeled else None, (1.0, 1.0, 1.0))


def synthetic_data(config: BenchConfig, seed: int = 0) -> TrainingData:
    """Two labeled and two unlabeled synthetic cases (one batch's worth)."""
    shape = config.volume_shape
    return TrainingData(
        labeled=[synthetic_case(f"lab{i}", shape, seed + i, True) for i in range(2)],
        unlabeled=[synthetic_case(f"unl{i}", shape, seed + 10 + i, False) for i in range(2)],
    )


def la_data(folder: Path) -> TrainingData:
    """The first two cases of ``folder/train.list`` labeled, the next two unlabeled.

    Args:
        folder: The LA data folder (``train.list`` and ``train/<case>.h5``).
    """
    names = (folder / "train.list").read_text(encoding="utf-8").split()[:4]
    if len(names) < 4:
        raise ValueError(f"{folder / 'train.list'} lists fewer than 4 cases")

    def load(name: str, labeled: bool) -> Case:
        return load_case(
            folder / "train" / f"{name}.h5",
            normalization="as-stored",
            h5_spacing=(0.625, 0.625, 0.625),
            require_label=labeled,
            read_label=labeled,
        )

    return TrainingData(
        labeled=[load(n, True) for n in names[:2]],
        unlabeled=[load(n, False) for n in names[2:]],
        spacing=(0.625, 0.625, 0.625),
    )


def time_config(
    config: BenchConfig,
    data: TrainingData,
    precision: str,
    channels_last: bool,
    iterations: int,
    warmup: int,
    device: str,
) -> tuple[float | None, str]:
    """Median seconds per iteration, and the compute description (or why it could not run).

    Returns:
        (median seconds or None when the precision is unsupported here, description).
    """
    model_config = ModelConfig(base_filters=config.base_filters, patch_size=config.patch_size)
    train_config = TrainConfig(
        iterations=warmup + iterations,
        batch_size=BATCH_SIZE,
        labeled_batch_size=LABELED_BATCH_SIZE,
        device=device,
        precision=precision,
        channels_last=channels_last,
        seed=0,
    )
    with tempfile.TemporaryDirectory(prefix="fbanet-bench-") as run_dir:
        try:
            trainer = Trainer(model_config, train_config, data, run_dir, show_progress=False)
        except RuntimeError as error:  # e.g. bf16 forced on hardware without it
            logger.warning("%s %s: skipped (%s)", config.name, precision, error)
            return None, str(error)
        description = trainer.setup.describe()
        logger.info(
            "%s, %s: %d warm-up + %d timed iterations", config.name, description, warmup,
            iterations,
        )  # fmt: skip
        times = seconds_per_iteration(trainer, iterations, warmup=warmup)
        on_cuda = trainer.setup.device.type == "cuda"
        del trainer
    if on_cuda:
        torch.cuda.empty_cache()
    logger.info("%s %s: %s s/iter", config.name, precision, ", ".join(f"{t:.2f}" for t in times))
    return statistics.median(times), description


def markdown_table(rows: Sequence[tuple[str, str, float | None, float | None]]) -> str:
    """Rows of (config, precision, median s/iter, ratio fp32/bf16) as a markdown table."""

    def number(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    lines = [
        "| config | precision | median s/iter | ratio fp32/bf16 |",
        "|---|---|---:|---:|",
    ]
    lines += [
        f"| {c} | {p} | {number(s, 3)} | {number(r, 2) if r is not None else ''} |"
        for c, p, s, r in rows
    ]
    return "\n".join(lines)


# Step variants of --steps: (model settings, train settings) over the presets' own. Semi-
# supervised fine-tuning takes the preset's batch for that mode (2 labeled + 2 unlabeled).
SEMI = {"mode": "semi-supervised"}
STEPS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "la-cpu (semi-supervised, authors)": ("la-cpu", {}, {}),
    "finetune (supervised, batch 2, weights averaged)": ("finetune", {}, {}),
    "finetune, last-step weights (no average)": ("finetune", {}, {"ema_decay": 0.0}),
    "finetune, batch 4": ("finetune", {}, {"batch_size": 4}),
    "finetune, semi-supervised, consistency": ("finetune", {}, {**SEMI, "contrastive_weight": 0}),
    "finetune, semi-supervised, authors": ("finetune", {}, SEMI),
    "finetune, semi-supervised, learning 0.1": (
        "finetune", {"contrast": "learning"}, {**SEMI, "contrastive_weight": 0.1}
    ),
    "finetune, patch 48x48x32": ("finetune", {"patch_size": (48, 48, 32)}, {}),
}  # fmt: skip


def step_trainers(folder: Path) -> dict[str, Trainer]:
    """One trainer per variant of STEPS, on synthetic volumes, at the bundled model's size."""
    from fbanet.model.bundled import default_model_path
    from fbanet.model.header import read_model_header
    from fbanet.train.presets import (
        build_configs,
        inherit_from_model,
        preset_settings,
        with_mode_settings,
    )

    header = read_model_header(default_model_path())
    trainers = {}
    for name, (preset, model_changes, train_changes) in STEPS.items():
        model, train = preset_settings(preset)
        model, _, _ = inherit_from_model({**model, **model_changes}, None, header)
        train = with_mode_settings(preset, {**train, **train_changes}, set(train_changes))
        train = {**train, "iterations": 10**6, "seed": 0,
                 "checkpoint_every": 10**6, "validate_every": 10**6}  # fmt: skip
        model_config, train_config = build_configs(model, train)
        shape = tuple(s + 16 for s in model_config.patch_size)
        config = BenchConfig(name, model_config.patch_size, model_config.base_filters, shape)  # type: ignore[arg-type]
        trainers[name] = Trainer(model_config, train_config, synthetic_data(config),
                                 folder / str(len(trainers)), show_progress=False)  # fmt: skip
    return trainers


def compare_steps(iterations: int, warmup: int) -> str:
    """Median seconds per step of each STEPS variant, interleaved, and its ratio to la-cpu's."""
    with tempfile.TemporaryDirectory(prefix="fbanet-steps-") as folder:
        trainers = step_trainers(Path(folder))
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for round_ in range(warmup + iterations):
            for name, trainer in trainers.items():
                started = time.perf_counter()
                trainer.step()
                if round_ >= warmup:
                    times[name].append(time.perf_counter() - started)
    base = statistics.median(next(iter(times.values())))
    lines = ["| step | median s/step | la-cpu step / this step |", "|---|---:|---:|"]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.3f} | {base / median:.2f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["paper", "small"])
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"],
                        default=["fp32", "bf16"])  # fmt: skip
    parser.add_argument("--contiguous", action="store_true",
                        help="contiguous memory layout instead of channels-last")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--la", type=Path, help="LA data folder: use real volumes")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--steps", action="store_true", help="compare fine-tuning steps")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be >= 1 and --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logger.info("torch %s, %d CPU threads", torch.__version__, torch.get_num_threads())
    if args.steps:
        from la_tta import cpu_description

        print(f"{cpu_description()}; median of {args.iterations} interleaved steps\n")
        print(compare_steps(args.iterations, args.warmup))
        return 0
    real = la_data(args.la) if args.la is not None else None
    rows: list[tuple[str, str, float | None, float | None]] = []
    layout = "contiguous" if args.contiguous else "channels-last"
    device_name = ""
    for name in args.configs:
        config = CONFIGS[name]
        data = real if real is not None else synthetic_data(config)
        medians: dict[str, float | None] = {}
        for precision in args.precisions:
            medians[precision], description = time_config(
                config, data, precision, not args.contiguous, args.iterations, args.warmup,
                args.device,
            )  # fmt: skip
            if medians[precision] is not None:
                device_name = description.split(",")[0]
        fp32, bf16 = medians.get("fp32"), medians.get("bf16")
        ratio = fp32 / bf16 if fp32 is not None and bf16 else None
        patch = "x".join(map(str, config.patch_size))
        label = f"{name} ({patch}, batch {LABELED_BATCH_SIZE}+{BATCH_SIZE - LABELED_BATCH_SIZE})"
        for i, precision in enumerate(args.precisions):
            shown = f"{precision}, {layout}"
            rows.append((label, shown, medians[precision], ratio if i == 0 else None))
    data_kind = f"LA volumes from {args.la}" if real is not None else "synthetic volumes"
    threads = f", {torch.get_num_threads()} CPU threads" if device_name == "cpu" else ""
    print(
        f"Training speed on {device_name or args.device}{threads} ({data_kind}; median of "
        f"{args.iterations} timed iterations after {args.warmup} warm-up)\n"
    )
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
