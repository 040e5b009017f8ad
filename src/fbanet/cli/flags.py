"""Flag values checked where they are typed, so that an error names the flag, not a class."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from enum import Enum

from fbanet.config import parse_enum


def enum_flag(enum_type: type[Enum]) -> Callable[[str], str]:
    """An argparse ``type`` accepting the values of ``enum_type`` (as ``parse_enum`` does).

    A wrong value is reported by argparse against the flag: "argument --mode: 'supervized'
    is not one of: semi-supervised, supervised" (exit 2).
    """

    def parse(value: str) -> str:
        try:
            return str(parse_enum(enum_type, value).value)
        except ValueError:
            valid = ", ".join(str(m.value) for m in enum_type)
            raise argparse.ArgumentTypeError(f"{value!r} is not one of: {valid}") from None

    parse.__name__ = enum_type.__name__
    return parse
