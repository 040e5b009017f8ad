"""``fbanet segment`` and ``fbanet evaluate`` end to end, on small NRRD files and a tiny model.

The model is a 4-filter FBA-Net with a 32x32x16 patch (large enough for the authors' stride
18/18/4 to cover every voxel) and random weights; its file records a 1 mm spacing, so the
scans (0.8 x 0.8 x 1.5 mm) are resampled on the way in and out.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from builders import trained_looking_model
from PIL import Image

import fbanet.cli.inference
import fbanet.io.atomic
import fbanet.model.bundled
from fbanet.cli.main import main
from fbanet.config import ModelConfig
from fbanet.infer.config import InferenceConfig
from fbanet.infer.segmenter import Segmenter
from fbanet.io.segmentation import read_segmentation, write_segmentation
from fbanet.io.segments import segments_from_model
from fbanet.io.volumes import Geometry, Volume, read_volume, write_volume
from fbanet.model.files import ModelMetadata, save_model_file

CONFIG = ModelConfig(base_filters=4, patch_size=(32, 32, 16), projection_dim=8)
COLOR = (0.85, 0.4, 0.35)  # the model's "Left atrium" colour
SPACING = (0.8, 0.8, 1.5)
SHAPE = (36, 30, 14)
OBLIQUE = (0.936, -0.275, 0.22, 0.29, 0.956, -0.04, -0.199, 0.102, 0.975)
# Voxel axes along -Y, +Z, -X: rotated, yet a physical box maps onto a voxel box exactly.
PERMUTED = (0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
FP32_CPU = InferenceConfig(device="cpu", precision="fp32")


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def orthonormal(values: tuple[float, ...]) -> tuple[float, ...]:
    """The nearest rotation to a 3x3 matrix (SimpleITK wants exact direction cosines)."""
    u, _, vt = np.linalg.svd(np.asarray(values).reshape(3, 3))
    return tuple((u @ vt).ravel())


GEOMETRY = Geometry(SPACING, (12.5, -30.0, 44.0), orthonormal(OBLIQUE))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = trained_looking_model(CONFIG)
    metadata = ModelMetadata(CONFIG, spacing=(1.0, 1.0, 1.0), description="test model")
    return save_model_file(tmp_path_factory.mktemp("model") / "tiny.safetensors", model, metadata)


def sphere(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def write_scan(
    path: Path, geometry: Geometry = GEOMETRY, shape: tuple[int, ...] = SHAPE, seed: int = 0
) -> Path:
    """A noisy bright sphere, stored as float32 with ``geometry``."""
    rng = np.random.default_rng(seed)
    mask = sphere(shape, (shape[0] * 0.55, shape[1] * 0.45, shape[2] * 0.5), shape[2] * 0.35)
    array = (200.0 + 300.0 * mask + rng.normal(0.0, 20.0, size=shape)).astype(np.float32)
    return write_volume(Volume(array, geometry), path)


def assert_same_grid(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)


def test_segment_writes_segmentation_maps_and_preview_on_the_input_grid(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_scan(tmp_path / "scan.nrrd")
    out = tmp_path / "results" / "scan.seg.nrrd"  # the folder does not exist yet
    preview = tmp_path / "scan.png"
    code = main([
        "segment", str(image), "-m", str(model_file), "-o", str(out), "--probability",
        "--uncertainty", "--preview", str(preview), "--json", "--fp32",
    ])  # fmt: skip
    assert code == 0

    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    progress = [e for e in events if e["event"] == "progress"]
    done = [e for e in events if e["event"] == "done"]
    assert len(done) == 1 and events[-1] is done[0]
    assert progress and progress[-1]["done"] == progress[-1]["total"] > 0
    assert [e["done"] for e in progress] == sorted(e["done"] for e in progress)
    assert done[0]["segmentation"] == str(out)
    probability = tmp_path / "results" / "scan-probability.nrrd"
    uncertainty = tmp_path / "results" / "scan-uncertainty.nrrd"
    assert done[0]["probability"] == str(probability)
    assert done[0]["uncertainty"] == str(uncertainty)
    assert done[0]["preview"] == str(preview)

    segmentation = slicerio.read_segmentation(str(out))
    assert len(segmentation["segments"]) == 1
    segment = segmentation["segments"][0]
    assert segment["name"] == "Left atrium"
    assert segment["labelValue"] == 1
    np.testing.assert_allclose(segment["color"], COLOR, atol=1e-5)

    source = sitk.ReadImage(str(image))
    assert_same_grid(sitk.ReadImage(str(out)), source)
    for path in (probability, uncertainty):
        scalar = sitk.ReadImage(str(path))
        assert_same_grid(scalar, source)
        assert scalar.GetPixelID() == sitk.sitkFloat32
    prob = sitk.GetArrayFromImage(sitk.ReadImage(str(probability)))
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(uncertainty))).min() >= 0.0
    with Image.open(preview) as png:
        assert png.format == "PNG" and png.size[0] > 50

    # The file holds exactly what the library computes for that scan.
    expected = Segmenter.from_file(model_file, FP32_CPU).segment(read_volume(image))
    labels, _ = read_segmentation(out)
    np.testing.assert_array_equal(labels.array, expected.labelmap.array)
    leftovers = [p.name for p in out.parent.iterdir() if ".tmp" in p.name]
    assert leftovers == []


def test_segment_two_inputs_into_a_folder(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = Geometry((1.1, 0.9, 1.2), (-5.0, 8.0, 2.0), orthonormal(PERMUTED))
    first = write_scan(tmp_path / "first.nrrd", seed=1)
    second = write_scan(tmp_path / "second.nii.gz", other, (24, 28, 20), seed=2)
    out = tmp_path / "out"
    previews = tmp_path / "previews"
    code = main([
        "segment", str(first), str(second), "-m", str(model_file), "-o", str(out), "--fp32",
        "--preview", str(previews),
    ])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["first.seg.nrrd", "second.seg.nrrd"]
    assert sorted(p.name for p in previews.iterdir()) == ["first.png", "second.png"]
    for source, name in ((first, "first"), (second, "second")):
        written = sitk.ReadImage(str(out / f"{name}.seg.nrrd"))
        assert_same_grid(written, sitk.ReadImage(str(source)))
    assert capsys.readouterr().out == ""  # no --json: nothing on stdout


def test_segment_roi_in_voxels(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = write_scan(tmp_path / "scan.nrrd")
    out = tmp_path / "roi.seg.nrrd"
    args = ["segment", str(image), "-m", str(model_file), "-o", str(out), "--fp32"]
    assert main([*args, "--probability", "--roi", "3", "-5", "2", "30", "22", "99"]) == 0

    box = (slice(3, 30), slice(0, 22), slice(2, SHAPE[2]))
    prob = read_volume(tmp_path / "roi-probability.nrrd").array
    labels = read_segmentation(out)[0].array
    inside = np.zeros(SHAPE, dtype=bool)
    inside[box] = True
    assert prob[inside].min() > 0.0  # softmax never reaches 0 exactly
    assert not prob[~inside].any()
    assert not labels[~inside].any()


def test_segment_roi_in_millimetres(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    geometry = Geometry(SPACING, (20.0, -10.0, 5.0), orthonormal(PERMUTED))
    image = write_scan(tmp_path / "scan.nrrd", geometry)
    reference = sitk.ReadImage(str(image))
    start, last = (4, 6, 3), (25, 27, 11)  # voxel box, both ends included
    a = reference.TransformIndexToPhysicalPoint(start)
    b = reference.TransformIndexToPhysicalPoint(last)
    out = tmp_path / "roi.seg.nrrd"
    args = ["segment", str(image), "-m", str(model_file), "-o", str(out), "--fp32"]
    assert main([*args, "--probability", "--roi-mm", *map(str, (*a, *b))]) == 0

    prob = read_volume(tmp_path / "roi-probability.nrrd").array
    support = np.argwhere(prob > 0)
    np.testing.assert_array_equal(support.min(axis=0), start)
    np.testing.assert_array_equal(support.max(axis=0), last)
    assert len(support) == math.prod(e - s + 1 for s, e in zip(start, last, strict=True))


def test_corrupt_input_leaves_no_output(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 40 40 40\nencoding: raw\n\n\x00")
    out = tmp_path / "out"
    out.mkdir()
    code = main([
        "segment", str(bad), "-m", str(model_file), "-o", str(out / "broken.seg.nrrd"),
        "--probability", "--uncertainty", "--preview", str(out / "broken.png"), "--fp32",
    ])  # fmt: skip
    assert code == 2
    assert "broken.nrrd" in capsys.readouterr().err
    assert list(out.iterdir()) == []  # neither outputs nor temporary files


def test_missing_input_is_reported(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.nrrd"
    code = main(["segment", str(missing), "-m", str(model_file), "-o", str(tmp_path / "o")])
    assert code != 0
    err = capsys.readouterr().err
    assert "nowhere.nrrd" in err and "does not exist" in err
    assert not (tmp_path / "o").exists()


def test_segment_without_a_model_asks_for_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fbanet.model.bundled, "default_model_path", lambda: None)
    image = write_scan(tmp_path / "scan.nrrd")
    code = main(["segment", str(image), "-o", str(tmp_path / "s.seg.nrrd")])
    assert code == 2
    assert "--model" in capsys.readouterr().err
    assert not (tmp_path / "s.seg.nrrd").exists()


def write_cases(folder: Path, count: int) -> list[dict[str, str]]:
    """Image/label NRRD pairs: a bright sphere and its mask, on the module's oblique grid."""
    entries = []
    for i in range(count):
        image = write_scan(folder / f"case{i}.nrrd", seed=10 + i)
        array = read_volume(image).array
        label = (array > 350).astype(np.uint8)
        write_volume(Volume(label, GEOMETRY), folder / f"case{i}-label.nrrd")
        entries.append({"image": image.name, "label": f"case{i}-label.nrrd", "name": f"c{i}"})
    return entries


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as stream:
        return {row["case"]: row for row in csv.DictReader(stream)}


def test_evaluate_manifest_prints_and_saves_the_table(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = write_cases(tmp_path, 4)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"labeled": entries[:1], "validation": entries[1:]}))
    table = tmp_path / "metrics.csv"
    code = main([
        "evaluate", "--manifest", str(manifest), "-m", str(model_file), "--csv", str(table),
        "--fp32", "--no-largest-component",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "mean ± std" in printed
    assert all(f"c{i}" in printed for i in (1, 2, 3)) and "c0 " not in printed

    rows = read_csv(table)
    assert list(rows) == ["c1", "c2", "c3", "mean", "std", "left_out"]
    cases = [rows[f"c{i}"] for i in (1, 2, 3)]
    for column in ("dice", "jaccard", "hd95_mm", "asd_mm"):
        values = np.array([float(row[column]) for row in cases])
        assert np.isfinite(values).all()
        assert float(rows["mean"][column]) == pytest.approx(values.mean(), abs=1e-12)
        assert float(rows["std"][column]) == pytest.approx(values.std(), abs=1e-12)

    # Each Dice is the one computed by hand from the library's segmentation.
    segmenter = Segmenter.from_file(
        model_file, InferenceConfig(device="cpu", precision="fp32", largest_component=False)
    )
    for i in (1, 2, 3):
        predicted = segmenter.segment(read_volume(tmp_path / f"case{i}.nrrd")).labelmap.array == 1
        truth = read_volume(tmp_path / f"case{i}-label.nrrd").array == 1
        expected = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
        assert float(rows[f"c{i}"]["dice"]) == pytest.approx(expected, abs=1e-12)


def test_evaluate_saved_segmentations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shape = (30, 26, 20)
    pred = sphere(shape, (14.0, 12.0, 10.0), 7.0)
    ref = sphere(shape, (16.0, 13.0, 9.0), 6.5)
    geometry = Geometry((0.7, 0.7, 1.0), (1.0, 2.0, 3.0))
    segments = segments_from_model(CONFIG.class_names, CONFIG.class_colors)
    pred_path = write_segmentation(
        Volume(pred.astype(np.uint8), geometry), tmp_path / "pred.seg.nrrd", segments
    )
    ref_path = write_volume(Volume(ref.astype(np.uint8), geometry), tmp_path / "ref.nrrd")
    table = tmp_path / "scores.csv"
    code = main(["evaluate", "--pred", str(pred_path), "--ref", str(ref_path), "--csv", str(table)])
    assert code == 0
    expected = 2 * (pred & ref).sum() / (pred.sum() + ref.sum())
    assert 0.5 < expected < 0.95
    assert f"{expected:.4f}" in capsys.readouterr().out
    rows = read_csv(table)
    assert float(rows["pred.seg.nrrd"]["dice"]) == pytest.approx(expected, abs=1e-12)
    jaccard = (pred & ref).sum() / (pred | ref).sum()
    assert float(rows["pred.seg.nrrd"]["jaccard"]) == pytest.approx(jaccard, abs=1e-12)

    assert main(["evaluate", "--pred", str(pred_path)]) == 2
    assert "--pred and --ref go together" in capsys.readouterr().err


def test_evaluate_with_the_paper_protocol(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = write_cases(tmp_path, 2)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"labeled": entries[:1], "validation": entries[1:]}))
    table = tmp_path / "paper.csv"
    code = main([
        "evaluate", "--manifest", str(manifest), "-m", str(model_file), "--protocol", "paper",
        "--fp32", "--csv", str(table),
    ])  # fmt: skip
    assert code == 0
    assert "c1" in capsys.readouterr().out
    rows = read_csv(table)
    assert list(rows) == ["c1", "mean", "std", "left_out"]
    assert 0.0 <= float(rows["c1"]["dice"]) <= 1.0


def test_segment_many_inputs_reports_a_failed_one_and_writes_the_others(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = write_scan(tmp_path / "first.nrrd", seed=1)
    bad = tmp_path / "broken.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 40 40 40\nencoding: raw\n\n\x00")
    third = write_scan(tmp_path / "third.nrrd", seed=3)
    out = tmp_path / "out"
    code = main([
        "segment", str(first), str(bad), str(third), "-m", str(model_file), "-o", str(out),
        "--fp32", "--device", "cpu", "--json",
    ])  # fmt: skip
    assert code == 2  # the failure is bad input
    assert sorted(p.name for p in out.iterdir()) == ["first.seg.nrrd", "third.seg.nrrd"]
    captured = capsys.readouterr()
    assert "1 of 3 scan(s) failed:" in captured.err and "broken.nrrd" in captured.err
    events = [json.loads(line) for line in captured.out.splitlines()]
    ends = [(e["event"], Path(e["image"]).name) for e in events if e["event"] != "progress"]
    assert ends == [("done", "first.nrrd"), ("failed", "broken.nrrd"), ("done", "third.nrrd")]
    assert {e["device"] for e in events} == {"cpu"}


def test_segment_devices_without_gpus_is_refused(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    image = write_scan(tmp_path / "scan.nrrd")
    code = main(["segment", str(image), "-m", str(model_file), "-o", str(tmp_path / "o"),
                 "--devices", "0,1"])  # fmt: skip
    assert code == 2
    assert "has 0 CUDA GPU(s)" in capsys.readouterr().err


def _no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading a model fail loudly: the checks must come before it."""

    def refuse(*_: object) -> None:
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(fbanet.cli.inference, "load_segmenter", refuse)


def test_missing_input_is_reported_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_model(monkeypatch)
    good = write_scan(tmp_path / "good.nrrd")
    code = main(["segment", str(good), str(tmp_path / "gone.nrrd"), "-o", str(tmp_path / "o")])
    assert code == 2
    assert "gone.nrrd does not exist" in capsys.readouterr().err
    assert main(["rank", str(tmp_path / "gone.nrrd")]) == 2
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"labeled": [{"image": "gone.nrrd", "label": "gone.nrrd"}]}))
    assert main(["evaluate", "--manifest", str(manifest)]) == 2
    assert "gone.nrrd" in capsys.readouterr().err


def test_output_under_a_file_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _no_model(monkeypatch)
    image = write_scan(tmp_path / "scan.nrrd")
    (tmp_path / "afile").write_text("x")
    code = main(["segment", str(image), "-o", str(tmp_path / "afile" / "out.seg.nrrd")])
    err = capsys.readouterr().err
    assert code == 2
    assert "afile is a file, not a folder" in err and "Errno 17" not in err


def test_hdf5_without_spacing_is_refused(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import h5py

    scan = tmp_path / "case.h5"
    with h5py.File(scan, "w") as handle:
        handle["image"] = np.zeros((36, 30, 14), np.float32)
        handle["label"] = np.ones((36, 30, 14), np.uint8)
    out = tmp_path / "out"
    code = main(["segment", str(scan), "-m", str(model_file), "-o", str(out), "--fp32"])
    assert code == 2 and "--h5-spacing" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []
    (tmp_path / "list").write_text("case\n")
    code = main([
        "evaluate", "--h5-dir", str(tmp_path), "--h5-list", str(tmp_path / "list"),
        "-m", str(model_file), "--fp32",
    ])  # fmt: skip
    assert code == 2 and "--h5-spacing" in capsys.readouterr().err
    code = main(["rank", str(scan), "-m", str(model_file), "--fp32"])
    assert code == 2 and "--h5-spacing" in capsys.readouterr().err


def test_evaluate_refuses_a_reference_on_another_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shape = (20, 20, 10)
    mask = sphere(shape, (10.0, 10.0, 5.0), 4.0).astype(np.uint8)
    segments = segments_from_model(CONFIG.class_names, CONFIG.class_colors)
    pred = write_segmentation(Volume(mask, GEOMETRY), tmp_path / "pred.seg.nrrd", segments)
    far = Geometry(SPACING, (500.0, 500.0, 500.0), GEOMETRY.direction)
    ref = write_volume(Volume(mask, far), tmp_path / "ref.nrrd")
    code = main(["evaluate", "--pred", str(pred), "--ref", str(ref)])
    err = capsys.readouterr().err
    assert code == 2
    assert "different voxel grids" in err and "origin (12.5, -30.0, 44.0) vs (500.0" in err


def test_evaluate_aligns_image_and_label_as_training_does(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A label that lies nowhere near its image: training refuses the pair, so must evaluate.
    image = write_scan(tmp_path / "img.nrrd")
    far = Geometry(SPACING, (900.0, 900.0, 900.0), GEOMETRY.direction)
    label = write_volume(Volume(np.ones(SHAPE, np.uint8), far), tmp_path / "lab.nrrd")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"labeled": [{"image": image.name, "label": label.name}]}))
    code = main(["evaluate", "--manifest", str(manifest), "-m", str(model_file), "--fp32"])
    err = capsys.readouterr().err
    assert code == 2 and "do not overlap in physical space" in err and "origin" in err


def test_disk_full_leaves_no_output_and_says_so(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    image = write_scan(tmp_path / "scan.nrrd")
    real_write = sitk.WriteImage

    def full_disk(img: sitk.Image, name: str, **options: bool) -> None:
        # ITK's own words for a full disk while writing the probability map.
        Path(name).write_bytes(b"NRRD0004\n")
        raise RuntimeError("[nrrd] _nrrdEncodingRaw_write: fwrite wrote only 262070 things")

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(sitk, "WriteImage", full_disk)
    monkeypatch.setattr(
        fbanet.io.atomic.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10, 10, 0)
    )
    code = main([
        "segment", str(image), "-m", str(model_file), "-o", str(out / "scan.seg.nrrd"),
        "--probability", "--fp32",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "no space left on the disk holding" in err and "_nrrdEncoding" not in err
    assert list(out.iterdir()) == []  # the .seg.nrrd written first is not left behind
    monkeypatch.setattr(sitk, "WriteImage", real_write)


@pytest.mark.parametrize(
    ("flags", "flips", "window"),
    [
        ([], "axes", "volume"),  # the defaults
        (["--flips"], "all", "volume"),  # the old on/off flag still means all four
        (["--flips", "none", "--window", "patch"], "none", "patch"),
        (["--protocol", "paper"], "none", "patch"),  # the authors' protocol as published
        (["--protocol", "paper", "--flips", "axes"], "axes", "patch"),
    ],
)
def test_mirroring_and_window_flags(flags: list[str], flips: str, window: str) -> None:
    from fbanet.cli.main import build_parser

    args = build_parser().parse_args(["segment", "scan.nrrd", "-o", "out.seg.nrrd", *flags])
    config = fbanet.cli.inference._inference_config(args)
    assert (config.flips.value, config.window.value) == (flips, window)


def test_a_bad_mirroring_name_is_refused_with_the_valid_ones(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan = write_scan(tmp_path / "scan.nrrd")
    code = main(["segment", str(scan), "-o", str(tmp_path / "out.seg.nrrd"),
                 "-m", str(model_file), "--flips", "diagonal"])  # fmt: skip
    assert code == 2
    assert "--flips 'diagonal' is not valid; valid values: 'none', 'axes', 'all'" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "out.seg.nrrd").exists()
