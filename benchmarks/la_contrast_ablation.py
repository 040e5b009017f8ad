"""What does the contrastive module add? An ablation on the real LA volumes, one budget.

Arms (same iterations, patch, labeled patches per step and seeds; semi-supervised arms add
the same unlabeled patches per step):
  supervised        labeled only (Dice loss);
  consistency       three decoders + mutual consistency, contrastive weight 0;
  authors           + the authors' contrastive module (the paper's FBA-Net);
  learning-W        + the learning module (pooled decoder features, one shared head),
                    contrastive weight W for each W of --weights;
  learning-infonce  the learning module with InfoNCE (the paper's comparison), weight of
                    the first of --weights.

Validation split: the last 8 cases of train.list, never trained on; the standard 20-case
test split is never used, so every number is a validation number. Training at 1.25 mm,
64x64x48 patches (the CPU scale of la_semi_supervised.py); scoring at 0.625 mm through the
default inference path on the last state. Every (arm, labeled, seed) run lives in its own
folder under --out and resumes where it stopped; finished runs are read back, so arms can
run as parallel 1-thread processes (``--arms``, ``--seeds``, ``--threads 1``) and a last call
with everything prints the report:

    python benchmarks/la_contrast_ablation.py --out runs/ablation --labeled 8 \
        --arms consistency learning-0.1 --seeds 1 2 3 --threads 1

The report gives mean ± std over seeds of the per-run mean Dice, the per-case Dice table,
and a paired Wilcoxon signed-rank test of each learning arm against consistency over
(case, seed) pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
from pathlib import Path

import torch
from la_semi_supervised import load_la_split, validation_volumes
from scipy.stats import wilcoxon

from fbanet.config import ContrastiveKind, ModelConfig, TrainConfig, TrainingMode
from fbanet.infer.evaluation import evaluate
from fbanet.infer.segmenter import Segmenter
from fbanet.train.trainer import Trainer, TrainingData

logger = logging.getLogger("la_contrast_ablation")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm: which loss terms and which contrastive module."""

    name: str
    semi: bool
    contrast: str = "authors"
    weight: float = 1.0
    kind: ContrastiveKind = ContrastiveKind.RANKED


def arms(weights: list[float]) -> dict[str, Arm]:
    """Every arm by name."""
    found = [
        Arm("supervised", semi=False),
        Arm("consistency", semi=True, weight=0.0),
        Arm("authors", semi=True),
        *(Arm(f"learning-{w:g}", semi=True, contrast="learning", weight=w) for w in weights),
        Arm("learning-infonce", True, "learning", weights[0], ContrastiveKind.INFONCE),
    ]
    return {arm.name: arm for arm in found}


def arm_configs(arm: Arm, seed: int, args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """Same budget for every arm; only the loss terms and the module differ."""
    model = ModelConfig(patch_size=tuple(args.patch), contrast=arm.contrast)
    labeled = args.labeled_batch
    train = TrainConfig(
        iterations=args.iterations,
        batch_size=labeled + args.unlabeled_batch if arm.semi else labeled,
        labeled_batch_size=labeled,
        mode=TrainingMode.SEMI_SUPERVISED if arm.semi else TrainingMode.SUPERVISED,
        contrastive=arm.kind,
        contrastive_weight=arm.weight,
        lr_schedule=args.lr_schedule,
        # The authors ramp the consistency weight over 40 % of the run (40 x 150 of 15,000).
        rampup_interval=max(1, round(args.iterations * 0.4 / 40)),
        seed=seed,
        checkpoint_every=max(1, args.iterations // 10),
        validate_every=args.iterations,
        log_every=10,
    )
    return model, train


def run_one(arm: Arm, seed: int, data: TrainingData, args: argparse.Namespace) -> dict:
    """Train one (arm, seed) run, resuming, and score it per case on the validation cases."""
    run_dir = args.out / f"labeled-{args.labeled}" / f"{arm.name}-seed{seed}"
    results = run_dir / "validation_cases.json"
    if results.exists():
        return json.loads(results.read_text())
    model, train = arm_configs(arm, seed, args)
    pool = list(data.labeled)
    unlabeled = pool[args.labeled :] if arm.semi else []
    subset = dataclasses.replace(data, labeled=pool[: args.labeled], unlabeled=unlabeled)
    result = Trainer(model, train, subset, run_dir, resume=True, show_progress=False).run()
    if result.iterations < args.iterations:
        raise SystemExit(f"{run_dir} stopped at iteration {result.iterations}; run again")
    table = evaluate(
        Segmenter.from_file(result.model_path), validation_volumes(args.data, args.names)
    )
    record = {
        "arm": arm.name,
        "seed": seed,
        "seconds": result.seconds,
        "dice": {name: metrics.dice for name, metrics in table.rows},
        "hd95": {name: metrics.hd95 for name, metrics in table.rows},
    }
    results.write_text(json.dumps(record, indent=2))
    return record


def report(records: list[dict]) -> str:
    """Markdown: mean ± std over seeds, per-case Dice, paired tests against consistency."""
    by_arm: dict[str, list[dict]] = {}
    for r in records:
        by_arm.setdefault(r["arm"], []).append(r)
    lines = ["| arm | seeds | Dice % (mean ± std over seeds) |", "|---|---|---|"]
    for name, runs in by_arm.items():
        means = [100 * statistics.fmean(r["dice"].values()) for r in runs]
        spread = statistics.stdev(means) if len(means) > 1 else 0.0
        lines.append(f"| {name} | {len(runs)} | {statistics.fmean(means):.2f} ± {spread:.2f} |")
    cases = sorted(records[0]["dice"])
    lines += ["", "| case | " + " | ".join(by_arm) + " |", "|---" * (len(by_arm) + 1) + "|"]
    for case in cases:
        cells = [f"{100 * statistics.fmean(r['dice'][case] for r in runs):.1f}"
                 for runs in by_arm.values()]  # fmt: skip
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    base = {r["seed"]: r for r in by_arm.get("consistency", [])}
    for name, runs in by_arm.items():
        pairs = [(r["dice"][c], base[r["seed"]]["dice"][c])
                 for r in runs if r["seed"] in base for c in cases]  # fmt: skip
        if not name.startswith("learning") or len(pairs) < 6:
            continue
        test = wilcoxon([a for a, _ in pairs], [b for _, b in pairs])
        gain = 100 * statistics.fmean(a - b for a, b in pairs)
        lines.append(
            f"\n{name} vs consistency over {len(pairs)} (case, seed) pairs: "
            f"mean Dice difference {gain:+.2f} points, Wilcoxon p = {test.pvalue:.3g}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/la"))
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--patch", type=int, nargs=3, default=(64, 64, 48))
    parser.add_argument("--spacing", type=float, default=1.25, help="training spacing (mm)")
    parser.add_argument("--labeled", type=int, default=8)
    parser.add_argument("--labeled-batch", type=int, default=2)
    parser.add_argument("--unlabeled-batch", type=int, default=2)
    parser.add_argument("--validation", type=int, default=8)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.1, 1.0])
    parser.add_argument("--arms", nargs="+", help="arm names (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337])
    parser.add_argument("--lr-schedule", default="constant", help="constant, poly or cosine")
    parser.add_argument("--threads", type=int, help="torch threads (1 for parallel arms)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    known = arms(args.weights)
    chosen = args.arms or list(known)
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        parser.error(f"unknown arms {unknown}; valid arms: {sorted(known)}")
    data, args.names = load_la_split(args.data, args.validation, args.spacing)
    records = [run_one(known[a], seed, data, args) for a in chosen for seed in args.seeds]
    text = report(records)
    folder = args.out / f"labeled-{args.labeled}"
    (folder / "report.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
