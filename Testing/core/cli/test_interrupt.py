"""Ctrl-C ends ``fbanet segment`` promptly: exit 130, one line, nothing partial, no thread left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from builders import trained_looking_model

from fbanet.config import ModelConfig
from fbanet.io.volumes import Geometry, Volume, write_volume
from fbanet.model.files import ModelMetadata, save_model_file

CONFIG = ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child needs POSIX signals")
def test_ctrl_c_during_segment_exits_130_with_one_line(tmp_path: Path) -> None:
    model = save_model_file(
        tmp_path / "m.safetensors", trained_looking_model(CONFIG), ModelMetadata(CONFIG)
    )
    array = np.random.default_rng(0).normal(size=(128, 128, 96)).astype(np.float32)
    scan = write_volume(Volume(array, Geometry((1.0, 1.0, 1.0))), tmp_path / "scan.nrrd")
    out = tmp_path / "out" / "scan.seg.nrrd"
    command = [sys.executable, "-m", "fbanet", "segment", str(scan), "-o", str(out),
               "-m", str(model), "--json", "--window", "patch", "--flips", "none",
               "--windows-per-batch", "1", "--device", "cpu", "--fp32"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())  # windows are being computed
    assert first["event"] == "progress" and first["done"] < first["total"]
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert time.monotonic() - sent < 60  # not a timing target: the run would take minutes
    assert "Traceback" not in err and "terminate called" not in err
    # Besides the log's INFO lines from before Ctrl-C, one line says what happened.
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("INFO ")]
    assert lines == ["fbanet segment: interrupted (Ctrl-C); no partial output was written"]
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())
