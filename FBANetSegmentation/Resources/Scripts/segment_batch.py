"""Segment one volume or a folder of volumes with FBANet Segmentation's logic, without a GUI.

    Slicer --no-main-window --python-script segment_batch.py -- \\
        --input PATH --output PATH [--model MODEL.safetensors] [--device auto|cuda|cpu]

``--input`` is an image file (NRRD, NIfTI, MHA...) or a folder of them; ``--output`` is a
``.seg.nrrd`` file for one input, or a folder (created) that receives ``<name>.seg.nrrd``
for each. Without ``--model`` the bundled model is used. Slicer exits with 0 when every
volume was segmented, 1 otherwise (the errors are printed). The same ``main`` runs in any
Python that has the ``slicer`` MRML classes (it loads and saves through storage nodes).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2]
IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
SEG_SUFFIX = ".seg.nrrd"


def _inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a file nor a folder")
    found = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and SEG_SUFFIX not in p.name
    )
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return found


def _outputs(inputs: list[Path], output: Path) -> list[Path]:
    if output.name.endswith(SEG_SUFFIX):
        if len(inputs) != 1:
            raise ValueError(f"{len(inputs)} inputs need an output folder, not {output}")
        return [output]
    return [output / f"{p.name.split('.')[0]}{SEG_SUFFIX}" for p in inputs]


def parseArguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="segment_batch.py", description=__doc__.split("\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="image file or folder")
    parser.add_argument("--output", type=Path, required=True, help=".seg.nrrd file or folder")
    parser.add_argument("--model", type=Path, help="fbanet model file (default: bundled)")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--timeout", type=float, help="seconds allowed per volume")
    return parser.parse_args([a for a in argv if a != "--"])


def _setUp() -> None:
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    from FBANetSegmentationLib.environment import ensureFbanetImportable

    ensureFbanetImportable(MODULE_DIR)
    from fbanet.cli.environment import TORCH_REQUIREMENT, missing_requirements, torch_problem

    torch = torch_problem()
    missing = ([f"torch{TORCH_REQUIREMENT} ({torch})"] if torch else []) + missing_requirements()
    if missing:
        raise RuntimeError(
            "missing Python packages: " + ", ".join(missing) + " (press Apply once in the "
            "FBANet Segmentation module, which installs them, PyTorch through PyTorch Utils)"
        )


def segmentOne(scene, image: Path, output: Path, modelPath: Path, args) -> float:
    """Segment ``image`` into ``output``; returns the seconds inference took."""
    from FBANetSegmentationLib import logic
    from FBANetSegmentationLib.job import SegmentationJob, SegmentationOptions

    volume = logic.loadVolumeFile(scene, image)
    try:
        job = SegmentationJob(volume, SegmentationOptions(modelPath, device=args.device))
        job.start()
        result = job.waitForResult(timeout=args.timeout)
        output.parent.mkdir(parents=True, exist_ok=True)
        logic.saveSegmentation(result.segmentationNode, output)
        scene.RemoveNode(result.segmentationNode)
        return result.seconds
    finally:
        scene.RemoveNode(volume)


def main(argv: list[str], scene=None) -> int:
    """Segment what ``argv`` names; returns the exit code (0: all done, 1: any failed)."""
    args = parseArguments(argv)
    try:
        _setUp()
        from FBANetSegmentationLib.models import ModelSource, resolveModelPath

        source = ModelSource.FILE if args.model else ModelSource.BUNDLED
        modelPath = resolveModelPath(source, modelFile=args.model)
        inputs = _inputs(args.input)
        outputs = _outputs(inputs, args.output)
    except (OSError, ValueError, RuntimeError, ImportError) as error:
        print(f"segment_batch: error: {error}", file=sys.stderr)
        return 1
    if scene is None:
        import slicer

        scene = slicer.mrmlScene
    failures = 0
    for image, output in zip(inputs, outputs, strict=True):
        try:
            seconds = segmentOne(scene, image, output, modelPath, args)
            print(f"{image} -> {output} ({seconds:.1f} s)", flush=True)
        except Exception as error:  # one bad volume must not stop the batch
            failures += 1
            print(f"segment_batch: error: {image}: {error}", file=sys.stderr, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    code = main(sys.argv[1:])
    try:
        import slicer

        slicer.util.exit(code)
    except (ImportError, AttributeError):  # plain Python, or no application object
        sys.exit(code)
