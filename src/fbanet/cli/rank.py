"""``fbanet rank``: which scans to annotate next, by the disagreement of the three decoders."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from fbanet.cli.inference import add_compute_options, load_segmenter

logger = logging.getLogger("fbanet")


def add_parser(commands: Any) -> None:
    """Register ``rank``."""
    p = commands.add_parser(
        "rank",
        help="rank scans by the decoders' disagreement: annotate the first ones next",
        description="Score each scan by the mean disagreement (standard deviation) of the "
        "three decoders' foreground probabilities over the predicted region, and list the "
        "scans most in need of annotation first (scans where nothing is found come first).",
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
    p.set_defaults(handler=rank_command)


def _segmenter(args: argparse.Namespace) -> Any:
    from fbanet.config import InferenceConfig

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
    from fbanet.infer.files import read_scan
    from fbanet.infer.ranking import disagreement, sort_by_disagreement
    from fbanet.io.volumes import split_extension

    if args.margin < 0:
        raise ValueError(f"--margin must be >= 0, got {args.margin}")
    names = [split_extension(path)[0] for path in args.images]
    if len(set(names)) != len(names):
        raise ValueError("two scans have the same name; rank scans with distinct file names")
    for path in args.images:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; check the path")
    segmenter = _segmenter(args)
    scores = []
    for index, (path, name) in enumerate(zip(args.images, names, strict=True), start=1):
        volume, normalized = read_scan(path, args.h5_spacing)
        result = disagreement(
            segmenter, volume, name=name, normalized=normalized, margin=args.margin, path=path
        )
        scores.append(result)
        if args.json:
            _emit({"event": "scored", "index": index, "total": len(args.images),
                   **result.to_dict()})  # fmt: skip
    ranking = sort_by_disagreement(scores)
    if args.json:
        _emit({"event": "ranked", "ranking": [d.to_dict() for d in ranking]})
    else:
        print(_table(ranking), file=sys.stdout)
    return 0
