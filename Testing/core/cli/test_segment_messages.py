"""``fbanet segment`` says a problem once, and shows no empty progress bar for it."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from builders import trained_looking_model

from fbanet.cli.main import main
from fbanet.config import ModelConfig
from fbanet.model.files import ModelMetadata, save_model_file

CONFIG = ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8)


def test_a_missing_h5_spacing_is_said_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_model_file(
        tmp_path / "m.safetensors", trained_looking_model(CONFIG), ModelMetadata(CONFIG)
    )
    scan = tmp_path / "x.h5"
    with h5py.File(scan, "w") as handle:
        handle["image"] = np.random.default_rng(0).random((32, 32, 20), dtype=np.float32)
    assert main(["segment", str(scan), "-o", str(tmp_path / "x.seg.nrrd"), "-m", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.count("--h5-spacing") == 1, err
    assert "window" not in err  # no progress bar for a scan that was never segmented
