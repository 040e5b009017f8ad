"""A user's own files: Dice on the LA validation cases written as NRRD, cropped three ways.

Every figure we quote should be what a user's file gets, not what the HDF5 layout gets. This
writes each validation case (the last 8 of train.list, never trained on) as NRRD image and
label files, at its own 0.625 mm spacing, in three crops:

- ``stored``: the whole stored volume, the largest region the data allow;
- ``medium``: the atrium's box with 20 voxels (12.5 mm) on every side;
- ``tight``: the atrium's box with 6 voxels (about 4 mm) on every side;

then reads them back and segments them as ``fbanet evaluate --manifest`` does, with each
model given, interleaved case by case so the noise of a shared machine hits every model
alike. Also the HDF5 files themselves (``hdf5``). Prints a markdown table: mean ± std Dice,
the worst case, the spread of the crops' means, the median seconds per volume and the median
per-case time ratio against the first model (the reference, in the same process)::

    python benchmarks/la_crops.py                                   # the bundled model
    python benchmarks/la_crops.py --models old.safetensors new.safetensors --threads 2

The NRRD files go to ``--work`` (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from la_tta import cpu_description

from fbanet.data.intensity import foreground_box
from fbanet.data.preprocess import IndexBox, crop
from fbanet.infer.evaluation import LabeledVolume
from fbanet.infer.files import read_labeled
from fbanet.infer.segmenter import Segmenter
from fbanet.io.volumes import Geometry, Volume, read_volume, write_volume
from fbanet.metrics import compute_metrics
from fbanet.model.bundled import default_model_path

logger = logging.getLogger("la_crops")

LA_SPACING = (0.625, 0.625, 0.625)
MARGINS = {"medium": 20, "tight": 6}  # voxels around the atrium's box, every side


def crop_box(label: np.ndarray, margin: int | None) -> IndexBox:
    """The atrium's box grown by ``margin`` voxels a side (clipped); None: the whole volume."""
    if margin is None:
        return IndexBox((0, 0, 0), label.shape)  # type: ignore[arg-type]
    box = foreground_box(label)
    assert box is not None, "every LA case has a label"
    start = tuple(max(0, a - margin) for a in box.start)
    stop = tuple(min(s, b + margin) for s, b in zip(label.shape, box.stop, strict=True))
    return IndexBox(start, stop)  # type: ignore[arg-type]


def write_crops(data: Path, names: list[str], work: Path) -> dict[str, list[LabeledVolume]]:
    """Per crop, the validation cases as a user's NRRD files, read back as evaluate reads them."""
    crops: dict[str, list[LabeledVolume]] = {"hdf5": [], "stored": [], "medium": [], "tight": []}
    for name in names:
        path = data / "train" / f"{name}.h5"
        crops["hdf5"].append(read_labeled(path, None, LA_SPACING, name))
        image = Volume(read_volume(path, h5_spacing=LA_SPACING).array, Geometry(LA_SPACING))
        label = read_volume(path, dataset="label", h5_spacing=LA_SPACING)
        label = Volume(label.array, Geometry(LA_SPACING))
        for kind, margin in (("stored", None), *MARGINS.items()):
            box = crop_box(label.array, margin)
            image_path = write_volume(crop(image, box), work / f"{name}-{kind}.nrrd")
            label_path = write_volume(crop(label, box), work / f"{name}-{kind}-label.nrrd")
            crops[kind].append(read_labeled(image_path, label_path, None, name))
    return crops


def measure(models: list[Path], crops: dict[str, list[LabeledVolume]]) -> dict:
    """Per (model, crop): per-case Dice and seconds."""
    segmenters = [Segmenter.from_file(m) for m in models]
    found: dict[tuple[int, str], dict[str, list[float]]] = {
        (m, kind): {"dice": [], "seconds": []} for m in range(len(models)) for kind in crops
    }
    for index in range(len(crops["hdf5"])):
        for kind, cases in crops.items():
            case = cases[index]
            for m, segmenter in enumerate(segmenters):
                result = segmenter.segment(case.image, normalized=case.normalized)
                metrics = compute_metrics(
                    result.labelmap.array == 1, case.label == 1,
                    spacing=case.image.geometry.spacing,
                )  # fmt: skip
                found[(m, kind)]["dice"].append(metrics.dice)
                found[(m, kind)]["seconds"].append(result.seconds)
        logger.info(
            "%s: %s", crops["hdf5"][index].name,
            ", ".join(f"{m}/{k} {v['dice'][-1]:.4f}" for (m, k), v in found.items()),
        )  # fmt: skip
    return found


def table(models: list[Path], found: dict, cpu: str) -> str:
    """Markdown: Dice per model and crop, the crops' spread, seconds and time ratio."""
    lines = [
        f"CPU: {cpu}",
        "",
        "| model | input | Dice % (mean ± std) | min Dice % | median s / volume | time ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m, model in enumerate(models):
        means = []
        for kind in ("hdf5", "stored", "medium", "tight"):
            values = found[(m, kind)]
            dice = [100 * d for d in values["dice"]]
            reference = found[(0, kind)]["seconds"]
            ratio = statistics.median(
                a / b for a, b in zip(values["seconds"], reference, strict=True)
            )
            if kind != "hdf5":
                means.append(statistics.fmean(dice))
            lines.append(
                f"| {model.name} | {kind} | {statistics.fmean(dice):.2f} ± "
                f"{statistics.pstdev(dice):.2f} | {min(dice):.2f} | "
                f"{statistics.median(values['seconds']):.2f} | {ratio:.2f} |"
            )
        lines.append(f"| {model.name} | spread of the NRRD crops' means | "
                     f"{max(means) - min(means):.2f} points | | | |")  # fmt: skip
    return "\n".join(lines)


def model_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The options the LA validation benchmarks share: models, data, cases, threads."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", help="model files (default: bundled)")
    parser.add_argument("--data", type=Path, default=Path("../shared/la"))
    parser.add_argument("--validation", type=int, default=8, help="last N cases of train.list")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    return parser


def parse_model_arguments(
    parser: argparse.ArgumentParser,
) -> tuple[argparse.Namespace, list[Path], list[str]]:
    """Parsed options (logging and threads set up), the model files and the case names."""
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = (args.data / "train.list").read_text().split()[-args.validation :]
    return args, args.models or [default_model_path()], names


def main() -> None:
    parser = model_arguments(__doc__)
    parser.add_argument("--work", type=Path, help="folder for the NRRD files (kept)")
    args, models, names = parse_model_arguments(parser)
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        found = measure(models, write_crops(args.data, names, work))
    print(table(models, found, cpu_description()))


if __name__ == "__main__":
    main()
