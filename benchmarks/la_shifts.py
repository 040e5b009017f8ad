"""How much a model's segmentation moves when the scan moves by a voxel in its window.

A network that halves its grid four times sees a scan differently at each of the 16
alignments with that grid, and a user's scan (or any crop of it) lies at any of them. This
segments each LA validation case (the last 8 of train.list, never trained on) at every
alignment along each axis: the network input (at the model's spacing, z-scored as the
segmenter prepares it) gets 0 to 15 empty voxels before it on that axis, and the
prediction is cut back. Default inference otherwise (whole-region window, mirrored passes).

Prints a markdown table per model and axis: the mean Dice over cases and alignments, the
mean over cases of each case's range (best alignment minus worst), the largest range and
its case. Dice is computed at the model's spacing against the label resampled there
(nearest neighbour), so it differs a little from full-resolution figures::

    python benchmarks/la_shifts.py --models old.safetensors new.safetensors --threads 2
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

import numpy as np
from la_crops import LA_SPACING, model_arguments, parse_model_arguments
from la_tta import cpu_description

from fbanet.config import PATCH_MULTIPLE, IntensityNormalization
from fbanet.data.preprocess import prepare_input
from fbanet.infer.files import read_labeled
from fbanet.infer.orientation import training_axis_order
from fbanet.infer.segmenter import Segmenter
from fbanet.io.volumes import Volume
from fbanet.metrics import dice

logger = logging.getLogger("la_shifts")


def network_inputs(segmenter: Segmenter, data: Path, names: list[str]) -> list[tuple]:
    """Per case: (name, network input, label), both at the model's spacing."""
    cases = []
    for name in names:
        case = read_labeled(data / "train" / f"{name}.h5", None, LA_SPACING, name)
        order = training_axis_order(case.image.geometry)
        image = prepare_input(
            order.volume(case.image), normalization=segmenter.metadata.normalization,
            spacing=segmenter.metadata.spacing,
        ).network.array  # fmt: skip
        label = Volume(case.label.astype(np.float32), case.image.geometry)
        label = prepare_input(
            order.volume(label), normalization=IntensityNormalization.AS_STORED,
            spacing=segmenter.metadata.spacing,
        ).network.array  # fmt: skip
        cases.append((name, image, label > 0.5))
    return cases


def shifted_dice(segmenter: Segmenter, image: np.ndarray, label: np.ndarray, axis: int) -> list:
    """Dice at each of the 16 alignments along ``axis`` (0..15 empty voxels before)."""
    scores = []
    for shift in range(PATCH_MULTIPLE):
        pad = [(0, 0)] * 3
        pad[axis] = (shift, 0)
        probs = segmenter.predict(np.pad(image, pad), segmenter.config.decoders)[0]
        keep = [slice(None)] * 3
        keep[axis] = slice(shift, None)
        scores.append(dice(probs[1:].sum(axis=0)[tuple(keep)] > 0.5, label))
    return scores


def main() -> None:
    args, models, names = parse_model_arguments(model_arguments(__doc__))
    lines = [f"CPU: {cpu_description()}", "",
             "| model | axis | Dice % (all alignments) | mean range (points) | largest range |",
             "|---|---|---:|---:|---|"]  # fmt: skip
    for model in models:
        segmenter = Segmenter.from_file(model)
        cases = network_inputs(segmenter, args.data, names)
        for axis in range(3):
            found = {name: shifted_dice(segmenter, image, label, axis)
                     for name, image, label in cases}  # fmt: skip
            ranges = {n: 100 * (max(v) - min(v)) for n, v in found.items()}
            worst = max(ranges, key=ranges.__getitem__)
            mean = 100 * statistics.fmean(d for v in found.values() for d in v)
            logger.info("%s axis %d: %s", model.name, axis, ranges)
            lines.append(f"| {model.name} | {'XYZ'[axis]} | {mean:.2f} | "
                         f"{statistics.fmean(ranges.values()):.2f} | "
                         f"{ranges[worst]:.2f} ({worst}) |")  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
