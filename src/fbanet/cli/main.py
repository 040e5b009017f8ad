"""The ``fbanet`` command line: parses input and calls the library, nothing else."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fbanet._version import __version__
from fbanet.cli.demo import add_parsers as add_demo_parsers
from fbanet.cli.flags import check_enum_flags
from fbanet.cli.inference import add_parsers as add_inference_parsers
from fbanet.cli.rank import add_parser as add_rank_parser
from fbanet.cli.train import add_train_parser
from fbanet.protocol import ExitCode, error_line

logger = logging.getLogger("fbanet")

DESCRIPTION = (
    "FBA-Net left-atrium segmentation in 3D MRI: train on a few labeled and many unlabeled "
    "scans, segment, evaluate and rank scans for annotation. New here? 'fbanet demo' trains "
    "and segments synthetic phantoms without any data; 'fbanet COMMAND --help' describes "
    "each command."
)

EPILOG = (
    "exit codes (every command): 0 done; 2 refused: nothing was done because of what was "
    "given (a flag, a path, a file's content, a run folder in use or already holding a run) "
    "and the message says what to change; 1 failed while working: the machine or the "
    "environment (a full disk, a permission, the device, a missing package) or training "
    "that diverged; 130 interrupted (Ctrl-C) or training stopped on request, with nothing "
    "partial written. Of several scans, segment exits 2 when every failed scan was refused, "
    "else 1."
)

# The exit codes are part of the worker contract (fbanet.protocol).
EXIT_OK = ExitCode.OK
EXIT_ERROR = ExitCode.ERROR
EXIT_USAGE = ExitCode.USAGE
EXIT_STOPPED = ExitCode.STOPPED

# The errors that mean "refused: change what you gave" (exit 2).
REFUSALS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, NotADirectoryError, FileExistsError, IsADirectoryError,
)  # fmt: skip


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
    from fbanet.io.atomic import refuse_overwriting_inputs
    from fbanet.model.files import export_model_file

    refuse_overwriting_inputs([args.out], {"model": [args.model]})
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
    parser = argparse.ArgumentParser(prog="fbanet", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"fbanet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_parser(commands)
    add_inference_parsers(commands)
    add_rank_parser(commands)
    add_demo_parsers(commands)
    _add_import_parser(commands)
    _add_export_parser(commands)
    return parser


def _import_checkpoint(args: argparse.Namespace) -> int:
    from fbanet.io.atomic import refuse_overwriting_inputs
    from fbanet.model.authors import import_authors_checkpoint

    refuse_overwriting_inputs([args.out], {"checkpoint": [args.checkpoint]})
    import_authors_checkpoint(
        args.checkpoint, args.out,
        patch_size=tuple(args.patch_size) if args.patch_size is not None else None,
        spacing=tuple(args.spacing) if args.spacing else None, half=args.half,
    )  # fmt: skip
    return EXIT_OK


def _log_setup(verbose: bool, environ: Mapping[str, str]) -> tuple[int, str]:
    """The log level and line prefix of this process.

    Under torchrun with several processes, each would print every line: rank 0 logs as one
    process does, the others only warnings and errors, every line tagged with its rank.
    """
    level = logging.DEBUG if verbose else logging.INFO
    if int(environ.get("WORLD_SIZE", "1") or "1") <= 1 or "RANK" not in environ:
        return level, ""
    rank = environ["RANK"]
    return (level if rank == "0" else max(level, logging.WARNING)), f"[rank {rank}] "


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fbanet`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    level, prefix = _log_setup(args.verbose, os.environ)
    logging.basicConfig(
        level=level, format=f"{prefix}%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        check_enum_flags(args)
        return int(args.handler(args))
    # The rule of EPILOG. Refused input (a value, a path, a run folder's state) is the user's
    # to fix: exit 2. A failure of the machine or the environment (disk, permissions,
    # device): exit 1. Anything else, a TypeError included, is a bug and keeps its traceback.
    except REFUSALS as error:
        return _report(args, error, EXIT_USAGE)
    except (OSError, RuntimeError) as error:
        return _report(args, error, EXIT_ERROR)
    except KeyboardInterrupt:
        # The commands stop their workers before the interrupt reaches here and write
        # their outputs atomically: nothing partial is left.
        print(f"fbanet {args.command}: interrupted (Ctrl-C); no partial output was written",
              file=sys.stderr)  # fmt: skip
        return EXIT_STOPPED


def _report(args: argparse.Namespace, error: BaseException, code: int) -> int:
    if args.verbose:
        logger.exception("failed")
    print(error_line(args.command, error), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
