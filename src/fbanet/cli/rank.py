"""``fbanet rank``: which scans to annotate next, by the disagreement of the model's decoders."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from fbanet.cli.inference import add_compute_options, load_segmenter
from fbanet.protocol import Event, make_event

logger = logging.getLogger("fbanet")


def add_parser(commands: Any) -> None:
    """Register ``rank``."""
    p = commands.add_parser(
        "rank",
        help="rank scans by the decoders' disagreement: annotate the first ones next",
        description="Score each scan by the mean disagreement (standard deviation) of the "
        "decoders' foreground probabilities over the predicted region, and list the scans most "
        "in need of annotation first (scans where nothing is found come first). Every decoder "
        "the model file holds takes part: a model written by 'fbanet train' holds three, the "
        "bundled model two (0 and 1); a model with one cannot rank.",
    )
    p.add_argument(
        "images", type=Path, nargs="+", help="NRRD, NIfTI, MHA, DICOM folder or LA HDF5 files"
    )
    p.add_argument("-m", "--model", type=Path, help="fbanet model file (default: bundled model)")
    p.add_argument(
        "--margin", type=int, default=2, help="voxels added around the predicted region (2)"
    )
    p.add_argument("--windows-per-batch", type=int, help="windows per forward pass (4)")
    add_compute_options(p)
    p.add_argument("--json", action="store_true", help="JSON lines on stdout instead of a table")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (accepted by every long command; rank draws none)",
    )
    p.set_defaults(handler=rank_command)


def _segmenter(args: argparse.Namespace) -> Any:
    from fbanet.infer.config import InferenceConfig

    settings: dict[str, Any] = {
        "device": args.device,
        "precision": "fp32" if args.fp32 else args.precision,
    }
    if args.windows_per_batch is not None:
        settings["windows_per_batch"] = args.windows_per_batch
    return load_segmenter(args.model, InferenceConfig(**settings))


def _emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def _table(ranking: list[Any]) -> str:
    width = max(len(d.name) for d in ranking)
    lines = [f"{'rank':>4}  {'score':>8}  {'voxels':>9}  {'scan':<{width}}"]
    for index, item in enumerate(ranking, start=1):
        note = "  (nothing found)" if item.missed else ""
        lines.append(
            f"{index:>4}  {item.score:>8.4f}  {item.region_voxels:>9d}  {item.name:<{width}}{note}"
        )
    return "\n".join(lines)


def rank_command(args: argparse.Namespace) -> int:
    """Score every scan, then print the ranking (a table, or JSON lines with --json)."""
    from fbanet.infer.files import check_inputs
    from fbanet.infer.ranking import rank_files

    check_inputs(args.images)  # before the model loads

    def scored(index: int, result: Any) -> None:
        if args.json:
            _emit(make_event(Event.SCORED, index=index, total=len(args.images),
                             **result.to_dict()))  # fmt: skip

    ranking = rank_files(
        _segmenter(args), args.images, h5_spacing=args.h5_spacing, margin=args.margin,
        on_scored=scored,
    )  # fmt: skip
    if args.json:
        _emit(make_event(Event.RANKED, ranking=[d.to_dict() for d in ranking]))
    else:
        print(_table(ranking), file=sys.stdout)
    return 0
