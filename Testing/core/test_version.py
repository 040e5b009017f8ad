"""The version constant lives in a leaf module that lower layers import (no cycle through
``fbanet/__init__.py``), and the build reads it from there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import fbanet
from fbanet import _version

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "fbanet"


def test_the_version_module_is_a_leaf_and_the_package_reexports_it() -> None:
    tree = ast.parse((PACKAGE / "_version.py").read_text(encoding="utf-8"))
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert fbanet.__version__ == _version.__version__


def test_no_module_of_the_package_imports_the_version_from_its_init() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "fbanet"
                and any(alias.name == "__version__" for alias in node.names)
            ):
                offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == []


def test_the_build_reads_the_version_from_the_leaf_module() -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # (tomllib: Python 3.11+)
    assert re.search(r'^dynamic = \[.*"version".*\]', text, re.MULTILINE)
    assert re.findall(r"^version = \{ attr = \"([\w.]+)\" \}", text, re.MULTILINE) == [
        "fbanet._version.__version__"
    ]
