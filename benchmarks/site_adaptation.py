"""Does fine-tuning on a few of a user's own scans help, within 10 minutes on a CPU?

The user's scanner is not the one the bundled model learned from. ``../shared/site``
simulates a second site on the real LA anatomy (site B: 2.5 mm slices, another contrast, a
bias field, noise). This writes site-B versions of ``../shared/la/train`` (make_site.py, into
``--out``/site-b, never committed), then for each number K of labeled scans:

- labeled: the first K cases of train.list; unlabeled: the next 64; validation: the last 8
  (never trained on; the standard test split is never used, so every number is a validation
  number; the best model of a run is chosen on these same 8 cases, as a user's run does);
- arms, each run by the command line a user types, with the same wall-clock budget::

      fbanet train --manifest M --preset finetune --time-budget 600 -o RUN [arm flags]
      fbanet evaluate --manifest V -m RUN/best_model.safetensors --csv RUN/validation.csv

  ``bundled`` (no training), ``supervised`` (--mode supervised), ``batch2`` (supervised,
  batch 2: cheaper steps, more of them), ``ema`` (batch 2 with the weights averaged over
  about the last 100 steps, --ema-decay 0.99: the preset now) and its variants (``poly``,
  ``ema995``, ``emalr1``; ``ema-val1``: trained on K - 1 scans, validated on the K-th, as
  the Training panel does), ``consistency`` (semi-supervised, mutual consistency only;
  ``consistency-ema`` with the averaged weights), ``authors`` (+ the paper's contrast) and
  ``learning`` (+ the learning contrast at weight 0.1, capped at the segmentation's pull).
  The arms measured before the preset averaged its weights keep their last-step weights.

Scoring is the default inference on the site-B grid (``fbanet evaluate``). Each (K, arm,
seed) run lives in its own folder and writes ``record.json`` when done; finished runs are
read back, an unfinished one is started again (a time budget cannot be resumed fairly). Run
it on an otherwise idle machine so the budgets mean the same in every arm::

    python benchmarks/site_adaptation.py --out runs/site --labeled 4 2      # ~2 h
    python benchmarks/site_adaptation.py --out runs/site --labeled 4 --arms supervised \
        --budget 30                                                          # smoke test

Prints (and writes to ``--out``/report.md) per arm the mean ± std validation Dice over the
runs' per-case scores, the minimum case, the same for the run's last state (what a user
without validation scans keeps: ``model.safetensors``), the iterations and seconds used, and
a paired Wilcoxon test of the best semi-supervised arm against supervised over (case, seed)
pairs.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from la_tta import cpu_description
from scipy.stats import wilcoxon

logger = logging.getLogger("site_adaptation")

# Arm -> the flags it adds to `fbanet train --preset finetune`; None: no training. The arms
# measured before the preset averaged the weights keep their last-step weights (LAST_STEP).
LAST_STEP = ["--ema-decay", "0"]
BATCH2 = ["--mode", "supervised", "--batch-size", "2"]
EMA = [*BATCH2, "--ema-decay", "0.99"]  # the preset's settings, spelled out
ARMS: dict[str, list[str] | None] = {
    "bundled": None,
    "supervised": ["--mode", "supervised", "--batch-size", "4", *LAST_STEP],
    # Half the batch: steps 1.8x cheaper (train_speed.py --steps), so more of them in the budget.
    "batch2": [*BATCH2, *LAST_STEP],
    # Batch 2, the weights averaged over about the last 100 steps: the preset's settings.
    "ema": EMA,
    # Variants of it, one seed each at K = 4: a decaying lr instead (over about the
    # budget's steps, last-step weights), a longer average, a lower lr.
    "poly": [*BATCH2, "--lr-schedule", "poly", "--iterations", "1000", *LAST_STEP],
    "ema995": [*BATCH2, "--ema-decay", "0.995"],
    "emalr1": [*EMA, "--lr", "0.001"],
    # The same, validated on the last of the K labeled scans and trained on the others (a
    # user's run with "Validation cases: 1"), scored on the 8 validation scans as every arm.
    "ema-val1": EMA,
    "consistency": ["--mode", "semi-supervised", "--contrastive-weight", "0", *LAST_STEP],
    # Mutual consistency with the weights averaged as the preset now does.
    "consistency-ema": [
        "--mode", "semi-supervised", "--contrastive-weight", "0", "--ema-decay", "0.99",
    ],
    "authors": [
        "--mode", "semi-supervised", "--contrast", "authors", "--contrastive-weight", "1",
        *LAST_STEP,
    ],
    "learning": [
        "--mode", "semi-supervised", "--contrast", "learning", "--contrastive-weight", "0.1",
        *LAST_STEP,
    ],
}  # fmt: skip
SEMI = ("consistency", "consistency-ema", "authors", "learning")
# Candidates for the preset's settings: two seeds at K = 4.
CANDIDATES = ("supervised", "batch2", "ema")
PRESET_ARM = "ema"  # what --preset finetune does now
HOLDOUT_ARMS = ("ema-val1",)  # trained on K - 1 labeled scans, validated on the K-th
UNLABELED = 64
VALIDATION = 8


def make_site(la: Path, site: Path, out: Path, overrides: dict | None = None) -> Path:
    """Site-B NRRD files of every case of train.list (written once).

    ``overrides`` replaces make_site.py's acquisition constants (e.g. ``{"GAMMA": 0.6}``): a
    site whose parameters are not those of ``../shared/site``, to check that what helps at
    site B holds elsewhere.
    """
    folder = out / "site-b"
    if not (folder / ".done").exists():
        arguments = [str(la / "train"), str(la / "train.list"), str(folder)]
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); import make_site as m; "
            "[setattr(m, k, tuple(v) if isinstance(v, list) else v) "
            "for k, v in __import__('json').loads(sys.argv[2]).items()]; "
            "sys.exit(m.main(sys.argv[3:]))"
        )
        subprocess.run(
            [sys.executable, "-c", code, str(site), json.dumps(overrides or {}), *arguments],
            check=True,
        )  # fmt: skip
        (folder / ".done").write_text(json.dumps(overrides or {}))
    return folder


def write_manifests(folder: Path, names: list[str], labeled: int, out: Path) -> dict[str, Path]:
    """The training manifests and the scoring one: ``manifest`` (K labeled, 64 unlabeled, 8
    validation), ``holdout`` (the first K - 1 labeled, validated on the K-th) and
    ``scoring`` (the 8 validation cases)."""

    def entry(name: str, with_label: bool = True) -> dict[str, str]:
        found = {"image": str(folder / f"{name}.nrrd"), "name": name}
        return {**found, "label": str(folder / f"{name}-label.nrrd")} if with_label else found

    validation = [entry(n) for n in names[-VALIDATION:]]
    unlabeled_end = min(labeled + UNLABELED, len(names) - VALIDATION)
    train = {
        "labeled": [entry(n) for n in names[:labeled]],
        # Never the validation cases, whatever K.
        "unlabeled": [entry(n, False) for n in names[labeled:unlabeled_end]],
        "validation": validation,
    }
    holdout = {"labeled": train["labeled"][:-1], "validation": train["labeled"][-1:]}
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "manifest": out / f"train-{labeled}.json",
        "holdout": out / f"train-{labeled}-holdout.json",
        "scoring": out / "validation.json",
    }
    for key, content in (("manifest", train), ("holdout", holdout)):
        paths[key].write_text(json.dumps(content, indent=1))
    paths["scoring"].write_text(json.dumps({"validation": validation}, indent=1))
    return paths


def _fbanet(*arguments: str, threads: int, log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log.open("a", encoding="utf-8") as sink:
        subprocess.run(
            [sys.executable, "-m", "fbanet", *arguments], check=True, env=env, stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def _scores(table: Path) -> dict[str, float]:
    with table.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    key = next(k for k in rows[0] if k.lower() in ("case", "name"))
    return {r[key]: float(r["dice"]) for r in rows if r[key] not in ("mean", "std", "left_out")}


def run_arm(
    arm: str, seed: int, labeled: int, paths: dict[str, Path], args: argparse.Namespace
) -> dict:
    """Train (unless ``bundled``) and score one run; read back if already done."""
    run = args.out / f"labeled-{labeled}" / f"{arm}-seed{seed}"
    record_path = run / "record.json"
    if record_path.exists():
        return _with_last_state(json.loads(record_path.read_text()), run, paths, args)
    if run.exists():  # an unfinished run: a time budget cannot be resumed fairly
        shutil.rmtree(run)
    run.mkdir(parents=True)
    log = run / "commands.log"
    model, iterations, seconds = [], 0, 0.0
    flags = ARMS[arm]
    if flags is not None:
        logger.info("training %s (K=%d, seed %d) for %g s", arm, labeled, seed, args.budget)
        _fbanet(
            "train", "--manifest", str(paths["holdout" if arm in HOLDOUT_ARMS else "manifest"]),
            "--preset", "finetune",
            "--time-budget", str(args.budget), "-o", str(run / "run"), "--seed", str(seed),
            "--no-progress", *flags, threads=args.threads, log=log,
        )  # fmt: skip
        model = ["-m", str(run / "run" / "best_model.safetensors")]
        events = [json.loads(line) for line in (run / "run" / "progress.jsonl").open()]
        end = next(e for e in reversed(events) if e["event"] in ("finished", "stopped"))
        iterations, seconds = int(end["iteration"]), float(end["seconds"])
    table = run / "validation.csv"
    _fbanet("evaluate", "--manifest", str(paths["scoring"]), *model, "--csv", str(table),
            threads=args.threads, log=log)  # fmt: skip
    record = {
        "arm": arm, "seed": seed, "labeled": labeled, "iterations": iterations,
        "seconds": seconds, "dice": _scores(table),
    }  # fmt: skip
    record = _with_last_state(record, run, paths, args)
    record_path.write_text(json.dumps(record, indent=2))
    logger.info("%s: mean Dice %.4f", run, statistics.fmean(record["dice"].values()))
    return record


def _with_last_state(
    record: dict, run: Path, paths: dict[str, Path], args: argparse.Namespace
) -> dict:
    """Also the last state's scores (``dice_last``): what a run without validation scans keeps."""
    last = run / "run" / "model.safetensors"
    if "dice_last" in record or not last.exists():
        return record
    table = run / "validation-last.csv"
    _fbanet("evaluate", "--manifest", str(paths["scoring"]), "-m", str(last), "--csv",
            str(table), threads=args.threads, log=run / "commands.log")  # fmt: skip
    record = {**record, "dice_last": _scores(table)}
    (run / "record.json").write_text(json.dumps(record, indent=2))
    return record


def _pooled(runs: list[dict]) -> list[float]:
    return [100 * d for r in runs for d in r["dice"].values()]


def report(records: list[dict], cpu: str, budget: float) -> str:
    """Markdown: one table per K, then the paired test of the best semi-supervised arm."""
    lines = [f"{cpu}; budget {budget:g} s a run; validation: the last 8 cases of train.list."]
    for labeled in sorted({r["labeled"] for r in records}, reverse=True):
        arms: dict[str, list[dict]] = {}
        for r in records:
            if r["labeled"] == labeled:
                arms.setdefault(r["arm"], []).append(r)
        lines += ["", f"K = {labeled} labeled site-B scans", "",
                  "| arm | seeds | Dice % mean ± std | worst case % | last state: Dice % (worst) "
                  "| iterations | seconds |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, runs in arms.items():
            dice = _pooled(runs)
            spread = statistics.stdev(dice) if len(dice) > 1 else 0.0
            its = "/".join(str(r["iterations"]) for r in runs)
            secs = "/".join(f"{r['seconds']:.0f}" for r in runs)
            last = [100 * d for r in runs for d in r.get("dice_last", {}).values()]
            shown = f"{statistics.fmean(last):.2f} ({min(last):.2f})" if last else "-"
            mean = f"{statistics.fmean(dice):.2f} ± {spread:.2f}"
            lines.append(f"| {name} | {len(runs)} | {mean} | {min(dice):.2f} | {shown} | {its} "
                         f"| {secs} |")  # fmt: skip
        semi = [a for a in SEMI if a in arms]
        reference = PRESET_ARM if PRESET_ARM in arms else "supervised"
        pairs = [(PRESET_ARM, "batch2")]
        if semi:  # the arm run on more seeds (plan() picks it by its first seed), then the best
            best = max(semi, key=lambda a: (len(arms[a]), statistics.fmean(_pooled(arms[a]))))
            pairs.append((best, reference))
        lines += [line for a, b in pairs if (line := _paired(arms, a, b))]
    return "\n".join(lines)


def _paired(arms: dict[str, list[dict]], arm: str, other: str) -> str | None:
    """A Wilcoxon test of ``arm`` against ``other`` over their (case, seed) pairs, or None
    where either arm is missing or there are fewer than 6 pairs."""
    if arm not in arms or other not in arms:
        return None
    base = {r["seed"]: r["dice"] for r in arms[other]}
    pairs = [(r["dice"][c], base[r["seed"]][c])
             for r in arms[arm] if r["seed"] in base for c in r["dice"]]  # fmt: skip
    if len(pairs) < 6:
        return None
    test = wilcoxon([a for a, _ in pairs], [b for _, b in pairs])
    gain = 100 * statistics.fmean(a - b for a, b in pairs)
    return (f"\n{arm} vs {other} over {len(pairs)} (case, seed) pairs: {gain:+.2f} Dice "
            f"points, Wilcoxon p = {test.pvalue:.3g}")  # fmt: skip


def plan(
    labeled: int, arms: list[str], seeds: list[int], done: list[dict]
) -> list[tuple[str, int]]:
    """(arm, seed) runs for one K: every arm on the first seed; at K = 4, the second seed
    for the supervised candidates and for the semi-supervised arm that did best on the first."""
    runs = [(a, seeds[0]) for a in arms]
    if labeled == 4 and len(seeds) > 1:
        first = [r for r in done if r["labeled"] == labeled and r["seed"] == seeds[0]]
        semi = [r for r in first if r["arm"] in SEMI]
        extra = [a for a in CANDIDATES if a in arms]
        if semi:
            extra.append(max(semi, key=lambda r: statistics.fmean(r["dice"].values()))["arm"])
        runs += [(a, s) for s in seeds[1:] for a in extra]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--la", type=Path, default=Path("../shared/la"))
    parser.add_argument("--site", type=Path, default=Path("../shared/site"))
    parser.add_argument("--out", type=Path, default=Path("runs/site"))
    parser.add_argument("--labeled", type=int, nargs="+", default=[4, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of training a run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--site-overrides", type=json.loads, default=None,
        help='JSON: make_site.py constants to replace, e.g. \'{"GAMMA": 0.6}\' (another site)',
    )  # fmt: skip
    args = parser.parse_args()
    args.out = args.out.resolve()  # manifests hold absolute paths
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    names = (args.la / "train.list").read_text().split()
    folder = make_site(args.la, args.site, args.out, args.site_overrides)
    records: list[dict] = []
    for labeled in args.labeled:
        paths = write_manifests(folder, names, labeled, args.out)
        for arm in args.arms:  # the first seed of every arm, then the second seeds
            records.append(run_arm(arm, args.seeds[0], labeled, paths, args))
        for arm, seed in plan(labeled, args.arms, args.seeds, records)[len(args.arms) :]:
            records.append(run_arm(arm, seed, labeled, paths, args))
    text = report(records, cpu_description(), args.budget)
    (args.out / "report.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
