"""A model file whose header claims impossible sizes is refused before anything is allocated."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from builders import trained_looking_model

from fbanet.cli.main import main
from fbanet.config import ModelConfig
from fbanet.model.files import ModelMetadata, load_model_file, save_model_file

CONFIG = ModelConfig(base_filters=4, patch_size=(32, 32, 16), projection_dim=8)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    metadata = ModelMetadata(CONFIG, spacing=(1.0, 1.0, 1.0))
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    return save_model_file(path, trained_looking_model(CONFIG), metadata)


def edited(source: Path, target: Path, edit: Any) -> Path:
    """A copy of ``source`` whose fbanet metadata (or tensor entries) ``edit`` changed."""
    data = source.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    fbanet = json.loads(header["__metadata__"]["fbanet"])
    edit(header, fbanet)
    header["__metadata__"]["fbanet"] = json.dumps(fbanet)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    target.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size :])
    return target


def _set(section: str | None, key: str, value: Any) -> Any:
    def edit(header: dict[str, Any], fbanet: dict[str, Any]) -> None:
        (fbanet[section] if section else fbanet)[key] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (_set("model", "patch_size", [100000, 100000, 100000]), "patch_size side 100000"),
        (_set("model", "patch_size", [512, 512, 512]), "patch_size [512, 512, 512]"),
        (_set("model", "base_filters", 4096), "base_filters 4096"),
        (_set("model", "num_classes", 10**6), "1000000"),
        (_set(None, "spacing", [0.0, 1.0, 1.0]), "spacing"),
        (_set(None, "decoders", [0, 7]), "decoders [0, 7]"),
    ],
)
def test_impossible_header_sizes_are_refused_at_once(
    model_file: Path, tmp_path: Path, edit: Any, words: str
) -> None:
    bad = edited(model_file, tmp_path / "bad.safetensors", edit)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"impossible|damaged") as caught:
        load_model_file(bad)
    assert time.perf_counter() - start < 5.0  # not a timing target: a hang would be minutes
    assert words in str(caught.value)


def test_a_tensor_shape_that_disagrees_with_the_header_is_refused(
    model_file: Path, tmp_path: Path
) -> None:
    def grow(header: dict[str, Any], fbanet: dict[str, Any]) -> None:
        fbanet["model"]["base_filters"] = 8  # the tensors stay those of 4 filters

    bad = edited(model_file, tmp_path / "bad.safetensors", grow)
    with pytest.raises(ValueError, match=r"has the shape .* its architecture needs"):
        load_model_file(bad)


def test_segment_refuses_such_a_model_with_one_line(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = edited(
        model_file, tmp_path / "bad.safetensors", _set("model", "patch_size", [100000] * 3)
    )
    scan = tmp_path / "scan.nrrd"
    scan.write_text("not read")
    assert main(["segment", str(scan), "-o", str(tmp_path / "o.seg.nrrd"), "-m", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "impossible patch_size side 100000" in err[0]
    assert not (tmp_path / "o.seg.nrrd").exists()
