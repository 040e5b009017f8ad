"""No command writes over one of its inputs, however the output path is spelled."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from builders import trained_looking_model

from fbanet.cli.main import main
from fbanet.config import ModelConfig
from fbanet.io.volumes import Geometry, Volume, write_volume
from fbanet.model.files import ModelMetadata, save_model_file

CONFIG = ModelConfig(base_filters=4, patch_size=(32, 32, 16), projection_dim=8)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    array = np.random.default_rng(0).normal(size=(20, 18, 12)).astype(np.float32)
    (tmp_path / "d").mkdir()
    return write_volume(Volume(array, Geometry((1.0, 1.0, 1.0))), tmp_path / "d" / "scan.nrrd")


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    metadata = ModelMetadata(CONFIG, spacing=(1.0, 1.0, 1.0))
    return save_model_file(tmp_path / "m.safetensors", trained_looking_model(CONFIG), metadata)


def _refused(argv: list[str], kept: Path, capsys: pytest.CaptureFixture[str]) -> str:
    before = digest(kept)
    assert main(argv) == 2
    assert digest(kept) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert "would destroy the input" in err[-1]
    return err[-1]


@pytest.mark.parametrize("spelling", ["{d}/scan.nrrd", "{d}/../d/./scan.nrrd", "link"])
def test_segment_refuses_the_input_as_output(
    scan: Path, model_file: Path, spelling: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = spelling.format(d=scan.parent)
    if spelling == "link":
        (scan.parent / "alias.nrrd").symlink_to(scan)
        out = str(scan.parent / "alias.nrrd")
    line = _refused(["segment", str(scan), "-o", out, "-m", str(model_file)], scan, capsys)
    assert "input image" in line


def test_segment_refuses_the_model_as_a_map_output(
    scan: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = scan.with_name("s-probability.nrrd")  # where --probability would write
    model.write_bytes(model_file.read_bytes())
    out = scan.with_name("s.seg.nrrd")
    argv = ["segment", str(scan), "-o", str(out), "--probability", "-m", str(model)]
    assert "input model" in _refused(argv, model, capsys)
    assert not out.exists()


def test_evaluate_csv_and_export_model_refuse_their_inputs(
    scan: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--pred", str(scan), "--ref", str(scan), "--csv", str(scan)]
    assert "input prediction" in _refused(argv, scan, capsys)
    alias = model_file.parent / ".." / model_file.parent.name / model_file.name
    argv = ["export-model", str(model_file), "-o", str(alias)]
    assert "input model" in _refused(argv, model_file, capsys)
    argv = ["import-checkpoint", str(model_file), "-o", str(model_file)]
    assert "input checkpoint" in _refused(argv, model_file, capsys)


def test_train_refuses_a_start_model_inside_its_run_folder(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    start = run / "model.safetensors"
    start.write_bytes(model_file.read_bytes())
    argv = ["train", "--manifest", str(tmp_path / "x.json"), "--init-model", str(start)]
    assert "input model" in _refused([*argv, "-o", str(run)], start, capsys)


def test_segment_into_the_inputs_folder_refuses_a_name_it_would_reuse(
    scan: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = scan.with_name("other.mha")
    other.write_bytes(scan.read_bytes())  # any second input: several inputs need a folder
    argv = ["segment", str(scan), str(other), "-o", str(scan.parent), "--format", "nrrd",
            "-m", str(model_file)]  # fmt: skip
    assert "input image" in _refused(argv, scan, capsys)
