"""``fbanet demo``: train on synthetic phantoms and segment one, to try fbanet without data."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

logger = logging.getLogger("fbanet")


def add_parsers(commands: Any) -> None:
    """Register ``demo``."""
    p = commands.add_parser(
        "demo",
        help="train FBA-Net on synthetic phantoms and segment one (no data needed)",
        description="Builds a small cohort of synthetic left-atrium phantoms, trains FBA-Net "
        "on a few labeled and several unlabeled ones (about half a minute on an idle 2-core "
        "CPU, at most --time-budget seconds of training anywhere), segments a held-out "
        "phantom and reports the Dice against its true label. --quick takes seconds and only "
        "checks that everything runs.",
    )
    p.add_argument(
        "-o", "--out", type=Path, default=Path("fbanet-demo"), help="output folder (fbanet-demo)"
    )
    p.add_argument("--iterations", type=int, help="training iterations (60; 40 with --quick)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=90.0,
        help="stop training after this many seconds, 0 for no limit (90)",
    )
    p.add_argument(
        "--quick", action="store_true", help="seconds-long smoke run (Dice about 0.5-0.8)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the phantoms and training (0)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument(
        "--precision",
        default="auto",
        help="auto (bfloat16 where supported), bf16 or fp32",
    )
    p.add_argument("--fp32", action="store_true", help="same as --precision fp32")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=demo_command)


def _model_note(result: Any) -> str:
    """Why the model named differs from the trainer's last line (model.safetensors)."""
    if Path(result.model_path).name != "best_model.safetensors":
        return ""
    return (
        " (the state with the best validation Dice, used for the segmentation; the run's "
        f"last state, named in the trainer's last line, is {result.run_dir / 'model.safetensors'})"
    )


def _summary(result: Any) -> str:
    validation = result.validation_dice
    hd95 = f"{result.hd95:.1f} mm" if math.isfinite(result.hd95) else "n/a"
    budget = (
        f" (the time budget stopped training; of {result.planned_iterations} planned)"
        if result.stopped_early
        else ""
    )
    lines = [
        f"FBA-Net demo: {result.iterations} iterations{budget}, {result.seconds:.0f} s "
        f"(training {result.train_seconds:.0f} s)",
        f"  Dice on the held-out phantom: {result.dice:.3f} (95% Hausdorff {hd95})"
        + (f"; best validation Dice {validation:.3f}" if validation is not None else ""),
        f"  scan:          {result.image_path}",
        f"  segmentation:  {result.segmentation_path}",
        f"  true label:    {result.reference_path}",
        f"  preview:       {result.preview_path}",
        f"  curves:        {result.curves_path}",
        f"  model:         {result.model_path}{_model_note(result)}",
        "In 3D Slicer: drag the scan and both .seg.nrrd files into the window (or File > Add "
        "Data), then show them in 3D from the Segmentations module.",
        "This model has only seen phantoms; for real scans, train on them with 'fbanet train'.",
    ]
    return "\n".join(lines)


def demo_command(args: argparse.Namespace) -> int:
    """Run the demo and print where everything is."""
    from fbanet.demo.run import run_demo

    result = run_demo(
        args.out,
        iterations=args.iterations,
        quick=args.quick,
        seed=args.seed,
        device=args.device,
        precision="fp32" if args.fp32 else args.precision,
        progress=not args.no_progress,
        time_budget=args.time_budget if args.time_budget > 0 else None,
    )
    print(_summary(result))
    return 0
