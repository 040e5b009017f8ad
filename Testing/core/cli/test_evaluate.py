"""``fbanet evaluate --manifest``: what a user writes to score scans is accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import blob_arrays, trained_looking_model, write_nrrd

from fbanet.cli.main import main
from fbanet.config import ModelConfig
from fbanet.model.files import ModelMetadata, save_model_file

CONFIG = ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    metadata = ModelMetadata(CONFIG, spacing=(1.0, 1.0, 1.0))
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    return save_model_file(path, trained_looking_model(CONFIG), metadata)


def _pairs(folder: Path, count: int) -> list[dict[str, str]]:
    entries = []
    for i in range(count):
        image, label = blob_arrays(i)
        write_nrrd(image, folder / f"s{i}.nrrd", (1.0, 1.0, 1.0))
        write_nrrd(label, folder / f"s{i}-label.nrrd", (1.0, 1.0, 1.0))
        entries.append({"image": f"s{i}.nrrd", "label": f"s{i}-label.nrrd"})
    return entries


@pytest.mark.parametrize("shape", ["list", "validation"])
def test_evaluate_scores_pairs_without_a_labeled_set(
    tmp_path: Path, model_file: Path, shape: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = _pairs(tmp_path, 2)
    manifest = tmp_path / "score.json"
    manifest.write_text(json.dumps(pairs if shape == "list" else {"validation": pairs}))
    argv = ["evaluate", "--manifest", str(manifest), "-m", str(model_file), "--fp32"]
    assert main([*argv, "--device", "cpu"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "s0" in printed and "s1" in printed and "mean ± std" in printed


def test_evaluate_names_a_binary_manifest(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "scan.png"
    manifest.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    assert main(["evaluate", "--manifest", str(manifest), "-m", str(model_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"fbanet evaluate: error: manifest {manifest} is not a JSON manifest (it holds binary "
        'data, not text); give the JSON file that lists the cases, e.g. {"labeled": '
        '[{"image": "case1.nrrd", "label": "case1-label.nrrd"}]}'
    ]
