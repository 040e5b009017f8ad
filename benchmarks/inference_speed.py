"""How much faster is fbanet's default inference than the authors' protocol, and does it agree?

Two paths on the same model and the same volume:

  a  the reference protocol as the FBA-Net authors run it: one window per forward pass,
     the full network (all three decoders AND the contrastive modules and projection heads,
     which ``model(x)`` evaluates), fp32, contiguous layout, stride 18/18/4, plain mean of the
     softmax of decoder 1, accumulated in host memory (``paper_protocol_inference``);
  b  fbanet's default path: ``Segmenter`` with the default ``InferenceConfig`` (bfloat16
     autocast where the device supports it, channels-last, 4 windows per batch, Gaussian
     blending, overlap 0.25, decoder 1 only, largest connected component).

Reported per volume and path: median seconds per volume (model loading excluded, one warm-up
window first), speed-up against (a), peak resident memory (``ru_maxrss``) and the Dice
between the two paths' labelmaps. Each (volume, path) runs in a fresh child process of this
script (``--child``), so memory peaks do not mix; children print one JSON line that the
parent collects.

Volumes: ``la``, a real LA case from ``../shared/la`` centre-cropped/padded to 200x144x88
(synthetic when the data is absent), and ``full``, a 640x640x88 field of view (the LA case
embedded in noise). Path (a) on ``full`` takes about 40 minutes on a GPU and is skipped
unless ``--all``.

Usage:
    python benchmarks/inference_speed.py                          # la: a and b; full: b
    python benchmarks/inference_speed.py --model run/model.safetensors --all
    python benchmarks/inference_speed.py --sizes la --skip-reference
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("inference_speed")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "la"
LA_SPACING = (0.625, 0.625, 0.625)
SHAPES = {"la": (200, 144, 88), "full": (640, 640, 88)}
PATH_NAMES = {
    "a": "(a) authors' protocol: 1 window, full net + heads, fp32, stride 18/18/4",
    "b": "(b) fbanet default: bf16 autocast, channels-last, 4 windows, Gaussian, overlap 0.25",
}


def fit_to_shape(array: np.ndarray, shape: tuple[int, ...], fill: float) -> np.ndarray:
    """Centre-crop or pad (with ``fill``) each axis of ``array`` to ``shape``."""
    out = np.full(shape, fill, dtype=np.float32)
    src, dst = [], []
    for have, want in zip(array.shape, shape, strict=True):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = array[tuple(src)]
    return out


def synthetic_scan(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A z-scored noisy volume with a bright ellipsoid (a stand-in for an LA scan)."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    radii = [n * 0.25 for n in shape]
    inside = sum(((g - n / 2) / r) ** 2 for g, n, r in zip(grid, shape, radii, strict=True)) <= 1
    array = rng.normal(0.0, 0.5, size=shape).astype(np.float32) + 2.0 * inside
    return ((array - array.mean()) / array.std()).astype(np.float32)


def la_case(data: Path, case: str | None) -> tuple[np.ndarray, str] | None:
    """A real LA image (z-scored as stored), or None when the data is absent."""
    from fbanet.io.volumes import read_volume

    listing = data / "train.list"
    if not listing.is_file():
        return None
    names = [n for n in listing.read_text().split() if n]
    name = case or names[0]
    path = data / "train" / f"{name}.h5"
    if not path.is_file():
        return None
    return read_volume(path, h5_spacing=LA_SPACING).array.astype(np.float32), name


def benchmark_volume(size: str, data: Path, case: str | None) -> tuple[Any, str]:
    """The volume for ``size`` (normalized, 0.625 mm) and a description of its source."""
    from fbanet.io.volumes import Geometry, Volume

    shape = SHAPES[size]
    real = la_case(data, case)
    if size == "la":
        if real is None:
            array, source = synthetic_scan(shape), "synthetic"
        else:
            array = fit_to_shape(real[0], shape, float(real[0].min()))
            source = f"LA case {real[1]}"
    else:
        rng = np.random.default_rng(1)
        array = rng.normal(-0.3, 0.5, size=shape).astype(np.float32)
        if real is None:
            inner, source = synthetic_scan(SHAPES["la"]), "synthetic"
        else:
            inner, source = real[0], f"LA case {real[1]} in noise"
        box = tuple(
            slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(shape, inner.shape, strict=True)
        )
        array[box] = inner
    return Volume(array, Geometry(LA_SPACING)), source


def random_model_file(folder: Path) -> Path:
    """The default architecture (patch 112x112x80) with random weights, as a model file."""
    from fbanet.config import IntensityNormalization, ModelConfig
    from fbanet.model.files import ModelMetadata, save_model_file
    from fbanet.model.network import FBANet

    torch.manual_seed(0)
    config = ModelConfig()
    metadata = ModelMetadata(
        config,
        spacing=LA_SPACING,
        normalization=IntensityNormalization.AS_STORED,
        description="random weights (inference speed benchmark)",
    )
    return save_model_file(folder / "random.safetensors", FBANet(config), metadata)


def reference_predictor(model_path: Path, device: torch.device) -> tuple[Callable, Any]:
    """The authors' evaluation network: full ``FBANet`` (with contrastive heads), fp32.

    The model file's encoder and decoder weights are loaded; the heads, which model files do
    not store, keep their (seeded) random initialization: they change no output, only cost.
    """
    from safetensors.torch import load_file

    from fbanet.model.files import read_model_header
    from fbanet.model.network import FBANet

    metadata = read_model_header(model_path)
    torch.manual_seed(0)
    model = FBANet(metadata.model, with_contrast=True)
    tensors = {k: v.float() for k, v in load_file(str(model_path)).items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    needed = [k for k in missing if not k.startswith("contrast.")]
    if needed or unexpected:
        raise ValueError(f"model file does not fit: missing {needed[:5]}, unexpected {unexpected}")
    model = model.to(device).eval()

    def predict(x: torch.Tensor) -> torch.Tensor:
        out = model(x.to(device))
        return torch.softmax(out.logits[0].float(), dim=1).cpu()

    return predict, metadata


def run_reference(volume: Any, predictor: Callable, metadata: Any) -> np.ndarray:
    """Path (a) on one volume: resample to the model spacing if needed, windows, argmax."""
    from fbanet.data.preprocess import resample, resample_channels
    from fbanet.infer.sliding_window import paper_protocol_inference

    spacing = metadata.spacing
    net_input = resample(volume, spacing) if spacing is not None else volume
    tensor = torch.from_numpy(np.ascontiguousarray(net_input.array, dtype=np.float32))[None]
    with torch.inference_mode():
        probs = paper_protocol_inference(
            tensor, predictor, metadata.model.patch_size, (18, 18, 4),
            device="cpu", output_device="cpu",
        ).numpy()  # fmt: skip
    if net_input is not volume:
        probs = resample_channels(probs, net_input.geometry, volume.geometry, volume.array.shape)
    return probs.argmax(axis=0).astype(np.uint8)


def peak_rss_gb() -> float:
    """Peak resident memory of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if platform.system() == "Darwin" else 1024
    return peak * scale / 1e9


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Time one path on one volume in this process; returns the JSON record."""
    from fbanet.device import select_device
    from fbanet.infer.config import InferenceConfig
    from fbanet.infer.segmenter import Segmenter

    volume, source = benchmark_volume(args.size, args.data, args.case)
    logger.info("%s volume %s (%s), path %s", args.size, volume.array.shape, source, args.path)
    seconds: list[float] = []
    if args.path == "a":
        device = select_device(args.device)
        predictor, metadata = reference_predictor(args.model, device)
        patch = metadata.model.patch_size
        with torch.inference_mode():  # warm-up: one window
            predictor(torch.zeros(1, 1, *patch))

        def run() -> np.ndarray:
            return run_reference(volume, predictor, metadata)

        setup = f"{device.type}, float32, contiguous"
    else:
        config = InferenceConfig(device=args.device)
        if args.overlap is not None:
            config = dataclasses.replace(config, overlap=args.overlap)
        segmenter = Segmenter.from_file(args.model, config)
        patch = segmenter.patch_size
        with torch.inference_mode():
            segmenter.predictor((0,))(torch.zeros(1, 1, *patch))

        def run() -> np.ndarray:
            return segmenter.segment(volume, normalized=True).labelmap.array

        setup = segmenter.setup.describe()
    labels = None
    for i in range(args.repeats):
        started = time.perf_counter()
        labels = run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        logger.info("path %s, run %d/%d: %.1f s", args.path, i + 1, args.repeats, seconds[-1])
    assert labels is not None
    np.save(args.pred_out, labels.astype(np.uint8))
    record: dict[str, Any] = {
        "size": args.size,
        "path": args.path,
        "shape": list(volume.array.shape),
        "source": source,
        "setup": setup,
        "seconds": seconds,
        "median": statistics.median(seconds),
        "peak_rss_gb": peak_rss_gb(),
        "foreground_voxels": int((labels == 1).sum()),
    }
    if torch.cuda.is_available():
        record["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return record


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of the foreground (label 1) of two labelmaps; 1.0 when both are empty."""
    a, b = a == 1, b == 1
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def run_child(args: argparse.Namespace, size: str, path: str, pred: Path) -> dict[str, Any]:
    """Run one (volume, path) in a fresh process and return its JSON record."""
    repeats = args.repeats or (1 if path == "a" else 3)
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", "--size", size,
        "--path", path, "--model", str(args.model), "--repeats", str(repeats),
        "--pred-out", str(pred), "--data", str(args.data), "--device", args.device,
    ]  # fmt: skip
    if args.case:
        command += ["--case", args.case]
    if args.overlap is not None:
        command += ["--overlap", str(args.overlap)]
    logger.info("running %s on %s", PATH_NAMES[path], size)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child for {size}/{path} failed with exit code {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(records: list[dict[str, Any]], agreement: dict[str, float]) -> str:
    """The markdown table of the results."""
    gpu = any("peak_gpu_gb" in r for r in records)
    header = ["volume", "path", "median s", "speed-up vs (a)", "peak RSS GB", "Dice(a,b)"]
    if gpu:
        header.insert(5, "peak GPU GB")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    reference = {r["size"]: r["median"] for r in records if r["path"] == "a"}
    for r in records:
        shape = "x".join(str(n) for n in r["shape"])
        speedup = reference.get(r["size"])
        cells = [
            f"{r['size']} {shape} ({r['source']})",
            PATH_NAMES[r["path"]],
            f"{r['median']:.2f}",
            f"{speedup / r['median']:.1f}x" if speedup else "n/a",
            f"{r['peak_rss_gb']:.2f}",
            f"{agreement[r['size']]:.4f}" if r["size"] in agreement else "n/a",
        ]
        if gpu:
            cells.insert(5, f"{r.get('peak_gpu_gb', float('nan')):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, help="model file (default: random weights, 112x112x80)")
    p.add_argument("--sizes", nargs="+", choices=sorted(SHAPES), default=["la", "full"])
    p.add_argument("--repeats", type=int, help="runs per path, median reported (a: 1, b: 3)")
    p.add_argument("--all", action="store_true", help="also run (a) on the full field of view")
    p.add_argument("--skip-reference", action="store_true", help="run path (b) only")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LA data folder")
    p.add_argument("--case", help="LA case name (default: the first of train.list)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--overlap", type=float, help="window overlap of path (b) (default: fbanet's)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", choices=sorted(SHAPES), help=argparse.SUPPRESS)
    p.add_argument("--path", choices=sorted(PATH_NAMES), help=argparse.SUPPRESS)
    p.add_argument("--pred-out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="fbanet-speed-") as tmp:
        folder = Path(tmp)
        trained = args.model is not None
        if not trained:
            args.model = random_model_file(folder)
        logger.info(
            "torch %s, %d threads, CUDA %s, model %s",
            torch.__version__,
            torch.get_num_threads(),
            torch.cuda.is_available(),
            args.model,
        )
        records, agreement = [], {}
        for size in args.sizes:
            paths = ["b"]
            if not args.skip_reference and (size != "full" or args.all):
                paths.insert(0, "a")
            preds = {p: folder / f"{size}-{p}.npy" for p in paths}
            for path in paths:
                record = run_child(args, size, path, preds[path])
                logger.info(
                    "%s/%s: median %.2f s, %d foreground voxels",
                    size, path, record["median"], record["foreground_voxels"],
                )  # fmt: skip
                records.append(record)
            if len(paths) == 2:
                agreement[size] = dice(np.load(preds["a"]), np.load(preds["b"]))
    print(table(records, agreement))
    print()
    setups = {r["path"]: r["setup"] for r in records}
    print("compute: " + "; ".join(f"({p}) {s}" for p, s in sorted(setups.items())))
    if trained:
        print(f"model: {args.model}; if it is trained, Dice(a,b) measures how far the paths agree.")
    else:
        print(
            "model: random weights. Dice(a,b) only checks that the two paths compute the same "
            "thing on an untrained network (near-0.5 probabilities flip easily); pass --model "
            "with a trained model for a meaningful agreement."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
