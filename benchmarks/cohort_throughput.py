"""Cohort inference throughput: LA volumes per minute, as ``fbanet segment`` runs them.

Segments the first ``--cases`` LA cases of ``../shared/la`` (HDF5, 0.625 mm) from disk to
``.seg.nrrd`` files, reading, preprocessing, sliding window, post-processing and writing
included, two ways in the same process:

- ``reference``: one segmenter, one case after the other (a plain loop over
  ``fbanet.infer.files.segment_file``);
- ``workers``: :func:`fbanet.infer.cohort.segment_cohort` with one worker per device (every
  CUDA GPU, or one CPU worker), what ``fbanet segment`` does with many inputs.

Reports the median over ``--repeats`` runs of volumes per minute and the ratio
workers / reference (about 1.0 with one device: the workers add nothing but the queue; with N
GPUs up to N). Model loading is timed once per worker and reported apart. Models: the bundled
default model (64x64x48 patch at 1.25 mm) and ``--paper`` the paper-sized network
(112x112x80 at 0.625 mm, random weights: the timing is representative, not the output).

Usage:
    python benchmarks/cohort_throughput.py                    # 4 cases, bundled model, 3 runs
    python benchmarks/cohort_throughput.py --cases 8 --paper --repeats 1
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fbanet.infer.cohort import CaseJob, parse_devices, segment_cohort, use_device
from fbanet.infer.config import InferenceConfig
from fbanet.infer.files import segment_file
from fbanet.infer.segmenter import Segmenter
from fbanet.model.bundled import default_model_path

logger = logging.getLogger("cohort_throughput")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "la"
LA_SPACING = (0.625, 0.625, 0.625)


def la_jobs(data: Path, count: int, out: Path) -> list[CaseJob]:
    """The first ``count`` cases of ``data/train.list``, segmented into ``out``."""
    names = (data / "train.list").read_text(encoding="utf-8").split()[:count]
    if len(names) < count:
        raise ValueError(f"{data / 'train.list'} lists fewer than {count} cases")
    return [
        CaseJob(i, data / "train" / f"{name}.h5", out / f"{name}.seg.nrrd")
        for i, name in enumerate(names)
    ]


def segment_job(segmenter: Segmenter, job: CaseJob, device: str) -> Any:
    """One case from disk to disk, as ``fbanet segment`` does it."""
    return segment_file(segmenter, job.image, job.output, h5_spacing=LA_SPACING)


def load_for(model: Path, device: str) -> Segmenter:
    """A segmenter on ``device`` (a worker's device is current: ``cuda`` means it)."""
    kind = "cuda" if device.startswith("cuda") else device
    return Segmenter.from_file(model, InferenceConfig(device=kind))


def run_reference(model: Path, jobs: list[CaseJob], device: str) -> float:
    """Seconds for the plain loop (model loaded before the clock starts)."""
    use_device(device)
    segmenter = load_for(model, device)
    started = time.perf_counter()
    for job in jobs:
        segment_job(segmenter, job, device)
    return time.perf_counter() - started


def run_workers(model: Path, jobs: list[CaseJob], devices: list[str]) -> tuple[float, float]:
    """Seconds for the cohort workers, and the longest model load among them."""
    loads: list[float] = []

    def load(device: str) -> Segmenter:
        started = time.perf_counter()
        segmenter = load_for(model, device)
        loads.append(time.perf_counter() - started)
        return segmenter

    started = time.perf_counter()
    outcomes = segment_cohort(jobs, devices, load, segment_job)
    seconds = time.perf_counter() - started
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} case(s) failed: {failed[0].error}")
    return seconds, max(loads)


def paper_model(folder: Path) -> Path:
    """The paper-sized network with random weights, as a model file."""
    from fbanet.config import IntensityNormalization, ModelConfig
    from fbanet.model.files import ModelMetadata, save_model_file
    from fbanet.model.network import FBANet

    torch.manual_seed(0)
    metadata = ModelMetadata(
        ModelConfig(), spacing=LA_SPACING, normalization=IntensityNormalization.AS_STORED,
        description="random weights (throughput benchmark)",
    )  # fmt: skip
    return save_model_file(folder / "paper.safetensors", FBANet(ModelConfig()), metadata)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LA data folder")
    p.add_argument("--cases", type=int, default=4, help="LA cases per run")
    p.add_argument("--repeats", type=int, default=3, help="runs of each way (median)")
    p.add_argument("--paper", action="store_true", help="also the paper-sized network")
    p.add_argument("--devices", help="as fbanet segment --devices (default: all GPUs, or cpu)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    devices = parse_devices(args.devices)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        models = {"bundled default (64x64x48, 1.25 mm)": default_model_path()}
        if args.paper:
            models["paper-sized (112x112x80, 0.625 mm)"] = paper_model(folder)
        jobs = la_jobs(args.data, args.cases, folder / "out")
        print(f"devices: {', '.join(devices)}; {args.cases} LA cases; median of {args.repeats}")
        print("| model | reference vol/min | workers vol/min | ratio | model load s |")
        print("|---|---:|---:|---:|---:|")
        for name, model in models.items():
            assert model is not None, "no bundled model"
            run_reference(model, jobs[:1], devices[0])  # warm-up: first-call costs, file cache
            ref, work, load = [], [], 0.0
            for repeat in range(args.repeats):
                # Alternate which way goes first, so drifting load on the machine evens out.
                if repeat % 2:
                    seconds, load = run_workers(model, jobs, devices)
                    work.append(seconds)
                ref.append(run_reference(model, jobs, devices[0]))
                if not repeat % 2:
                    seconds, load = run_workers(model, jobs, devices)
                    work.append(seconds)
            ref_rate = 60 * args.cases / statistics.median(ref)
            work_rate = 60 * args.cases / statistics.median(work)
            print(f"| {name} | {ref_rate:.2f} | {work_rate:.2f} | {work_rate / ref_rate:.2f} "
                  f"| {load:.2f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
