"""The FBANetTraining panel's .ui file fits its Python code (parsed: no Qt, no Slicer)."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "FBANetTraining"
SCRIPT = MODULE / "FBANetTraining.py"
UI_FILE = MODULE / "Resources" / "UI" / "FBANetTraining.ui"

# Every widget the module uses through self.ui, with its class.
USED_WIDGETS = {
    "labeledVolumeSelector": "qMRMLNodeComboBox",
    "labeledSegmentSelector": "qMRMLSegmentSelectorWidget",
    "labeledTable": "QTableWidget",
    "unlabeledList": "QListWidget",
    "rankingList": "QListWidget",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "summaryLabel": "QLabel",
    "logTextEdit": "QPlainTextEdit",
    "jobCommandTextEdit": "QPlainTextEdit",
    "jobNoteLabel": "QLabel",
    "importSummaryLabel": "QLabel",
    "modelsFolderPathLabel": "QLabel",
    **{
        name: "QPushButton"
        for name in (
            "addLabeledButton", "removeLabeledButton", "checkLabeledButton", "takeUnusedButton",
            "startButton", "stopButton", "resumeButton", "copyLogButton", "showChartButton",
            "segmentUnlabeledButton", "rankButton", "exportJobButton", "copyCommandButton",
            "importModelButton",
        )
    },
}  # fmt: skip

# Which widget classes Slicer's parameterNodeWrapper GUI connectors bind to each type.
CONNECTABLE = {
    "int": {"QSpinBox", "QSlider", "QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox",
            "ctkDoubleSlider", "qMRMLSliderWidget", "qMRMLSpinBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox", "ctkDoubleSlider",
              "qMRMLSliderWidget", "qMRMLSpinBox"},
    "choice": {"QComboBox", "ctkComboBox"},
    "str": {"QLineEdit", "QLabel", "QTextEdit"},
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
    "node": {"qMRMLNodeComboBox"},
}  # fmt: skip


def _uiWidgets() -> dict[str, ET.Element]:
    widgets = {}
    for element in ET.parse(UI_FILE).getroot().iter("widget"):
        name = element.get("name")
        assert name not in widgets, f"widget name {name!r} used twice in the .ui file"
        widgets[name] = element
    return widgets


def _parameterName(element: ET.Element) -> str | None:
    for prop in element.findall("property"):
        if prop.get("name") == "SlicerParameterName":
            return prop.findtext("string")
    return None


def _moduleTree() -> ast.Module:
    return ast.parse(SCRIPT.read_text(encoding="utf-8"))


def _parameterFields() -> dict[str, str]:
    """Field name -> kind ('int', 'choice', 'node', ...) of the @parameterNodeWrapper class."""
    for node in ast.walk(_moduleTree()):
        if isinstance(node, ast.ClassDef) and any(
            ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            fields = {}
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                    fields[statement.target.id] = _kind(ast.unparse(statement.annotation))
            return fields
    raise AssertionError("no @parameterNodeWrapper class in FBANetTraining.py")


def _kind(annotation: str) -> str:
    if "Choice(" in annotation or annotation.endswith("Choice"):  # a Choice, or an enum
        return "choice"
    if "vtkMRML" in annotation:
        return "node"
    if "Path" in annotation:
        return "path"
    base = re.sub(r"^Annotated\[(\w+),.*\]$", r"\1", annotation)
    assert base in CONNECTABLE, f"unexpected parameter type {annotation!r}"
    return base


def _attributesOf(owner: str) -> set[str]:
    """Names X in `<owner>.X`, where owner is e.g. 'self.ui' or 'parameters'."""
    names = set()
    for node in ast.walk(_moduleTree()):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == owner:
            names.add(node.attr)
    return names


def _buttonHandlers() -> dict[str, str]:
    """The module's BUTTON_HANDLERS: button name -> the widget method its click calls."""
    for node in _moduleTree().body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "BUTTON_HANDLERS":
            return ast.literal_eval(node.value)
    raise AssertionError("no BUTTON_HANDLERS in FBANetTraining.py")


def test_every_button_calls_a_method_of_the_widget() -> None:
    widget = next(n for n in ast.walk(_moduleTree())
                  if isinstance(n, ast.ClassDef) and n.name == "FBANetTrainingWidget")  # fmt: skip
    methods = {n.name: n for n in widget.body if isinstance(n, ast.FunctionDef)}
    for button, handler in _buttonHandlers().items():
        assert handler in methods, f"{button} calls a missing {handler}"
        assert len(methods[handler].args.args) == 1, f"{handler} takes only self"


def test_every_widget_the_module_uses_exists_with_its_class() -> None:
    used = _attributesOf("self.ui") | set(_buttonHandlers())
    assert used == set(USED_WIDGETS), f"update USED_WIDGETS: {sorted(used ^ set(USED_WIDGETS))}"
    widgets = _uiWidgets()
    for name, cls in USED_WIDGETS.items():
        assert name in widgets, f"the .ui file has no widget {name!r}"
        assert widgets[name].get("class") == cls, (
            f"{name} is a {widgets[name].get('class')}, not {cls}"
        )


def test_every_parameter_name_matches_a_field_and_a_connectable_widget() -> None:
    fields = _parameterFields()
    bound = {_parameterName(e): e for e in _uiWidgets().values() if _parameterName(e)}
    assert set(bound) == set(fields), (
        f"unbound or unknown parameters: {sorted(set(bound) ^ set(fields))}"
    )
    for name, element in bound.items():
        cls = element.get("class")
        assert cls in CONNECTABLE[fields[name]], f"{name} ({fields[name]}) cannot bind to a {cls}"


def test_the_logic_reads_only_existing_parameters() -> None:
    fields = set(_parameterFields())
    read = _attributesOf("self._parameterNode") - {"connectGui", "disconnectGui"}
    # settings.applyParameters copies the node into TrainingSettings (as `p`).
    tree = ast.parse((MODULE / "FBANetTrainingLib" / "settings.py").read_text(encoding="utf-8"))
    copy = next(n for n in ast.walk(tree) if getattr(n, "name", "") == "applyParameters")
    copied = {n.attr for n in ast.walk(copy) if isinstance(n, ast.Attribute)
              and ast.unparse(n.value) == "p"}  # fmt: skip
    assert read <= fields, f"unknown parameters: {sorted(read - fields)}"
    assert copied <= fields, f"unknown parameters: {sorted(copied - fields)}"
    unused = fields - copied - read - {"labeledVolume"}  # (only shown: picks the next row)
    assert not unused, f"parameters that never reach the logic: {sorted(unused)}"


def test_custom_widgets_are_declared_and_mrml_widgets_get_the_scene() -> None:
    root = ET.parse(UI_FILE).getroot()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {e.get("class") for e in root.iter("widget")}
    custom = {c for c in used if c.startswith(("qMRML", "ctk"))}
    assert custom <= declared, f"undeclared custom widgets: {sorted(custom - declared)}"
    receivers = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if "setMRMLScene" in c.findtext("slot")
    }
    mrml = {e.get("name") for e in root.iter("widget") if e.get("class", "").startswith("qMRML")}
    assert mrml - {root.find("widget").get("name")} <= receivers


def test_cmake_lists_every_script_and_resource() -> None:
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = sorted(p.name for p in (MODULE / "FBANetTrainingLib").glob("*.py"))
    for name in scripts:
        assert f"${{MODULE_NAME}}Lib/{name}" in text, f"CMakeLists.txt misses {name}"
    assert "Resources/Icons/${MODULE_NAME}.png" in text and "Resources/UI/${MODULE_NAME}.ui" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    icon = (MODULE / "Resources" / "Icons" / "FBANetTraining.png").read_bytes()
    assert icon.startswith(b"\x89PNG")
