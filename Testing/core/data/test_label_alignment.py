"""Labels that lost their geometry, or cover part of their image, are refused, not resampled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builders import blob_arrays, write_nrrd

from fbanet.cli.main import main
from fbanet.data.cases import load_case

LA = (0.625, 0.625, 0.625)


@pytest.fixture
def lost_spacing(tmp_path: Path) -> Path:
    """A case whose label has the image's size but 1 mm voxels (as numpy-saved files do)."""
    image, label = blob_arrays(0)
    write_nrrd(image, tmp_path / "case.nrrd", LA)
    write_nrrd(label, tmp_path / "case-label.nrrd", (1.0, 1.0, 1.0))
    return tmp_path


def _message(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if ": error: " in line]
    assert len(lines) == 1
    return lines[0].split(": error: ", 1)[1]


def test_a_label_that_lost_its_spacing_is_refused_in_training_and_evaluation(
    lost_spacing: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pair = {"image": "case.nrrd", "label": "case-label.nrrd"}
    manifest = lost_spacing / "m.json"
    manifest.write_text(json.dumps({"labeled": [pair]}))
    argv = ["train", "--manifest", str(manifest), "-o", str(lost_spacing / "run"),
            "--patch-size", "16", "16", "16", "--mode", "supervised"]  # fmt: skip
    assert main(argv) == 2
    trained = _message(capsys)
    assert "lie on different voxel grids (image vs label: spacing" in trained
    assert "label.CopyInformation(image)" in trained
    assert not (lost_spacing / "run").exists()
    scores = lost_spacing / "score.json"
    scores.write_text(json.dumps([pair]))
    assert main(["evaluate", "--manifest", str(scores)]) == 2
    assert _message(capsys) == trained  # the same words in both commands


def test_a_label_covering_part_of_its_image_needs_to_be_allowed(tmp_path: Path) -> None:
    image, label = blob_arrays(1, shape=(24, 20, 18))
    write_nrrd(image, tmp_path / "case.nrrd", (1.0, 1.0, 1.0))
    half = np.ascontiguousarray(label[:, :, :10])  # the lower half of the slices, 0.5 mm
    write_nrrd(np.repeat(half, 2, axis=2), tmp_path / "half.nrrd", (1.0, 1.0, 0.5))
    with pytest.raises(ValueError, match=r"the label covers only 5\d\.\d% of the image"):
        load_case(tmp_path / "case.nrrd", tmp_path / "half.nrrd", normalization="zscore")
    case = load_case(
        tmp_path / "case.nrrd", tmp_path / "half.nrrd", normalization="zscore",
        allow_partial_label=True,
    )  # fmt: skip
    assert case.label is not None and case.label.shape == (24, 20, 18)
    assert not case.label[:, :, 10:].any()  # the uncovered slices are background
