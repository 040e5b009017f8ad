"""A run folder remembers its data: ``--resume`` needs no data flags, and refuses other data.

The data flags of ``fbanet train`` are recorded in the run's ``config.json`` (``data.source``:
absolute paths, counts and options). ``--resume`` fills in every flag not given from there,
and refuses a flag given with another value, since the checkpoint's sampler and validation
belong to the data it was trained on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# The flags that choose and read the data, with the value meaning "not given".
DATA_FLAGS: dict[str, Any] = {
    "manifest": None,
    "h5_dir": None,
    "h5_list": None,
    "labeled": None,
    "validation": None,
    "h5_spacing": None,
    "spacing": None,
    "normalization": None,
    "allow_partial_labels": None,
}
# What a flag left out means in a new run.
DEFAULTS: dict[str, Any] = {
    "validation": 0,
    "normalization": "zscore",
    "allow_partial_labels": False,
}
_PATHS = ("manifest", "h5_dir", "h5_list")


def _recorded(flag: str, value: Any) -> Any:
    """A flag's value as config.json records it (absolute paths, lists)."""
    if value is None:
        return None
    if flag in _PATHS:
        return str(Path(value).expanduser().resolve())
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return value


def data_source(args: argparse.Namespace) -> dict[str, Any]:
    """The data flags of a run, for its config.json."""
    return {flag: _recorded(flag, getattr(args, flag)) for flag in DATA_FLAGS}


def saved_source(run_dir: Path) -> dict[str, Any] | None:
    """The data flags a run folder recorded, or None (no run, or a run from before 0.3)."""
    try:
        document = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    source = document.get("data", {}).get("source") if isinstance(document, dict) else None
    return source if isinstance(source, dict) else None


def apply_defaults(args: argparse.Namespace) -> None:
    """Give each data flag left out its meaning in a new run."""
    for flag, value in DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)


def resume_data_flags(args: argparse.Namespace) -> None:
    """On ``--resume``, take the data flags from the run folder; refuse other data.

    Raises:
        ValueError: A data flag given with another value than the run's, naming both.
    """
    saved = saved_source(args.out) if args.resume else None
    if saved is None:
        apply_defaults(args)
        return
    for flag in DATA_FLAGS:
        given = getattr(args, flag)
        if given is None:
            setattr(args, flag, saved.get(flag))
            continue
        if _recorded(flag, given) != saved.get(flag):
            name = "--" + flag.replace("_", "-")
            raise ValueError(
                f"the run in {str(args.out)!r} was trained with {name} {saved.get(flag)!r}, "
                f"this --resume gives {_recorded(flag, given)!r}: resume without data flags "
                "(the run folder knows its data), or train on other data in a new run folder"
            )
    for flag in _PATHS:
        if getattr(args, flag) is not None:
            setattr(args, flag, Path(getattr(args, flag)))
    apply_defaults(args)
