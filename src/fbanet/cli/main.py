"""The ``fbanet`` command line: parses input and calls the library, nothing else."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fbanet import __version__
from fbanet.cli.demo import add_parsers as add_demo_parsers
from fbanet.cli.inference import add_parsers as add_inference_parsers
from fbanet.cli.rank import add_parser as add_rank_parser
from fbanet.protocol import ExitCode, error_line

logger = logging.getLogger("fbanet")

DESCRIPTION = (
    "FBA-Net left-atrium segmentation in 3D MRI: train on a few labeled and many unlabeled "
    "scans, segment, evaluate and rank scans for annotation. New here? 'fbanet demo' trains "
    "and segments synthetic phantoms without any data; 'fbanet COMMAND --help' describes "
    "each command."
)

# The exit codes are part of the worker contract (fbanet.protocol).
EXIT_OK = ExitCode.OK
EXIT_ERROR = ExitCode.ERROR
EXIT_USAGE = ExitCode.USAGE
EXIT_STOPPED = ExitCode.STOPPED

# Flag name -> TrainConfig / ModelConfig field; None values are left to the config file.
_TRAIN_FLAGS = {
    "iterations": "iterations",
    "batch_size": "batch_size",
    "labeled_batch_size": "labeled_batch_size",
    "lr": "learning_rate",
    "weight_decay": "weight_decay",
    "seed": "seed",
    "device": "device",
    "precision": "precision",
    "contrastive": "contrastive",
    "mode": "mode",
    "rampup_interval": "rampup_interval",
    "negative_alpha": "negative_alpha",
    "checkpoint_every": "checkpoint_every",
    "validate_every": "validate_every",
    "log_every": "log_every",
    "sync_batchnorm": "sync_batchnorm",
    "lr_schedule": "lr_schedule",
    "contrastive_weight": "contrastive_weight",
    "region_margin_mm": "region_margin_mm",
    "intensity_scale": "intensity_scale",
    "intensity_shift": "intensity_shift",
    "region_crop_probability": "region_crop_probability",
}
_MODEL_FLAGS = {"patch_size": "patch_size", "base_filters": "base_filters", "contrast": "contrast"}


def _add_train_parser(commands: Any) -> None:
    p = commands.add_parser(
        "train",
        help="train FBA-Net on labeled and unlabeled volumes",
        description="Semi-supervised FBA-Net training. Defaults are the authors' LA "
        "configuration (patch 112x112x80, batch 2+2, SGD 0.01, 15,000 iterations).",
    )
    data = p.add_argument_group("data (a manifest, or a folder of HDF5 cases with a list)")
    data.add_argument("--manifest", type=Path, help="JSON: labeled, unlabeled, validation")
    data.add_argument("--h5-dir", type=Path, help="folder of <case>.h5 files (image, label)")
    data.add_argument("--h5-list", type=Path, help="case names, one a line (order matters)")
    data.add_argument("--labeled", type=int, help="first N cases of --h5-list are labeled")
    data.add_argument("--validation", type=int, default=0, help="last N cases are validation")
    data.add_argument(
        "--h5-spacing",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="voxel spacing (mm) of HDF5 files without a 'spacing' attribute (required for "
        "those; the LA data: 0.625 0.625 0.625)",
    )
    data.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="resample all volumes to this spacing (mm) for training",
    )
    data.add_argument(
        "--normalization",
        default="zscore",
        help="zscore (every format, over the region given; default) or as-stored (the LA HDF5 "
        "layout as stored, only to reproduce the paper); auto is read as zscore",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="run folder")
    p.add_argument("--config", type=Path, help='JSON with {"model": {...}, "train": {...}}')
    p.add_argument("--preset", help="la-paper (the paper's LA configuration, for a GPU) or la-cpu")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--init-model", type=Path, help="start from this fbanet model file")
    p.add_argument("--iterations", type=int)
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--base-filters", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--labeled-batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cuda, mps or cpu")
    p.add_argument("--precision", help="auto (bfloat16 where supported), bf16 or fp32")
    p.add_argument("--fp32", action="store_true", help="same as --precision fp32")
    p.add_argument("--no-channels-last", action="store_true", help="contiguous memory layout")
    p.add_argument("--mode", help="semi-supervised (FBA-Net, default) or supervised (Dice only)")
    p.add_argument(
        "--rampup-interval",
        type=int,
        help="iterations per ramp-up step of the consistency weight (150)",
    )
    p.add_argument("--contrastive", help="ranked (authors) or infonce")
    p.add_argument("--negative-alpha", type=float)
    p.add_argument(
        "--contrast",
        help="contrastive module: authors (the paper's, default) or learning (pooled features)",
    )
    p.add_argument("--contrastive-weight", type=float, help="weight of the contrastive loss (1)")
    p.add_argument("--lr-schedule", help="constant (the authors', default), poly or cosine")
    p.add_argument(
        "--region-margin-mm",
        type=float,
        help="z-score each patch over a region around the label with random margins of 0 to "
        "this many mm, as users crop (30)",
    )
    p.add_argument("--intensity-scale", type=float, help="random intensity scale +- (0.1)")
    p.add_argument("--intensity-shift", type=float, help="random intensity shift +- (0.1)")
    p.add_argument(
        "--region-crop-probability",
        type=float,
        help="how often the voxels outside that region are blanked, as a crop (0.5)",
    )
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--validate-every", type=int)
    p.add_argument("--log-every", type=int)
    p.add_argument(
        "--sync-batchnorm",
        help="under torchrun: batch norm over all processes: auto (on for 4 or fewer patches "
        "a process), on or off",
    )
    p.add_argument("--stop-file", type=Path, help="stop cleanly once this file exists")
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout, no bar")
    p.set_defaults(handler=_train)


def _add_import_parser(commands: Any) -> None:
    p = commands.add_parser(
        "import-checkpoint",
        help="convert an FBA-Net authors' checkpoint (.pth) to an fbanet model file",
    )
    p.add_argument("checkpoint", type=Path, help="state dict saved by the authors' code")
    p.add_argument("-o", "--out", type=Path, required=True, help="model file (.safetensors)")
    p.add_argument(
        "--patch-size",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="training patch size (derived from the heads when omitted)",
    )
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="voxel spacing (mm) the model was trained at",
    )
    p.add_argument("--half", action="store_true", help="store weights as float16")
    p.set_defaults(handler=_import_checkpoint)


def _add_export_parser(commands: Any) -> None:
    p = commands.add_parser(
        "export-model", help="write a smaller copy of a model file (float16, fewer decoders)"
    )
    p.add_argument("model", type=Path, help="fbanet model file")
    p.add_argument("-o", "--out", type=Path, required=True, help="exported model file")
    p.add_argument("--fp32", action="store_true", help="keep float32 weights")
    p.add_argument("--decoders", type=int, nargs="+", help="decoders to keep (0 is required)")
    p.add_argument("--description", help="new description text")
    p.set_defaults(handler=_export_model)


def _export_model(args: argparse.Namespace) -> int:
    from fbanet.model.files import export_model_file

    out = export_model_file(
        args.model,
        args.out,
        half=not args.fp32,
        decoders=tuple(args.decoders) if args.decoders else None,
        description=args.description,
    )
    logger.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="fbanet", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"fbanet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(commands)
    add_inference_parsers(commands)
    add_rank_parser(commands)
    add_demo_parsers(commands)
    _add_import_parser(commands)
    _add_export_parser(commands)
    return parser


def _data_spec(args: argparse.Namespace) -> Any:
    from fbanet.data.manifest import read_manifest, spec_from_h5_list

    if args.manifest is not None:
        if args.h5_dir or args.h5_list:
            raise ValueError("give either --manifest or --h5-dir/--h5-list, not both")
        return read_manifest(args.manifest)
    if args.h5_dir is None or args.h5_list is None or args.labeled is None:
        raise ValueError("no data: give --manifest FILE, or --h5-dir, --h5-list and --labeled")
    return spec_from_h5_list(args.h5_dir, args.h5_list, args.labeled, args.validation)


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    from fbanet.train.runs import preset_settings, read_config_file

    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    run_config = args.out / "config.json"
    if args.resume and run_config.exists():
        model, train = read_config_file(run_config)
    else:
        if args.preset is not None:
            model, train = preset_settings(args.preset)
        if args.config is not None:
            file_model, file_train = read_config_file(args.config)
            model.update(file_model)
            train.update(file_train)
    for flag, field in _TRAIN_FLAGS.items():
        if getattr(args, flag) is not None:
            train[field] = getattr(args, flag)
    for flag, field in _MODEL_FLAGS.items():
        if getattr(args, flag) is not None:
            model[field] = (
                tuple(getattr(args, flag)) if flag == "patch_size" else getattr(args, flag)
            )
    if args.fp32:
        train["precision"] = "fp32"
    if args.no_channels_last:
        train["channels_last"] = False
    return model, train


def _train(args: argparse.Namespace) -> int:
    from fbanet.train.distributed import close_process_group
    from fbanet.train.parallel import join_torchrun_job, make_trainer
    from fbanet.train.progress import StopRequest
    from fbanet.train.runlog import RunLog
    from fbanet.train.runs import build_configs, load_training_data

    model_settings, train_settings = _settings(args)
    model_config, train_config = build_configs(model_settings, train_settings)
    stop = StopRequest(args.stop_file)
    # The run folder and its train.log appear only once the run can start.
    with RunLog(args.out) as run_log:
        data = load_training_data(
            _data_spec(args),
            normalization=args.normalization,
            num_classes=model_config.num_classes,
            h5_spacing=args.h5_spacing,
            spacing=args.spacing,
        )
        env = join_torchrun_job(train_config, data)  # under torchrun: one of several processes
        trainer = make_trainer(
            model_config,
            train_config,
            data,
            args.out,
            env=env,
            resume=args.resume,
            stop=stop,
            json_stream=sys.stdout if args.json else None,
            show_progress=not args.json,
            init_model=args.init_model if not args.resume else None,
        )
        # Under torchrun only rank 0 writes the run's files, train.log included.
        if env is None or env.is_main:
            run_log.start()
        else:
            run_log.discard()
        stop.install_signal_handlers()
        try:
            result = trainer.run()
        finally:
            stop.restore_signal_handlers()
    close_process_group()  # after success only (see its docstring)
    if result.stopped:
        logger.warning("stopped at iteration %d; resume with --resume", result.iterations)
        return EXIT_STOPPED
    return EXIT_OK


def _import_checkpoint(args: argparse.Namespace) -> int:
    from fbanet.model.authors import import_authors_checkpoint

    import_authors_checkpoint(
        args.checkpoint, args.out,
        patch_size=tuple(args.patch_size) if args.patch_size is not None else None,
        spacing=tuple(args.spacing) if args.spacing else None, half=args.half,
    )  # fmt: skip
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fbanet`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args))
    # Bad input (a value, a missing file) is the user's to fix: exit 2. A failure of the
    # machine or the environment (disk, permissions, device): exit 1. Anything else, a
    # TypeError included, is a bug and keeps its traceback.
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        return _report(args, error, EXIT_USAGE)
    except (OSError, RuntimeError) as error:
        return _report(args, error, EXIT_ERROR)


def _report(args: argparse.Namespace, error: BaseException, code: int) -> int:
    if args.verbose:
        logger.exception("failed")
    print(error_line(args.command, error), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
