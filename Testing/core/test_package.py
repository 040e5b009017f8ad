"""The package as a whole: its layers, its public API, and what importing it costs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from paths import ROOT

import fbanet

PACKAGE = ROOT / "src" / "fbanet"
# Lower layers never import higher ones: io -> data/model -> infer -> train -> demo -> cli.
# Peers (same number) may import each other; the package's __init__ (the lazy public API)
# stands outside the rule.
LAYERS = {
    "config": 0, "device": 0,
    "io": 1, "metrics": 1,
    "data": 2, "model": 2,
    "infer": 3,
    "train": 4,
    "demo": 5,
    "cli": 6, "__main__": 6,
    "protocol": 0, "_version": 0,
}  # fmt: skip


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    """Every fbanet module that ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n.startswith("fbanet.") and _is_module(n))
    return found


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative).is_dir()


def _violations(files: list[Path]) -> list[str]:
    problems = []
    for path in files:
        module = _module_name(path)
        here = _layer(module)
        if here is None:
            continue
        for target in sorted(_imports(path)):
            there = _layer(target)
            if there is not None and there > here:
                problems.append(f"{module} (layer {here}) imports {target} (layer {there})")
    return problems


def test_every_module_belongs_to_a_layer() -> None:
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    assert tops - {"__init__"} == set(LAYERS)


def test_no_layer_imports_a_higher_one() -> None:
    assert _violations(sorted(PACKAGE.rglob("*.py"))) == []


def test_the_layer_rule_catches_an_upward_import(tmp_path: Path) -> None:
    # The rule is only worth something if it fails: a module of io that imports the trainer.
    bad = PACKAGE / "io" / "volumes.py"
    text = bad.read_text(encoding="utf-8") + "\nfrom fbanet.train.trainer import Trainer\n"
    copy = tmp_path / "volumes.py"
    copy.write_text(text, encoding="utf-8")
    assert _imports(copy) >= {"fbanet.train.trainer"}
    assert _layer("fbanet.io.volumes") == 1 and _layer("fbanet.train.trainer") == 4


def test_public_api_resolves() -> None:
    assert sorted(fbanet.__all__) == sorted(["__version__", *fbanet._API])
    for name in fbanet._API:
        assert getattr(fbanet, name) is not None, name
    assert fbanet.load_model.__name__ == "load_model_file"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = fbanet.nothing_here


@pytest.mark.parametrize(
    "module", ["fbanet", "fbanet.model.header", "fbanet.cli.worker", "fbanet.model.bundled"]
)
def test_light_imports_do_not_load_torch(module: str) -> None:
    # The Slicer panels import these in Slicer's own process, where PyTorch may be missing.
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_readme_python_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "the README has no Python example"
    example = blocks[0]
    assert len([ln for ln in example.splitlines() if ln.strip()]) <= 5
    import numpy as np

    from fbanet.demo.phantoms import make_phantom
    from fbanet.io.volumes import write_volume

    image, _ = make_phantom(np.random.default_rng(0), (48, 48, 32), (1.25, 1.25, 1.25))
    write_volume(image, tmp_path / "scan.nrrd")
    out = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    labelmap, segments = fbanet.read_segmentation(tmp_path / "scan.seg.nrrd")
    assert labelmap.array.shape == (48, 48, 32)
    assert [s.name for s in segments] == ["Left atrium"]


def test_the_core_never_imports_slicer() -> None:
    # The Slicer application side lives in fbanet_slicer, which ships with the extension.
    slicer_names = {"slicer", "qt", "ctk", "vtk", "PyTorchUtils", "fbanet_slicer"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in slicer_names]
    assert found == []


def test_pyproject_builds_without_deprecation_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    # The licence as a TOML table and licence classifiers made pip print ~150 lines of
    # setuptools warnings on every install.
    import warnings

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), "pyproject.toml")
        dist._finalize_license_expression()
    messages = [str(w.message).splitlines()[0] for w in caught]
    assert [m for m in messages if "icense" in m or "deprecat" in m.lower()] == []
    assert dist.metadata.license_expression == "Apache-2.0"
