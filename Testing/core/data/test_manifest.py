"""Tests for fbanet.data.manifest: JSON manifests and HDF5 case lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paths import SHARED_LA

from fbanet.data.manifest import CaseRef, read_manifest, spec_from_h5_list

LA_DIR = SHARED_LA


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_manifest_relative_paths(tmp_path: Path) -> None:
    _touch(tmp_path / "data", "a.nrrd", "a-label.nrrd", "b.nii.gz", "c.h5", "v.mha", "v-l.mha")
    manifest = tmp_path / "data" / "manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "labeled": [{"image": "a.nrrd", "label": "a-label.nrrd"}, "c.h5"],
                "unlabeled": ["b.nii.gz"],
                "validation": [{"image": "v.mha", "label": "v-l.mha", "name": "val"}],
            }
        )
    )
    spec = read_manifest(manifest)
    data = tmp_path / "data"
    assert spec.labeled == (
        CaseRef(data / "a.nrrd", data / "a-label.nrrd", "a"),
        CaseRef(data / "c.h5", None, "c"),
    )
    assert spec.unlabeled == (CaseRef(data / "b.nii.gz", None, "b"),)
    assert spec.validation == (CaseRef(data / "v.mha", data / "v-l.mha", "val"),)


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ({"unlabeled": []}, ValueError, "needs key 'labeled'"),
        ({"labeled": ["a.nrrd"], "unlabelled": []}, ValueError, r"unknown keys: \['unlabelled'\]"),
        ({"labeled": ["a.nrrd"]}, ValueError, r"labeled\[0\]: .*a\.nrrd has no 'label'"),
        ({"labeled": ["gone.h5"]}, FileNotFoundError, r"gone\.h5 does not exist"),
        ({"labeled": ["c.h5"], "validation": ["c.h5"]}, ValueError, "listed twice"),
        ({"labeled": []}, ValueError, "'labeled' is empty"),
    ],
)
def test_manifest_errors(tmp_path: Path, content: dict, error: type, message: str) -> None:
    _touch(tmp_path, "a.nrrd", "c.h5")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps(content))
    with pytest.raises(error, match=message):
        read_manifest(manifest)


@pytest.mark.skipif(not (LA_DIR / "train.list").is_file(), reason="shared LA data absent")
def test_spec_from_real_la_list() -> None:
    spec = spec_from_h5_list(LA_DIR / "train", LA_DIR / "train.list", labeled=8, validation=8)
    assert (len(spec.labeled), len(spec.unlabeled), len(spec.validation)) == (8, 64, 8)
    names = [n.strip() for n in (LA_DIR / "train.list").read_text().splitlines() if n.strip()]
    assert [r.name for r in spec.labeled] == names[:8]
    assert [r.name for r in spec.validation] == names[-8:]
    with pytest.raises(ValueError, match="cannot take 70 labeled and 20 validation"):
        spec_from_h5_list(LA_DIR / "train", LA_DIR / "train.list", labeled=70, validation=20)


def test_a_binary_manifest_is_named_and_called_not_a_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "scan.png"
    manifest.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(ValueError) as caught:
        read_manifest(manifest)
    message = str(caught.value)
    assert f"manifest {manifest} is not a JSON manifest (it holds binary data" in message
    assert "codec" not in message


def test_every_missing_file_is_named(tmp_path: Path) -> None:
    _touch(tmp_path, "a.nrrd")
    manifest = tmp_path / "manifest.json"
    entries = {"labeled": [{"image": "a.nrrd", "label": "a-gone.nrrd"}, "b.h5"],
               "unlabeled": ["c.nrrd"]}  # fmt: skip
    manifest.write_text(json.dumps(entries))
    with pytest.raises(FileNotFoundError) as caught:
        read_manifest(manifest)
    message = str(caught.value)
    assert "3 files do not exist" in message
    assert all(str(tmp_path / n) in message for n in ("a-gone.nrrd", "b.h5", "c.nrrd"))


@pytest.mark.parametrize(
    "document",
    [
        {"validation": [{"image": "v.nrrd", "label": "v-l.nrrd"}]},
        [{"image": "v.nrrd", "label": "v-l.nrrd"}],
        {"labeled": [{"image": "v.nrrd", "label": "v-l.nrrd"}]},
    ],
)
def test_a_scoring_manifest_needs_only_labeled_pairs(tmp_path: Path, document: object) -> None:
    from fbanet.data.manifest import read_scoring_manifest

    _touch(tmp_path, "v.nrrd", "v-l.nrrd")
    manifest = tmp_path / "score.json"
    manifest.write_text(json.dumps(document))
    assert read_scoring_manifest(manifest) == (
        CaseRef(tmp_path / "v.nrrd", tmp_path / "v-l.nrrd", "v"),
    )
    manifest.write_text(json.dumps([{"image": "v.nrrd"}]))
    with pytest.raises(ValueError, match="has no 'label'"):
        read_scoring_manifest(manifest)
