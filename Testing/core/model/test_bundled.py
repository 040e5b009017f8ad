"""The bundled left-atrium model: small, safe to load, and good on held-out LA cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from paths import SHARED_LA

from fbanet.cli.main import main
from fbanet.io.segmentation import read_segmentation
from fbanet.model.bundled import default_model_path
from fbanet.model.header import read_model_header

LA = SHARED_LA
# The last 8 cases of train.list: the validation split the default model never saw.
VALIDATION_CASE = "TDDI6L3Y0L9VVFP9MNFS"


def test_the_default_model_ships_and_is_small() -> None:
    path = default_model_path()
    assert path is not None and path.is_file()
    assert path.stat().st_size <= 25_000_000
    header = read_model_header(path)
    assert header.model.class_names[1] == "Left atrium"
    assert header.spacing == (1.25, 1.25, 1.25)
    assert header.decoders == (0, 1)
    assert (path.parent / "left_atrium.md").is_file()


def test_segment_without_a_model_uses_the_default(tmp_path: Path) -> None:
    image = LA / "train" / f"{VALIDATION_CASE}.h5"
    if not image.exists():
        pytest.skip("../shared/la is not available")
    out = tmp_path / "case.seg.nrrd"
    code = main(["segment", str(image), "-o", str(out), "--h5-spacing", "0.625", "0.625", "0.625"])
    assert code == 0
    labelmap, segments = read_segmentation(out)
    assert segments[0].name == "Left atrium"
    import h5py

    with h5py.File(image) as handle:
        reference = handle["label"][()] == 1
    prediction = labelmap.array == 1
    dice = 2 * (prediction & reference).sum() / (prediction.sum() + reference.sum())
    assert dice > 0.75, dice  # measured 0.858 on this validation case
    assert np.isclose(labelmap.geometry.spacing, 0.625).all()
