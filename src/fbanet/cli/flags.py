"""Flag values with a fixed set of choices, checked so that an error names the flag."""

from __future__ import annotations

import argparse
from enum import Enum

from fbanet.config import (
    ContrastiveKind,
    ContrastModule,
    DeviceKind,
    LRSchedule,
    Precision,
    SyncBatchNorm,
    TrainingMode,
    parse_enum,
)
from fbanet.infer.config import Mirroring, Protocol, Window

# argparse destination -> the enum its values come from (in any command that has the flag).
ENUM_FLAGS: dict[str, type[Enum]] = {
    "mode": TrainingMode,
    "contrastive": ContrastiveKind,
    "contrast": ContrastModule,
    "lr_schedule": LRSchedule,
    "sync_batchnorm": SyncBatchNorm,
    "device": DeviceKind,
    "precision": Precision,
    "protocol": Protocol,
    "window": Window,
    "flips": Mirroring,
}


def check_enum_flags(args: argparse.Namespace) -> None:
    """Refuse a value outside its flag's choices, naming the flag (not an internal class).

    Raises:
        ValueError: e.g. "--mode 'supervized' is not valid; valid values: 'semi-supervised',
            'supervised'".
    """
    for dest, enum_type in ENUM_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        try:
            parse_enum(enum_type, value)
        except ValueError:
            valid = ", ".join(repr(member.value) for member in enum_type)
            flag = "--" + dest.replace("_", "-")
            raise ValueError(f"{flag} {value!r} is not valid; valid values: {valid}") from None
