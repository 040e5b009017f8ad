"""FBANetTraining's files stay small and its Lib modules form no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "FBANetTraining" / "FBANetTrainingLib"
MAX_LINES = 400


def _imports(path: Path) -> set[str]:
    """The FBANetTrainingLib modules ``path`` imports, TYPE_CHECKING blocks included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "FBANetTrainingLib":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("FBANetTrainingLib."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names
                      if a.name.startswith("FBANetTrainingLib.")}  # fmt: skip
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` (module -> imported modules), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> list[str]:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[module] = 2
        return []

    for module in sorted(graph):
        if module not in state and (found := visit(module, [module])):
            return found
    return []


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_the_training_lib_modules_import_no_cycle() -> None:
    modules = {p.stem for p in LIB.glob("*.py") if p.stem != "__init__"}
    graph = {p.stem: _imports(p) & modules for p in LIB.glob("*.py") if p.stem in modules}
    assert "logic" in graph["jobexport"]  # (the checker's view of the logic it is given)
    assert _cycle(graph) == []


def test_the_module_files_stay_under_the_size_limit() -> None:
    files = [ROOT / "FBANetTraining" / "FBANetTraining.py", *LIB.glob("*.py"),
             ROOT / "FBANetSegmentation" / "FBANetSegmentation.py"]  # fmt: skip
    long = {p.name: n for p in files if (n := len(p.read_text(encoding="utf-8").splitlines()))
            >= MAX_LINES}  # fmt: skip
    assert long == {}
