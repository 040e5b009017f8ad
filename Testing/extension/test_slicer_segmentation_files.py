"""FBANet Segmentation's files without Slicer: .ui against the code, CMake, packaging, lint.

Nothing here imports Qt or Slicer: the module source is parsed with ``ast``, the .ui and
CMake files as text, so these run wherever the repository is checked out.
"""

from __future__ import annotations

import ast
import enum
import json
import py_compile
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import MODULE_DIRS, ROOT
from PIL import Image

MODULE = ROOT / "FBANetSegmentation"
SOURCE = MODULE / "FBANetSegmentation.py"
UI = MODULE / "Resources" / "UI" / "FBANetSegmentation.ui"
# Widget name suffix -> the class such a widget must have in the .ui file.
SUFFIX_CLASSES = {
    "CollapsibleButton": "ctkCollapsibleButton",
    "Selector": "qMRMLNodeComboBox",
    "ComboBox": "QComboBox",
    "CheckBox": "QCheckBox",
    "PathLineEdit": "ctkPathLineEdit",
    "Button": "QPushButton",
    "Label": "QLabel",
    "progressBar": "QProgressBar",
}
SCHEMA_KEYS = {
    "$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
    "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int,
}  # fmt: skip


def _widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def _expected_class(name: str) -> str:
    for suffix, cls in SUFFIX_CLASSES.items():
        if name.endswith(suffix):
            return cls
    raise AssertionError(f"self.ui.{name}: no naming rule says which widget class it is")


def _parameter_fields() -> dict[str, str]:
    """Fields of the @parameterNodeWrapper class: name -> annotation source."""
    tree = ast.parse(SOURCE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {
                s.target.id: ast.unparse(s.annotation)
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            }
    raise AssertionError("no @parameterNodeWrapper class in the module")


def _bound_widgets() -> dict[str, ET.Element]:
    """SlicerParameterName -> widget."""
    bound = {}
    for widget in _widgets().values():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "SlicerParameterName must be a dynamic property"
                bound[prop.findtext("string")] = widget
    return bound


def test_every_widget_the_module_uses_exists_with_its_class() -> None:
    used = set()
    for node in ast.walk(ast.parse(SOURCE.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            used.add(node.attr)
    widgets = _widgets()
    assert len(used) > 10
    for name in sorted(used):
        assert name in widgets, f"self.ui.{name} is not in {UI.name}"
        assert widgets[name].get("class") == _expected_class(name), name
    assert widgets["FBANetSegmentation"].get("class") == "qMRMLWidget"


def test_parameter_names_match_the_wrapper_and_suit_their_widgets() -> None:
    sys.path.insert(0, str(MODULE))
    from FBANetSegmentationLib import models

    fields = _parameter_fields()
    bound = _bound_widgets()
    assert set(bound) <= set(fields), f"unknown parameters: {set(bound) - set(fields)}"
    unbound = set(fields) - set(bound)
    assert unbound == {"trainedModel"}, unbound  # filled by code: its choices change at run time
    for name, widget in bound.items():
        annotation, cls = fields[name], widget.get("class")
        if annotation == "bool":
            assert cls == "QCheckBox", name
        elif annotation == "Path":
            assert cls == "ctkPathLineEdit", name
        elif annotation.startswith("vtkMRML"):
            assert cls == "qMRMLNodeComboBox", name
            types = [s.text for s in widget.find("property[@name='nodeTypes']/stringlist")]
            assert types == [annotation], name
        else:
            from fbanet.cli import environment

            choice = getattr(models, annotation, None) or getattr(environment, annotation)
            assert issubclass(choice, enum.Enum), name
            assert cls == "QComboBox", name  # the wrapper fills it from the enum's labels


def test_scene_connections_reach_every_node_selector() -> None:
    root = ET.parse(UI).getroot()
    receivers = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
    }
    selectors = {n for n, w in _widgets().items() if w.get("class") == "qMRMLNodeComboBox"}
    assert receivers == selectors


def test_module_files_compile(tmp_path: Path) -> None:
    files = sorted(MODULE.rglob("*.py"))
    assert len(files) >= 8
    for index, path in enumerate(files):
        py_compile.compile(str(path), cfile=str(tmp_path / f"{index}.pyc"), doraise=True)


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, variable
    return match.group(1).split()


@pytest.mark.parametrize("module_dir", MODULE_DIRS, ids=[p.name for p in MODULE_DIRS])
def test_cmake_lists_exactly_the_module_files(module_dir: Path) -> None:
    text = (module_dir / "CMakeLists.txt").read_text()
    name = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text).group(1)  # type: ignore[union-attr]
    assert name == module_dir.name
    listed = [
        entry.replace("${MODULE_NAME}", name)
        for entry in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
        + _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    ]
    for entry in listed:
        assert (module_dir / entry).is_file(), f"{module_dir.name}/CMakeLists.txt lists {entry}"
    present = {
        p.relative_to(module_dir).as_posix()
        for p in module_dir.rglob("*")
        if p.suffix in {".py", ".ui", ".png"} and "__pycache__" not in p.parts
    }
    assert present <= set(listed), f"not in CMakeLists.txt: {sorted(present - set(listed))}"
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest", text, re.S)


def test_top_level_cmake_describes_the_extension() -> None:
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "project(FBANet)" in text
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    for line in ("find_package(Slicer REQUIRED)", "add_subdirectory(FBANetSegmentation)",
                 "add_subdirectory(FBANetTraining)", "include(${Slicer_EXTENSION_CPACK})",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})"):  # fmt: skip
        assert line in text
    # fbanet and fbanet_slicer are installed next to the scripted modules, without caches.
    install = re.search(r"install\(DIRECTORY \$\{package_dir\}(.*?)\)", text, re.S)
    assert install and "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in install.group(1)
    assert '"__pycache__" EXCLUDE' in install.group(1)
    assert "foreach(package fbanet fbanet_slicer)" in text
    assert "set(package_dir ${CMAKE_CURRENT_SOURCE_DIR}/src/${package})" in text
    for package in ("fbanet", "fbanet_slicer"):
        assert (ROOT / "src" / package / "__init__.py").is_file()


def test_extension_index_entry_follows_schema_v1_0_1() -> None:
    entry = json.loads((ROOT / "FBANet.json").read_text())
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert {"$schema", "category", "scm_url"} <= set(entry) <= set(SCHEMA_KEYS)
    for key, value in entry.items():
        assert isinstance(value, SCHEMA_KEYS[key]), key
    assert entry["category"] == "Segmentation" and entry["build_dependencies"] == ["PyTorch"]
    assert 1 <= entry["tier"] <= 5


def test_s4ext_description_matches_the_cmake_metadata() -> None:
    fields = {}
    for line in (ROOT / "FBANet.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    assert fields["scm"] == "git" and fields["depends"] == "PyTorch"
    assert fields["category"] == "Segmentation"
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert f'set(EXTENSION_ICONURL "{fields["iconurl"]}")' in cmake
    assert fields["scmurl"] == json.loads((ROOT / "FBANet.json").read_text())["scm_url"]


def test_icons_and_screenshot() -> None:
    for icon in (
        ROOT / "Resources/Icons/FBANet.png",
        MODULE / "Resources/Icons/FBANetSegmentation.png",
    ):
        with Image.open(icon) as image:
            assert image.format == "PNG" and image.size == (128, 128)
    shots = sorted((ROOT / "Resources" / "Screenshots").glob("*.png"))
    assert shots, "no screenshot in Resources/Screenshots"
    for shot in shots:
        assert shot.stat().st_size < 300_000, shot.name
        with Image.open(shot) as image:
            assert min(image.size) >= 100 and max(image.size) >= 400
    cmake = (ROOT / "CMakeLists.txt").read_text()
    urls = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]+)"\)', cmake).group(1)  # type: ignore[union-attr]
    for url in urls.split():
        assert (ROOT / url.split("/main/", 1)[1]).is_file(), url
