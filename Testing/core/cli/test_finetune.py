"""``fbanet train --preset finetune``: the bundled model as the start, its settings inherited."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from fbanet.cli.main import main
from fbanet.model.bundled import default_model_path
from fbanet.model.files import initialize_from_model_file, read_model_header
from fbanet.model.network import FBANet
from fbanet.train.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def _nrrd(array: np.ndarray, path: Path, spacing: tuple[float, float, float]) -> str:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose()))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """Two labeled, one unlabeled and one validation case at 2 x 2 x 2.5 mm."""
    rng = np.random.default_rng(0)
    grid = np.indices((40, 36, 24), dtype=np.float32)
    entries: dict[str, list[dict[str, str]]] = {"labeled": [], "unlabeled": [], "validation": []}
    for i, group in enumerate(("labeled", "labeled", "unlabeled", "validation")):
        centre = np.array([20, 18, 12]) + rng.uniform(-3, 3, 3)
        label = sum(((g - c) / 8) ** 2 for g, c in zip(grid, centre, strict=True)) <= 1
        image = 100 + 60 * label + rng.normal(0, 15, label.shape)
        entry = {"image": _nrrd(image.astype(np.float32), tmp_path / f"c{i}.nrrd", (2, 2, 2.5))}
        if group != "unlabeled":
            entry["label"] = _nrrd(label.astype(np.uint8), tmp_path / f"c{i}-l.nrrd", (2, 2, 2.5))
        entries[group].append(entry)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def test_the_finetune_preset_starts_from_the_bundled_model_with_its_settings(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(["train", "--manifest", str(manifest), "--preset", "finetune", "-o", str(out),
                 "--iterations", "1", "--fp32", "--device", "cpu", "--json"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    bundled = read_model_header(default_model_path())
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    # The architecture, patch and spacing are the bundled model's; the rest the preset's.
    assert config["model"]["patch_size"] == list(bundled.model.patch_size) == [64, 64, 48]
    assert config["model"]["base_filters"] == bundled.model.base_filters
    assert config["data"]["source"]["spacing"] == list(bundled.spacing) == [1.25, 1.25, 1.25]
    preset = PRESETS["finetune"]["train"]
    for name in ("learning_rate", "lr_schedule", "validate_every", "mode", "ema_decay"):
        assert config["train"][name] == preset[name], name
    assert config["train"]["iterations"] == 1  # a flag still wins over the preset
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    validations = [e for e in events if e["event"] == "validation"]
    assert validations[0]["iteration"] == 0  # the starting model is scored first
    assert read_model_header(out / "model.safetensors").spacing == bundled.spacing


def test_a_setting_that_differs_from_the_starting_model_is_logged(
    manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        code = main(["train", "--manifest", str(manifest), "--preset", "finetune",
                     "-o", str(tmp_path / "run"), "--iterations", "1", "--fp32", "--device",
                     "cpu", "--patch-size", "32", "32", "32",
                     "--spacing", "2", "2", "2"])  # fmt: skip
    assert code == 0
    assert "differs from the model it starts from" in caplog.text
    assert "patch_size (32, 32, 32) (the starting model's: [64, 64, 48])" in caplog.text
    assert "spacing [2.0, 2.0, 2.0] mm (the starting model's: [1.25, 1.25, 1.25])" in caplog.text
    config = json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))
    assert config["model"]["patch_size"] == [32, 32, 32]


def test_fine_tuning_from_the_bundled_file_loads_every_tensor_it_holds() -> None:
    path = default_model_path()
    assert path is not None
    metadata = read_model_header(path)
    stored = load_file(str(path))
    model = FBANet(metadata.model)
    initialize_from_model_file(model, path)
    state = model.state_dict()
    assert metadata.decoders == (0, 1)  # the shipped file leaves decoder 3 out
    for name, value in stored.items():  # every stored tensor, bit for bit
        torch.testing.assert_close(state[name], value.to(state[name].dtype), rtol=0, atol=0)
    copied = [k for k in state if k.startswith("decoders.2.")]
    assert copied
    for name in copied:  # decoder 3 starts as decoder 2 (documented), not random
        torch.testing.assert_close(state[name], state[name.replace(".2.", ".1.", 1)])
    rest = set(state) - set(stored) - set(copied)
    assert rest and all(k.startswith("contrast.") for k in rest)  # only the heads start fresh


def test_the_finetune_preset_needs_no_unlabeled_scans(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = json.loads(manifest.read_text(encoding="utf-8"))
    unlabeled, entries["unlabeled"] = entries["unlabeled"], []
    alone = tmp_path / "labeled-only.json"
    alone.write_text(json.dumps(entries), encoding="utf-8")
    code = main(["train", "--manifest", str(alone), "--preset", "finetune", "-o",
                 str(tmp_path / "run"), "--iterations", "1", "--fp32",
                 "--device", "cpu"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))
    train = config["train"]
    assert (train["mode"], train["batch_size"], train["labeled_batch_size"]) == ("supervised", 2, 2)
    # Asked for, semi-supervised fine-tuning takes 2 labeled + 2 unlabeled patches a step.
    code = main(["train", "--manifest", str(manifest), "--preset", "finetune", "--mode",
                 "semi-supervised", "-o", str(tmp_path / "semi"), "--iterations", "1", "--fp32",
                 "--device", "cpu"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "semi" / "config.json").read_text(encoding="utf-8"))
    assert (config["train"]["labeled_batch_size"], config["train"]["batch_size"]) == (2, 4)
    assert unlabeled
