"""Where ``fbanet segment`` writes: ``--format`` with or without its leading dot."""

from __future__ import annotations

from pathlib import Path

import pytest

from fbanet.infer.files import output_paths


@pytest.mark.parametrize("spelling", ["nii", ".nii", "nii.gz", "seg.nrrd", ".mha"])
def test_format_with_or_without_the_dot(tmp_path: Path, spelling: str) -> None:
    outputs = output_paths([Path("a.nrrd"), Path("b.mha")], tmp_path, spelling)
    suffix = spelling if spelling.startswith(".") else f".{spelling}"
    assert outputs == [tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"]


def test_an_unknown_format_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"output format '\.png' is not one of"):
        output_paths([Path("a.nrrd")], tmp_path, "png")
