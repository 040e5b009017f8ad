"""The batch script (Resources/Scripts/segment_batch.py) with real MRML and a real worker."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import SimpleITK as sitk
from conftest import ROOT

slicer = pytest.importorskip("slicer")
from FBANetSegmentationLib import logic, testing  # noqa: E402

SCRIPT = ROOT / "FBANetSegmentation" / "Resources" / "Scripts" / "segment_batch.py"


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("segment_batch", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_case(path: Path) -> testing.SyntheticCase:
    case = testing.syntheticCase(seed=3)
    image = sitk.GetImageFromArray(case.image.transpose(2, 1, 0).copy())
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetOrigin((12.0, -40.0, 7.5))
    sitk.WriteImage(image, str(path))
    return case


def test_batch_segments_a_folder_and_exits_0(
    mrml_scene: Any, threshold_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    case = _write_case(inputs / "case01.nii.gz")
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    argv = ["--", "--input", str(inputs), "--output", str(out), "--model", str(threshold_model),
            "--device", "cpu", "--timeout", "300"]  # fmt: skip
    assert _script().main(argv, mrml_scene) == 0, capsys.readouterr().err
    written = out / "case01.seg.nrrd"
    assert written.is_file() and "case01.seg.nrrd" in capsys.readouterr().out
    reloaded = logic.loadSegmentationFile(mrml_scene, written, "reloaded")
    segment_id = logic.segmentIdsByName(reloaded)["Left atrium"]
    found = slicer.util.arrayFromSegmentInternalBinaryLabelmap(reloaded, segment_id)
    assert int(found.sum()) == int(case.mask.sum())
    # Only the reloaded node is left: the batch removed what it added.
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0


def test_batch_reports_errors_and_exits_1(
    mrml_scene: Any, threshold_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _script()
    missing = ["--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")]
    assert script.main([*missing, "--model", str(threshold_model)], mrml_scene) == 1
    assert "neither a file nor a folder" in capsys.readouterr().err
    bad = tmp_path / "bad.nrrd"
    bad.write_text("NRRD0004\nbroken")
    args = ["--input", str(bad), "--output", str(tmp_path / "x.seg.nrrd")]
    assert script.main([*args, "--model", str(threshold_model)], mrml_scene) == 1
    assert "bad.nrrd" in capsys.readouterr().err
    assert script.main([*args, "--model", str(tmp_path / "none.safetensors")], mrml_scene) == 1
    assert "choose an fbanet model file" in capsys.readouterr().err


def test_batch_output_names() -> None:
    script = _script()
    inputs = [Path("a/x.nii.gz"), Path("a/y.nrrd")]
    assert script._outputs(inputs, Path("o")) == [Path("o/x.seg.nrrd"), Path("o/y.seg.nrrd")]
    assert script._outputs(inputs[:1], Path("r.seg.nrrd")) == [Path("r.seg.nrrd")]
    with pytest.raises(ValueError, match="need an output folder"):
        script._outputs(inputs, Path("r.seg.nrrd"))
    assert script.parseArguments(["--", "--input", "i", "--output", "o"]).input == Path("i")


def test_batch_checks_torch_before_anything(
    mrml_scene: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from fbanet.cli import environment

    monkeypatch.setattr(environment, "torch_problem", lambda: "torch 2.0.1 is older than 2.1")
    args = ["--input", str(tmp_path), "--output", str(tmp_path / "o")]
    assert _script().main(args, mrml_scene) == 1
    assert "torch>=2.1 (torch 2.0.1 is older than 2.1)" in capsys.readouterr().err
