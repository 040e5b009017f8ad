"""``fbanet segment`` and ``fbanet evaluate``: argument parsing and calls into the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from fbanet.protocol import Event, make_event

logger = logging.getLogger("fbanet")


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", type=Path, help="fbanet model file (default: bundled model)")
    p.add_argument(
        "--protocol",
        default="default",
        help="default (fast), or paper (stride 18/18/4, mean, no post-processing)",
    )
    p.add_argument("--overlap", type=float, help="window overlap of the default protocol (0.25)")
    p.add_argument("--windows-per-batch", type=int, help="windows per forward pass (4)")
    p.add_argument("--decoders", type=int, nargs="+", help="decoders to average (default: 0)")
    p.add_argument(
        "--flips",
        nargs="?",
        const="all",
        help="test-time mirroring: axes (X, Y: 3 passes, default), all (also XY: 4) or none; "
        "alone: all",
    )
    p.add_argument(
        "--window",
        help="volume (one window over the whole region where it fits, default) or patch "
        "(sliding windows of the training patch)",
    )
    lcc = p.add_mutually_exclusive_group()
    lcc.add_argument(
        "--largest-component",
        dest="largest_component",
        action="store_true",
        default=None,
        help="keep only the largest connected component",
    )
    lcc.add_argument("--no-largest-component", dest="largest_component", action="store_false")
    add_compute_options(p)


def add_compute_options(p: argparse.ArgumentParser) -> None:
    """Options of every command that runs a model: device, precision, HDF5 spacing."""
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument(
        "--precision",
        default="auto",
        help="auto (bfloat16 where supported), bf16, fp32",
    )
    p.add_argument("--fp32", action="store_true", help="same as --precision fp32")
    p.add_argument(
        "--h5-spacing",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="voxel spacing (mm) of HDF5 inputs without a 'spacing' attribute (required for "
        "those; the LA data: 0.625 0.625 0.625)",
    )


def add_parsers(commands: Any) -> None:
    """Register ``segment`` and ``evaluate``."""
    p = commands.add_parser("segment", help="segment scans with a model")
    p.add_argument(
        "images", type=Path, nargs="+", help="NRRD, NIfTI, MHA, DICOM folder or LA HDF5 files"
    )
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        required=True,
        help="output file (.seg.nrrd, .nii.gz, .nrrd, .mha) or folder",
    )
    p.add_argument(
        "--format",
        default=".seg.nrrd",
        help="file type in an output folder: seg.nrrd (default), nii.gz, nii, nrrd or mha (with "
        "or without the leading dot)",
    )
    roi = p.add_mutually_exclusive_group()
    roi.add_argument(
        "--roi",
        type=int,
        nargs=6,
        metavar=("I0", "J0", "K0", "I1", "J1", "K1"),
        help="region to segment, voxel indices (stop exclusive)",
    )
    roi.add_argument(
        "--roi-mm",
        type=float,
        nargs=6,
        metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"),
        help="region to segment, two opposite corners in mm (LPS)",
    )
    p.add_argument("--probability", action="store_true", help="also write the probability map")
    p.add_argument(
        "--uncertainty", action="store_true", help="also write the decoders' disagreement map"
    )
    p.add_argument(
        "--preview", type=Path, help="PNG of three slices with the outline (folder: many inputs)"
    )
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout, no bar")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--devices",
        help="GPUs to spread many inputs over, one worker each, e.g. 0,1,2,3 (default: all)",
    )
    _add_inference_options(p)
    p.set_defaults(handler=segment_command)
    _add_evaluate_parser(commands)


def _add_evaluate_parser(commands: Any) -> None:
    e = commands.add_parser(
        "evaluate", help="score a model, or saved segmentations, on labeled cases"
    )
    e.add_argument(
        "--manifest",
        type=Path,
        help="JSON: a training manifest (scores its 'validation' cases, else 'labeled'), "
        '{"validation": [...]} alone, or a list of {"image": ..., "label": ...} pairs',
    )
    e.add_argument("--h5-dir", type=Path, help="folder of <case>.h5 files")
    e.add_argument("--h5-list", type=Path, help="case names to score, one a line")
    e.add_argument("--pred", type=Path, help="a saved segmentation to score (with --ref)")
    e.add_argument("--ref", type=Path, help="the reference segmentation")
    e.add_argument("--csv", type=Path, help="write the per-case table here")
    e.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (accepted by every long command; evaluate draws none)",
    )
    _add_inference_options(e)
    e.set_defaults(handler=evaluate_command)


def _inference_config(args: argparse.Namespace) -> Any:
    import dataclasses

    from fbanet.config import parse_enum
    from fbanet.infer.config import InferenceConfig, Protocol
    from fbanet.infer.segmenter import paper_config

    protocol = parse_enum(Protocol, args.protocol)
    base = paper_config() if protocol is Protocol.PAPER else InferenceConfig()
    changes: dict[str, Any] = {
        "device": args.device,
        "precision": "fp32" if args.fp32 else args.precision,
    }
    for name in ("overlap", "windows_per_batch", "largest_component", "flips", "window"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.decoders:
        changes["decoders"] = tuple(args.decoders)
    return dataclasses.replace(base, **changes)


def load_segmenter(model: Path | None, config: Any) -> Any:
    """A ``Segmenter`` for ``model``, or for the bundled model when ``model`` is None."""
    from fbanet.infer.segmenter import Segmenter
    from fbanet.model.bundled import default_model_path

    model = model or default_model_path()
    if model is None:
        raise ValueError("no model given and no default model is bundled; pass --model FILE")
    return Segmenter.from_file(model, config)


def _segmenter(args: argparse.Namespace) -> Any:
    return load_segmenter(args.model, _inference_config(args))


def segment_command(args: argparse.Namespace) -> int:
    """Segment each input, one worker per device; exit 0, or non-zero listing the failures.

    One input keeps its error (exit 2 for bad input) with nothing partial written; of many,
    a failed one is reported and the others go on.
    """
    from fbanet.infer.cohort import CaseJob, failure_summary, segment_cohort
    from fbanet.infer.files import RegionOfInterest, check_inputs, output_paths

    if args.preview is not None and len(args.images) == 1 and args.preview.suffix != ".png":
        raise ValueError(f"--preview must name a .png file, got {str(args.preview)!r}")
    outputs = output_paths(args.images, args.out, args.format)
    jobs = []
    for index, (image, out) in enumerate(zip(args.images, outputs, strict=True)):
        preview = args.preview
        if preview is not None and len(args.images) > 1:
            preview = args.preview / f"{out.name.split('.')[0]}.png"
        jobs.append(CaseJob(index, image, out, preview))
    # Every input and output location is checked before the model loads.
    check_inputs(args.images, [*outputs, *([args.preview] if args.preview else [])])
    _refuse_overwrites(args, jobs)
    config = _inference_config(args)
    devices = _worker_devices(args, config)
    roi = None
    if args.roi or args.roi_mm:
        values = args.roi or args.roi_mm
        roi = RegionOfInterest(tuple(values[:3]), tuple(values[3:]), physical=bool(args.roi_mm))
    show_bar = not (args.json or args.no_progress) and len(devices) == 1
    run = _CaseRunner(args, roi, show_bar=show_bar)
    outcomes = segment_cohort(
        jobs, devices, lambda device: _device_segmenter(args, config, device), run.segment,
        on_outcome=run.report, cancel=run.cancel,
    )  # fmt: skip
    summary = failure_summary(outcomes)
    if summary is None:
        return 0
    if len(outcomes) == 1 and outcomes[0].exception is not None:
        raise outcomes[0].exception  # one input: its own error, as main reports it
    print(f"fbanet segment: error: {summary}", file=sys.stderr)
    return 2 if all(o.bad_input for o in outcomes if not o.ok) else 1


def _model_path(model: Path | None) -> Path | None:
    from fbanet.model.bundled import default_model_path

    return model or default_model_path()


def _refuse_overwrites(args: argparse.Namespace, jobs: list[Any]) -> None:
    """Refuse any output of ``segment`` that is one of its inputs, before anything runs."""
    from fbanet.infer.files import sibling_outputs
    from fbanet.io.atomic import refuse_overwriting_inputs

    written: list[Path | None] = []
    for job in jobs:
        written += [job.output, job.preview]
        written += sibling_outputs(job.output, args.probability, args.uncertainty)
    refuse_overwriting_inputs(written, {"image": args.images, "model": [_model_path(args.model)]})


def _worker_devices(args: argparse.Namespace, config: Any) -> list[str]:
    from fbanet.config import DeviceKind
    from fbanet.infer.cohort import parse_devices

    if args.devices is not None:
        if config.device in (DeviceKind.CPU, DeviceKind.MPS):
            raise ValueError(f"--devices lists GPUs, but --device is {config.device.value!r}")
        return parse_devices(args.devices)
    if config.device in (DeviceKind.CPU, DeviceKind.MPS):
        return [config.device.value]
    return parse_devices(None, fallback=config.device.value)


def _device_segmenter(args: argparse.Namespace, config: Any, device: str) -> Any:
    import dataclasses

    if device.startswith("cuda"):  # the worker's GPU is current: "cuda" means it
        config = dataclasses.replace(config, device="cuda")
    return load_segmenter(args.model, config)


class _CaseRunner:
    """Segments one scan for a worker and reports it (bar or JSON lines, and the log)."""

    def __init__(self, args: argparse.Namespace, roi: Any, show_bar: bool) -> None:
        self.args, self.roi, self.show_bar = args, roi, show_bar
        self.lock = threading.Lock()
        self.cancel = threading.Event()  # set on Ctrl-C: stop at the next window

    def _emit(self, event: dict[str, Any]) -> None:
        with self.lock:
            print(json.dumps(event), flush=True)

    def segment(self, segmenter: Any, job: Any, device: str) -> Any:
        from tqdm import tqdm

        from fbanet.infer.cohort import check_cancelled
        from fbanet.infer.files import segment_file

        bars: list[Any] = []  # the bar appears with the first window: none for a bad input

        def progress(done: int, total: int) -> None:
            check_cancelled(self.cancel)
            if self.show_bar:
                if not bars:
                    bars.append(tqdm(desc=job.image.name, unit="pass", file=sys.stderr))
                bars[0].total = total
                bars[0].update(done - bars[0].n)
            elif self.args.json:
                self._emit(make_event(Event.PROGRESS, image=str(job.image), done=done,
                                      total=total, device=device))  # fmt: skip

        try:
            return segment_file(
                segmenter, job.image, job.output, roi=self.roi,
                probability=self.args.probability, uncertainty=self.args.uncertainty,
                preview=job.preview, h5_spacing=self.args.h5_spacing, progress=progress,
            )  # fmt: skip
        finally:
            for bar in bars:
                bar.close()

    def report(self, outcome: Any) -> None:
        image = outcome.job.image
        written = outcome.outputs
        if written is not None:
            logger.info("%s -> %s (%.1f s)", image, written.segmentation, written.seconds)
        if not self.args.json:
            return
        if written is None:
            self._emit(make_event(Event.FAILED, image=str(image), error=outcome.error,
                                  device=outcome.device))  # fmt: skip
            return
        files = {
            field: str(value) if (value := getattr(written, field)) is not None else None
            for field in ("segmentation", "probability", "uncertainty", "preview")
        }
        self._emit(make_event(Event.DONE, image=str(image), seconds=round(written.seconds, 2),
                              device=outcome.device, **files))  # fmt: skip


def _evaluation_cases(args: argparse.Namespace) -> list[Any]:
    from fbanet.data.manifest import read_scoring_manifest, spec_from_h5_list
    from fbanet.infer.files import read_labeled
    from fbanet.io.atomic import refuse_overwriting_inputs

    if args.manifest is not None:
        refs = read_scoring_manifest(args.manifest)
    elif args.h5_dir is not None and args.h5_list is not None:
        names = [n for n in args.h5_list.read_text().split() if n]
        refs = spec_from_h5_list(args.h5_dir, args.h5_list, len(names), 0).labeled
    else:
        raise ValueError("give --manifest, --h5-dir with --h5-list, or --pred with --ref")
    refuse_overwriting_inputs(
        [args.csv], {"image": [r.image for r in refs], "label": [r.label for r in refs]}
    )
    return [read_labeled(r.image, r.label, args.h5_spacing, r.name) for r in refs]


def _score_saved(args: argparse.Namespace) -> Any:
    from fbanet.infer.report import MetricsTable
    from fbanet.io.segmentation import read_segmentation
    from fbanet.io.volumes import grid_difference, is_hdf5, read_volume
    from fbanet.metrics import compute_metrics

    prediction, _ = read_segmentation(args.pred)
    if is_hdf5(args.ref):
        reference = read_volume(args.ref, dataset="label", h5_spacing=args.h5_spacing)
    else:
        reference = read_segmentation(args.ref)[0]
    difference = grid_difference(
        prediction.array.shape, prediction.geometry, reference.array.shape, reference.geometry
    )
    if difference:
        raise ValueError(
            f"prediction {str(args.pred)!r} and reference {str(args.ref)!r} lie on different "
            f"voxel grids (prediction vs reference: {difference}); scores would compare "
            "unrelated voxels: resample one onto the other first"
        )
    table = MetricsTable()
    spacing = prediction.geometry.spacing
    table.add(args.pred.name, compute_metrics(prediction.array == 1, reference.array == 1, spacing))
    return table


def evaluate_command(args: argparse.Namespace) -> int:
    """Print (and save) Dice, Jaccard, 95HD and ASD per case with mean and std."""
    from fbanet.infer.evaluation import evaluate
    from fbanet.io.atomic import check_output_folder, refuse_overwriting_inputs

    if (args.pred is None) != (args.ref is None):
        raise ValueError("--pred and --ref go together")
    if args.csv is not None:
        check_output_folder(args.csv)
        refuse_overwriting_inputs(
            [args.csv],
            {
                "manifest": [args.manifest], "case list": [args.h5_list],
                "prediction": [args.pred], "reference": [args.ref],
                "model": [_model_path(args.model)],
            },
        )  # fmt: skip
    if args.pred is not None:
        table = _score_saved(args)
    else:
        cases = _evaluation_cases(args)  # read and checked before the model loads
        table = evaluate(_segmenter(args), cases)
    print(table.format())
    if args.csv is not None:
        table.to_csv(args.csv)
    return 0
