"""Every Slicer API the modules call exists in Slicer's own library (the slicer-core wheel).

The names are read from the module code itself (``ast``), so a renamed or misspelled call
fails here: ``slicer.util`` functions, MRML and VTK classes (as ``slicer.vtkX``, ``vtk.vtkX``
or the class names passed as strings, e.g. to ``AddNewNodeByClass``), and every VTK-style
method (``.GetX(...)``, ``.SetX(...)``) must be an attribute of one of those classes.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    [p for d in ("FBANetSegmentation", "FBANetTraining") for p in (ROOT / d).rglob("*.py")]
    + [ROOT / "src" / "fbanet_slicer" / "host.py"]
)
CLASS_NAME = re.compile(r"^vtk[A-Z]\w+$")
VTK_METHOD = re.compile(r"^[A-Z][A-Za-z0-9]+$")


def _trees() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(encoding="utf-8")) for p in SOURCES}


def _dotted(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except Exception:  # pragma: no cover - every node here unparses
        return ""


def _imported(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def _usedNames() -> tuple[set[str], set[str], set[str]]:
    """``slicer.util`` functions, class names, and VTK-style method names the code uses."""
    utils, classes, methods = set(), set(), set()
    for tree in _trees().values():
        modules = _imported(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                owner = _dotted(node.value)
                if owner == "slicer.util":
                    utils.add(node.attr)
                elif owner in ("slicer", "vtk") and CLASS_NAME.match(node.attr):
                    classes.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if CLASS_NAME.match(node.value):
                    classes.add(node.value)
            elif isinstance(node, ast.ImportFrom) and node.module in ("slicer", "slicer.util"):
                target = classes if node.module == "slicer" else utils
                target |= {a.name for a in node.names if node.module == "slicer.util"
                           or CLASS_NAME.match(a.name)}  # fmt: skip
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                receiver = node.func.value
                isModule = (isinstance(receiver, ast.Name) and receiver.id in modules) or (
                    _dotted(receiver) == "slicer.util"
                )
                if VTK_METHOD.match(node.func.attr) and not isModule:
                    methods.add(node.func.attr)
    return utils, classes, methods


def _resolve(name: str) -> type | None:
    return getattr(slicer, name, None) or getattr(vtk, name, None)


def test_the_names_are_found_at_all() -> None:
    utils, classes, methods = _usedNames()
    assert {"tryWithErrorDisplay", "pip_install", "loadUI", "confirmOkCancelDisplay"} <= utils
    assert {"vtkMRMLSegmentationNode", "vtkMRMLScalarVolumeNode", "vtkMRMLPlotChartNode"} <= classes
    assert {"AddNewNodeByClass", "GetSegmentation", "SetNodeReferenceID"} <= methods


def test_every_slicer_util_function_exists() -> None:
    utils, _, _ = _usedNames()
    assert sorted(n for n in utils if not callable(getattr(slicer.util, n, None))) == []


def test_every_mrml_and_vtk_class_exists() -> None:
    _, classes, _ = _usedNames()
    assert sorted(n for n in classes if _resolve(n) is None) == []


def test_every_vtk_style_method_exists_on_a_class_the_modules_use() -> None:
    _, classes, methods = _usedNames()
    # The classes the code names, plus those MRML hands back (segments, oriented images,
    # subject hierarchy, storage and display nodes...): every VTK class slicer-core has.
    universe = [_resolve(n) for n in classes]
    universe += [getattr(slicer, n) for n in dir(slicer) if CLASS_NAME.match(n)]
    # ... and the plain VTK classes they return (a table's columns, point data, variants).
    plain = ("vtkMatrix4x4", "vtkImageData", "vtkTransform", "vtkTable", "vtkPointData",
             "vtkVariant", "vtkDoubleArray")  # fmt: skip
    universe += [getattr(vtk, n) for n in plain]
    known = {attr for cls in universe if cls is not None for attr in dir(cls)}
    assert sorted(m for m in methods if m not in known) == []
