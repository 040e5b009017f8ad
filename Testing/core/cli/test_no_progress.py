"""``--no-progress`` is accepted by every long command, so one script can pass it to all."""

from __future__ import annotations

import pytest

from fbanet.cli.main import build_parser


@pytest.mark.parametrize("command", ["train", "segment", "evaluate", "rank", "demo"])
def test_every_long_command_accepts_no_progress(command: str) -> None:
    required = {
        "train": ["-o", "run"], "segment": ["a.nrrd", "-o", "b.seg.nrrd"], "evaluate": [],
        "rank": ["a.nrrd"], "demo": [],
    }[command]  # fmt: skip
    args = build_parser().parse_args([command, *required, "--no-progress"])
    assert args.no_progress is True
