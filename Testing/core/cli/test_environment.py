"""What a host needs for fbanet workers: packages by version, installing them, devices."""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from paths import ROOT

from fbanet.cli import environment
from fbanet.cli.environment import (
    REQUIREMENTS,
    MissingDependenciesError,
    Requirement,
    ensure_dependencies,
    missing_requirements,
    torch_problem,
    version_tuple,
)
from fbanet_slicer.host import best_backend


class FakeInstaller:
    """Records what would be installed; ``on_pip`` runs in place of pip."""

    def __init__(self, testing: bool = False, accept: bool = True, on_pip=None) -> None:
        self.isTesting, self.accept, self.on_pip = testing, accept, on_pip
        self.calls: list[tuple[str, object]] = []

    def testing(self) -> bool:
        return self.isTesting

    def confirm(self, question: str) -> bool:
        self.calls.append(("confirm", question))
        return self.accept

    def install_torch(self, requirement: str) -> None:
        self.calls.append(("torch", requirement))

    def pip_install(self, requirements: list[str]) -> None:
        self.calls.append(("pip", list(requirements)))
        if self.on_pip is not None:
            self.on_pip()


def test_versions_are_checked_not_only_presence() -> None:
    assert version_tuple("2.13.0+cpu") == (2, 13, 0) and version_tuple("1.10rc1") == (1, 10)
    numpy = importlib.metadata.version("numpy")
    assert missing_requirements((Requirement("numpy", "numpy", "1.0"),)) == []
    # An installed but too old package is missing (a find_spec check accepts it).
    assert missing_requirements((Requirement("numpy", "numpy", "999"),)) == ["numpy>=999"]
    assert "older than 2.1" in str(torch_problem(lambda name: "2.0.1"))
    assert torch_problem(lambda name: "2.13.0+cpu") is None
    assert "torch is not installed" in str(torch_problem(_notInstalled))
    assert numpy  # the real lookup found it


def _notInstalled(name: str) -> str:
    raise importlib.metadata.PackageNotFoundError(name)


def test_the_requirements_are_pyprojects() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = {r.pip.lower() for r in REQUIREMENTS} | {f"torch{environment.TORCH_REQUIREMENT}"}
    assert listed == {d.lower() for d in project["dependencies"]}


def test_a_self_test_never_installs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "missing_requirements", lambda: ["h5py>=3.8"])
    monkeypatch.setattr(environment, "torch_problem", lambda: "torch is not installed")
    installer = FakeInstaller(testing=True)
    with pytest.raises(MissingDependenciesError, match=r"torch>=2\.1.*h5py>=3\.8"):
        ensure_dependencies(installer)
    assert installer.calls == []


def test_installing_asks_then_installs_torch_and_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = [["h5py>=3.8"]]
    monkeypatch.setattr(environment, "missing_requirements", lambda: missing[-1])
    torch = ["torch is not installed"]
    monkeypatch.setattr(environment, "torch_problem", lambda: torch[-1])
    declined = FakeInstaller(accept=False)
    assert ensure_dependencies(declined) is False
    assert [c[0] for c in declined.calls] == ["confirm"]

    def installed() -> None:
        missing.append([])
        torch.append(None)  # type: ignore[arg-type]

    installer = FakeInstaller(on_pip=installed)
    assert ensure_dependencies(installer) is True
    assert installer.calls[1:] == [("torch", ">=2.1"), ("pip", ["h5py>=3.8"])]


def test_a_package_installed_a_moment_ago_is_found(tmp_path: Path) -> None:
    """pip writes into a folder whose listing the import system cached: the re-check must
    see the new package (importlib.invalidate_caches)."""
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from fbanet.cli.environment import Requirement, ensure_dependencies
        import fbanet.cli.environment as environment
        assert importlib.util.find_spec("fbanet_fake_pkg") is None  # the folder is cached now
        REQ = (Requirement("fbanet_fake_pkg", "fbanet_fake_pkg", "1.0"),)
        class Installer:
            def testing(self): return False
            def confirm(self, question): return True
            def install_torch(self, requirement): raise AssertionError(requirement)
            def pip_install(self, requirements):
                info = {str(tmp_path)!r} + "/fbanet_fake_pkg-1.2.dist-info"
                import os; os.makedirs(info)
                open(info + "/METADATA", "w").write("Name: fbanet_fake_pkg\\nVersion: 1.2\\n")
        original = environment.missing_requirements
        environment.missing_requirements = lambda: original(REQ)
        environment.torch_problem = lambda: None
        assert ensure_dependencies(Installer()) is True
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_torch_comes_for_the_newest_cuda_the_driver_takes() -> None:
    assert best_backend(["cpu", "cu118", "cu121"]) == "cu121"
    assert best_backend(["cu92", "cu118"]) == "cu118" and best_backend(["cpu"]) == "cpu"
