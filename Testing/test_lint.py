"""The code base passes ruff (lint and format), as part of the test command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGETS = [p for p in ("src", "Testing", "benchmarks", "scripts") if (ROOT / p).exists()] + sorted(
    p.name for p in ROOT.glob("FBANet*") if p.is_dir()
)


def _ruff() -> list[str]:
    if shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists():
        pytest.fail("ruff is not installed: run scripts/setup.sh (it installs the dev extras)")
    exe = Path(sys.executable).parent / "ruff"
    return [str(exe) if exe.exists() else "ruff"]


def test_ruff_check() -> None:
    result = subprocess.run(
        [*_ruff(), "check", *TARGETS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = subprocess.run(
        [*_ruff(), "format", "--check", *TARGETS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    assert result.returncode == 0, result.stdout + result.stderr
