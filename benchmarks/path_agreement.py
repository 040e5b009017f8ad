"""How closely fbanet's fast path agrees with the authors' protocol, case by case.

``inference_speed.py`` times the two paths on one volume; this script measures, on the
labeled validation cases of the LA data, the Dice between the labelmap of the authors'
evaluation protocol (a: stride 18/18/4, plain mean, no post-processing) and fbanet's default
path (b), plus two variants of (b) that isolate where they differ: without the
largest-component step, and with constant blending of patch windows at overlap 0.5. It also
scores (a) and (b) against the reference labels. The agreement depends on the model: pass
the one to examine.

Usage:
    python benchmarks/path_agreement.py --model runs/default-model/model.safetensors
    python benchmarks/path_agreement.py --model model.safetensors --cases 8 --data ../shared/la
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import numpy as np

from fbanet.infer.config import InferenceConfig
from fbanet.infer.segmenter import Segmenter, paper_config
from fbanet.io.volumes import read_volume
from fbanet.metrics import dice

logger = logging.getLogger("path_agreement")

LA_SPACING = (0.625, 0.625, 0.625)
VARIANTS = {
    "b": InferenceConfig(),
    "b, no largest component": InferenceConfig(largest_component=False),
    # Blending matters only between sliding windows: this variant slides the training patch
    # and does not mirror, as fbanet 0.1's default did.
    "b, constant blend, overlap 0.5": InferenceConfig(
        overlap=0.5, blend="constant", window="patch", flips="none"
    ),
}
SHORT = ("b", "b no LCC", "b const 0.5")
COLUMNS = (
    *(f"Dice(a,{v})" for v in SHORT),
    "Dice(a,label)",
    *(f"Dice({v},label)" for v in SHORT),
)


def case_row(path: Path, reference: Segmenter, variants: dict[str, Segmenter]) -> list[float]:
    """Agreements and label Dice of one LA case, in the order of :data:`COLUMNS`."""
    image = read_volume(path, h5_spacing=LA_SPACING)
    label = read_volume(path, dataset="label", h5_spacing=LA_SPACING).array > 0
    a = reference.segment(image, normalized=True).labelmap.array > 0
    preds = [s.segment(image, normalized=True).labelmap.array > 0 for s in variants.values()]
    return [*(dice(b, a) for b in preds), dice(a, label), *(dice(b, label) for b in preds)]


def markdown(rows: dict[str, list[float]]) -> str:
    """Per-case rows plus mean and median, as a markdown table."""
    lines = ["| case | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    columns = list(zip(*rows.values(), strict=True))
    for label, stat in (("mean", statistics.fmean), ("median", statistics.median)):
        lines.append(f"| **{label}** | " + " | ".join(f"{stat(c):.4f}" for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="fbanet model file")
    parser.add_argument("--data", type=Path, default=Path("../shared/la"))
    parser.add_argument(
        "--cases", type=int, default=8, help="the last N names of train.list (validation)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    names = (args.data / "train.list").read_text().split()[-args.cases :]
    reference = Segmenter.from_file(args.model, paper_config())
    variants = {k: Segmenter.from_file(args.model, v) for k, v in VARIANTS.items()}
    rows = {}
    for name in names:
        rows[name] = case_row(args.data / "train" / f"{name}.h5", reference, variants)
        logger.info("%s: %s", name, np.round(rows[name], 4).tolist())
    print(markdown(rows))


if __name__ == "__main__":
    main()
