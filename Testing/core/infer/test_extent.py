"""A region too thin for a 3D model (a single slice) is refused, never segmented silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from builders import trained_looking_model

from fbanet.cli.main import main
from fbanet.config import ModelConfig
from fbanet.infer.segmenter import MIN_EXTENT_VOXELS, check_extent
from fbanet.io.volumes import Geometry, Volume, write_volume
from fbanet.model.files import ModelMetadata, save_model_file

CONFIG = ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8)


def test_a_single_slice_is_refused_with_the_size_it_has_and_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metadata = ModelMetadata(CONFIG, spacing=(0.625, 0.625, 0.625))
    model = save_model_file(tmp_path / "m.safetensors", trained_looking_model(CONFIG), metadata)
    array = np.random.default_rng(0).normal(size=(64, 64, 1)).astype(np.float32)
    scan = write_volume(Volume(array, Geometry((0.625, 0.625, 0.625))), tmp_path / "s.nrrd")
    out = tmp_path / "s.seg.nrrd"
    assert main(["segment", str(scan), "-o", str(out), "-m", str(model), "--fp32"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == [
        "fbanet segment: error: the region to segment is 64 x 64 x 1 voxels, 64 x 64 x 1 "
        "voxels at the model's spacing (0.625 x 0.625 x 0.625 mm); a 3D model needs at least "
        "4 along each axis (2.5 x 2.5 x 2.5 mm): give a 3D scan (or a larger --roi) that "
        "covers it"
    ]
    assert not out.exists()


def test_the_extent_counts_at_the_models_spacing() -> None:
    # Four slices of 0.3 mm are 1.2 mm: under two voxels of a 1 mm model.
    with pytest.raises(ValueError, match=r"64 x 64 x 1\.2 voxels at the model's spacing"):
        check_extent((64, 64, 4), (1.0, 1.0, 0.3), (1.0, 1.0, 1.0))
    check_extent((64, 64, 4), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))  # four voxels: enough
    check_extent((64, 64, 4), (1.0, 1.0, 2.0), None)  # no model spacing: the scan's voxels
    with pytest.raises(ValueError, match="64 x 64 x 3 voxels at the model's spacing"):
        check_extent((64, 64, 3), (1.0, 1.0, 2.0), None)
    assert MIN_EXTENT_VOXELS == 4
