"""The core and the modules' logic packages pass mypy (part of the test command)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy() -> None:
    mypy = Path(sys.executable).parent / "mypy"
    if not mypy.exists():
        pytest.fail("mypy is not installed: run scripts/setup.sh (it installs the dev extras)")
    # What is checked, and how strictly, is in pyproject.toml ([tool.mypy]).
    result = subprocess.run(
        [str(mypy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
