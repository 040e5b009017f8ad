"""``fbanet train``: argument parsing, the run's settings and data, and the call to the trainer."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fbanet.protocol import ExitCode

logger = logging.getLogger("fbanet")

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
    "ema_decay": "ema_decay",
}
_MODEL_FLAGS = {"patch_size": "patch_size", "base_filters": "base_filters", "contrast": "contrast"}


def _add_data_options(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data (a manifest, or a folder of HDF5 cases with a list)")
    data.add_argument("--manifest", type=Path, help="JSON: labeled, unlabeled, validation")
    data.add_argument("--h5-dir", type=Path, help="folder of <case>.h5 files (image, label)")
    data.add_argument("--h5-list", type=Path, help="case names, one a line (order matters)")
    data.add_argument("--labeled", type=int, help="first N cases of --h5-list are labeled")
    data.add_argument("--validation", type=int, help="last N cases are validation (0)")
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
        help="zscore (every format, over the region given; default) or as-stored (the LA HDF5 "
        "layout as stored, only to reproduce the paper); auto is read as zscore",
    )
    data.add_argument(
        "--allow-partial-labels",
        action="store_true",
        default=None,
        help="accept labels that cover only part of their image (the rest is background)",
    )


def add_train_parser(commands: Any) -> None:
    """Register ``train``."""
    p = commands.add_parser(
        "train",
        help="train FBA-Net on labeled and unlabeled volumes",
        description="Semi-supervised FBA-Net training. Defaults are the authors' LA "
        "configuration (patch 112x112x80, batch 2+2, SGD 0.01, 15,000 iterations).",
    )
    _add_data_options(p)
    p.add_argument("-o", "--out", type=Path, required=True, help="run folder")
    p.add_argument("--config", type=Path, help='JSON with {"model": {...}, "train": {...}}')
    p.add_argument(
        "--preset",
        help="finetune (the bundled model, or --init-model, fine-tuned on your scans within "
        "a short CPU budget: use with --time-budget), la-paper (the paper's LA configuration, "
        "for a GPU) or la-cpu",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out, on the data it records (no data flags needed)",
    )
    p.add_argument(
        "--init-model",
        type=_init_model,
        help="start from this fbanet model file, or 'bundled' for the bundled left-atrium model",
    )
    p.add_argument("--iterations", type=int)
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--base-filters", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--labeled-batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cuda, mps or cpu")
    p.add_argument(
        "--precision",
        help="auto (bfloat16 where supported), bf16 or fp32",
    )
    p.add_argument("--fp32", action="store_true", help="same as --precision fp32")
    p.add_argument("--no-channels-last", action="store_true", help="contiguous memory layout")
    p.add_argument(
        "--mode",
        help="semi-supervised (FBA-Net, default) or supervised (Dice only)",
    )
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
    p.add_argument(
        "--lr-schedule",
        help="constant (the authors', default), poly or cosine",
    )
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
    p.add_argument(
        "--ema-decay",
        type=float,
        help="validate and export a moving average of the weights with this decay, about "
        "1/(1-decay) recent steps (0: the last step's weights, default)",
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
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="train for this long, then stop with the best validated model kept (exit 0); "
        "validates at least every fifth of it; one process only",
    )
    p.add_argument("--json", action="store_true", help="JSON progress lines on stdout, no bar")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_train)


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
    from fbanet.train.presets import preset_settings, with_mode_settings
    from fbanet.train.runs import read_config_file

    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    given: set[str] = set()  # training settings the user set (config file, flags)
    run_config = args.out / "config.json"
    resumed = args.resume and run_config.exists()
    if resumed:
        model, train = read_config_file(run_config)
    else:
        if args.preset is not None:
            model, train = preset_settings(args.preset)
        if args.config is not None:
            file_model, file_train = read_config_file(args.config)
            model.update(file_model)
            train.update(file_train)
            given.update(file_train)
    for flag, field in _TRAIN_FLAGS.items():
        if getattr(args, flag) is not None:
            train[field] = getattr(args, flag)
            given.add(field)
    if args.preset is not None and not resumed:
        train = with_mode_settings(args.preset, train, given)
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


def _inherit(args: argparse.Namespace, model_settings: dict[str, Any]) -> dict[str, Any]:
    """A fine-tune keeps its starting model's spacing, patch and architecture unless set."""
    from fbanet.model.header import read_model_header
    from fbanet.train.presets import inherit_from_model

    metadata = read_model_header(args.init_model)
    model_settings, args.spacing, notes = inherit_from_model(model_settings, args.spacing, metadata)
    if notes:
        logger.warning(
            "this run differs from the model it starts from (%s) in: %s; leave those settings "
            "out to keep the model's", args.init_model, "; ".join(notes),
        )  # fmt: skip
    logger.info(
        "fine-tuning %s at %s mm, patch %s", args.init_model,
        "the data's spacing" if args.spacing is None else list(args.spacing),
        list(model_settings["patch_size"]),
    )  # fmt: skip
    return model_settings


def _init_model(value: str) -> Path:
    """``--init-model``: a model file, or ``bundled`` for the model that ships with fbanet."""
    if value != "bundled":
        return Path(value)
    from fbanet.model.bundled import default_model_path

    path = default_model_path()
    if path is None:
        raise argparse.ArgumentTypeError(
            "this installation ships no bundled model; give the path of a model file"
        )
    return path


# The files a training run writes into its folder.
_RUN_FILES = (
    "config.json", "train.log", "progress.jsonl", "checkpoints/last.pt", "model.safetensors",
    "best_model.safetensors", "curves.png",
)  # fmt: skip


def _refuse_run_overwrites(args: argparse.Namespace) -> None:
    from fbanet.io.atomic import refuse_overwriting_inputs

    inputs = {"manifest": [args.manifest], "case list": [args.h5_list], "model": [args.init_model]}
    if not args.resume:  # a resumed run reads its own config.json
        inputs["configuration"] = [args.config]
    refuse_overwriting_inputs([args.out / name for name in _RUN_FILES], inputs)


def _folder_lock(run_dir: Path) -> contextlib.AbstractContextManager[object]:
    """The run folder's lock; under torchrun rank 0 alone holds it for the job."""
    from fbanet.train.lock import RunFolderLock

    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return RunFolderLock(run_dir)


def _train(args: argparse.Namespace) -> int:
    from fbanet.cli.rundata import data_source, resume_data_flags
    from fbanet.train.distributed import close_process_group
    from fbanet.train.parallel import join_torchrun_job, make_trainer
    from fbanet.train.presets import FINETUNE, build_configs
    from fbanet.train.runlog import RunLog
    from fbanet.train.runs import load_training_data

    resume_data_flags(args)  # on --resume, the run folder's own data
    if args.preset == FINETUNE and args.init_model is None and not args.resume:
        args.init_model = _init_model("bundled")
    _refuse_run_overwrites(args)
    stop = _stop_request(args)
    # One training per run folder; the folder and its train.log stay only once the run starts.
    with _folder_lock(args.out), RunLog(args.out) as run_log:
        model_settings, train_settings = _settings(args)
        if args.init_model is not None and not args.resume:
            model_settings = _inherit(args, model_settings)
        model_config, train_config = build_configs(model_settings, train_settings)
        data = load_training_data(
            _data_spec(args),
            normalization=args.normalization,
            num_classes=model_config.num_classes,
            h5_spacing=args.h5_spacing,
            spacing=args.spacing,
            allow_partial_labels=args.allow_partial_labels,
        )
        data = dataclasses.replace(data, source=data_source(args))  # for --resume
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
            show_progress=not (args.json or args.no_progress),
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
        return ExitCode.STOPPED
    if result.budget_spent:
        logger.info(
            "the %g s time budget ended the run at iteration %d; best model: %s",
            args.time_budget, result.iterations, result.best_model_path or result.model_path,
        )  # fmt: skip
    return ExitCode.OK


def _stop_request(args: argparse.Namespace) -> Any:
    """The run's stop request: a stop file and signals, and the time budget if one is set."""
    from fbanet.train.distributed import torchrun_environment
    from fbanet.train.progress import StopRequest, TimeBudget

    if args.time_budget is None:
        return StopRequest(args.stop_file)
    if torchrun_environment() is not None:
        raise ValueError(
            "--time-budget works in one process: under torchrun the processes would disagree "
            "about when to validate; use --stop-file or --iterations instead"
        )
    return TimeBudget(args.time_budget, args.stop_file)
