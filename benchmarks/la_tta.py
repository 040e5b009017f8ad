"""Windows and test-time mirroring on the LA validation cases: Dice gained, time paid.

Segments every validation case (the last 8 of train.list, never trained on) with each
inference variant, interleaved case by case so the noise of a shared machine hits every
variant alike, and prints a markdown table: mean Dice, median seconds per volume and the
median per-case time ratio against ``fbanet 0.1`` (sliding windows of the training patch,
no mirroring: the reference run, in the same process)::

    python benchmarks/la_tta.py                                  # the bundled model
    python benchmarks/la_tta.py --model runs/x/model.safetensors --threads 2

Variants: ``window`` is ``patch`` (sliding windows of the training patch, overlap 0.25) or
``volume`` (one window over the whole region); ``flips`` is ``none``, ``axes`` (as is,
mirrored X, mirrored Y) or ``all`` (also mirrored X and Y at once). The table names the
CPU. Choosing among variants on these 8 cases makes the winner's number slightly
optimistic; the model card says so.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import statistics
from pathlib import Path

import torch
from la_semi_supervised import validation_volumes

from fbanet.device import cpu_supports_bf16
from fbanet.infer.config import InferenceConfig
from fbanet.infer.segmenter import Segmenter
from fbanet.metrics import compute_metrics
from fbanet.model.bundled import default_model_path

logger = logging.getLogger("la_tta")

REFERENCE = ("patch", "none")  # fbanet 0.1's default protocol


def cpu_description() -> str:
    """Model name, core count and bfloat16 support of this CPU."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = "native bfloat16" if cpu_supports_bf16() else "no native bfloat16"
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {bf16}"


def measure(model: Path, data: Path, names: list[str], variants: list[tuple[str, str]]) -> dict:
    """Per variant: per-case Dice and seconds."""
    cases = validation_volumes(data, names)
    segmenters = {
        v: Segmenter.from_file(model, InferenceConfig(window=v[0], flips=v[1])) for v in variants
    }
    found: dict[tuple[str, str], dict[str, list[float]]] = {
        v: {"dice": [], "seconds": []} for v in variants
    }
    for case in cases:
        for variant, segmenter in segmenters.items():
            result = segmenter.segment(case.image, normalized=case.normalized)
            metrics = compute_metrics(
                result.labelmap.array == 1, case.label == 1, spacing=case.image.geometry.spacing
            )
            found[variant]["dice"].append(metrics.dice)
            found[variant]["seconds"].append(result.seconds)
        logger.info(
            "%s: %s", case.name,
            ", ".join(f"{w}/{f} {found[(w, f)]['dice'][-1]:.4f}" for w, f in variants),
        )  # fmt: skip
    return found


def table(found: dict, cpu: str) -> str:
    """Markdown: Dice, seconds and time ratio against the reference, per variant."""
    reference = found[REFERENCE]["seconds"]
    lines = [
        f"CPU: {cpu}",
        "",
        "| window | flips | Dice % (mean ± std over cases) | min Dice % | median s / volume "
        "| time ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (window, flips), values in found.items():
        dice = [100 * d for d in values["dice"]]
        ratio = statistics.median(a / b for a, b in zip(values["seconds"], reference, strict=True))
        lines.append(
            f"| {window} | {flips} | {statistics.fmean(dice):.2f} ± {statistics.pstdev(dice):.2f} "
            f"| {min(dice):.2f} | {statistics.median(values['seconds']):.2f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model file (default: the bundled model)")
    parser.add_argument("--data", type=Path, default=Path("../shared/la"))
    parser.add_argument("--validation", type=int, default=8, help="last N cases of train.list")
    parser.add_argument("--windows", nargs="+", default=["patch", "volume"])
    parser.add_argument("--flips", nargs="+", default=["none", "axes", "all"])
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = list(itertools.product(args.windows, args.flips))
    if REFERENCE not in variants:
        variants.insert(0, REFERENCE)
    names = (args.data / "train.list").read_text().split()[-args.validation :]
    model = args.model or default_model_path()
    if model is None:
        parser.error("no bundled model; pass --model")
    found = measure(model, args.data, names, variants)
    print(table(found, cpu_description()))


if __name__ == "__main__":
    main()
