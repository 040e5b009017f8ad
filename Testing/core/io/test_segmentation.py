"""Tests for fbanet.io.segmentation: Slicer .seg.nrrd and plain labelmap output."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from slicerio.segmentation import terminology_entry_to_string

from fbanet.io import segmentation as segmentation_io
from fbanet.io.segmentation import read_segmentation, write_scalar_volume, write_segmentation
from fbanet.io.segments import LEFT_ATRIUM, SegmentInfo, segments_from_model
from fbanet.io.volumes import Geometry, Volume, read_volume

LA_COLOR = (0.85, 0.4, 0.35)
# Written out by hand, as Slicer stores it in a .seg.nrrd header.
LA_TERMINOLOGY = (
    "Segmentation category and type - DICOM master list~SCT^123037004^Anatomical Structure"
    "~SCT^82471001^Left atrium~^^~Anatomic codes - DICOM master list~^^~^^"
)


def _rotation(angle: float) -> np.ndarray:
    """A rotation about an oblique axis, so no direction entry is 0 or 1."""
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


GEOMETRY = Geometry(
    spacing=(0.625, 0.8, 2.5),
    origin=(-41.5, 17.25, 88.125),
    direction=tuple(_rotation(0.4).ravel()),
)


def _physical_to_index(geometry: Geometry, point: np.ndarray) -> np.ndarray:
    direction = np.asarray(geometry.direction).reshape(3, 3)
    return np.linalg.solve(direction * np.asarray(geometry.spacing), point - geometry.origin)


def _sphere_labelmap(center_mm: np.ndarray, radius_mm: float = 6.0) -> Volume:
    """A labelmap on GEOMETRY with a sphere (label 1) at a physical point."""
    shape = (40, 36, 12)
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    direction = np.asarray(GEOMETRY.direction).reshape(3, 3)
    points = idx @ (direction * np.asarray(GEOMETRY.spacing)).T + np.asarray(GEOMETRY.origin)
    inside = np.linalg.norm(points - center_mm, axis=-1) <= radius_mm
    return Volume(inside.astype(np.uint8), GEOMETRY)


def _la_segments() -> list[SegmentInfo]:
    return segments_from_model(("Background", "Left atrium"), ((0.0, 0.0, 0.0), LA_COLOR))


@pytest.fixture()
def sphere() -> tuple[Volume, np.ndarray]:
    center_index = np.array([20.0, 17.0, 6.0])
    direction = np.asarray(GEOMETRY.direction).reshape(3, 3)
    center_mm = direction @ (center_index * np.asarray(GEOMETRY.spacing)) + GEOMETRY.origin
    return _sphere_labelmap(center_mm), center_mm


def test_seg_nrrd_round_trip_with_slicerio(tmp_path: Path, sphere) -> None:
    labelmap, _ = sphere
    path = write_segmentation(labelmap, tmp_path / "case.seg.nrrd", _la_segments())
    assert path == tmp_path / "case.seg.nrrd"
    seg = slicerio.read_segmentation(str(path))
    (segment,) = seg["segments"]
    assert segment["name"] == "Left atrium"
    assert segment["labelValue"] == 1
    assert np.allclose(segment["color"], LA_COLOR)
    terminology = terminology_entry_to_string(segment["terminology"])
    assert terminology == LA_TERMINOLOGY
    assert "SCT^82471001^Left atrium" in terminology and "SCT^123037004" in terminology
    np.testing.assert_array_equal(seg["voxels"], labelmap.array)
    header = nrrd.read_header(str(path))
    assert header["Segment0_Tags"] == f"TerminologyEntry:{LA_TERMINOLOGY}|"
    assert header["Segment0_LabelValue"] == "1" and header["Segment0_Layer"] == "0"
    ijk_to_lps = np.asarray(seg["ijkToLPS"])
    direction = np.asarray(GEOMETRY.direction).reshape(3, 3)
    np.testing.assert_allclose(ijk_to_lps[:3, :3], direction * np.asarray(GEOMETRY.spacing))
    np.testing.assert_allclose(ijk_to_lps[:3, 3], GEOMETRY.origin)


def test_seg_nrrd_geometry_read_by_simpleitk_and_us(tmp_path: Path, sphere) -> None:
    labelmap, _ = sphere
    path = write_segmentation(labelmap, tmp_path / "case.seg.nrrd", _la_segments())
    image = sitk.ReadImage(str(path))
    for got, want in (
        (image.GetOrigin(), GEOMETRY.origin),
        (image.GetSpacing(), GEOMETRY.spacing),
        (image.GetDirection(), GEOMETRY.direction),
    ):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), labelmap.array)

    volume, segments = read_segmentation(path)
    np.testing.assert_array_equal(volume.array, labelmap.array)
    assert volume.geometry.matches(GEOMETRY, tol=1e-6)
    assert segments == [SegmentInfo(1, "Left atrium", LA_COLOR, LEFT_ATRIUM)]


def test_sphere_stays_at_its_physical_point(tmp_path: Path, sphere) -> None:
    labelmap, center_mm = sphere
    path = write_segmentation(labelmap, tmp_path / "s.seg.nrrd", _la_segments())
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    centroid_index = np.argwhere(array == 1).mean(axis=0)
    centroid_mm = image.TransformContinuousIndexToPhysicalPoint(centroid_index.tolist())
    np.testing.assert_allclose(centroid_mm, center_mm, atol=0.05)
    # The same point through our reader's geometry.
    volume, _ = read_segmentation(path)
    index = _physical_to_index(volume.geometry, center_mm)
    np.testing.assert_allclose(index, [20.0, 17.0, 6.0], atol=1e-6)
    assert volume.array[20, 17, 6] == 1


@pytest.mark.parametrize("name", ["lab.nii.gz", "lab.nrrd", "lab.mha", "lab.nii"])
def test_plain_labelmap_round_trip(tmp_path: Path, sphere, name: str) -> None:
    labelmap, _ = sphere
    path = write_segmentation(labelmap, tmp_path / name, _la_segments())
    raw = read_volume(path)
    assert raw.array.dtype == np.uint8
    volume, segments = read_segmentation(path)
    np.testing.assert_array_equal(volume.array, labelmap.array)
    assert volume.geometry.matches(GEOMETRY, tol=1e-5)
    assert [(s.label_value, s.name) for s in segments] == [(1, "Segment_1")]
    assert segments[0].terminology is None


def test_multiple_segments_and_bool_labelmap(tmp_path: Path) -> None:
    array = np.zeros((6, 5, 4), dtype=np.int64)
    array[1:3, 1:3, 1:3] = 1
    array[4, 3, 2] = 300  # needs uint16
    segments = [
        SegmentInfo(1, "Left atrium", LA_COLOR, LEFT_ATRIUM),
        SegmentInfo(300, "Other", (0.0, 1.0, 0.0)),
    ]
    path = write_segmentation(Volume(array, GEOMETRY), tmp_path / "m.seg.nrrd", segments)
    volume, got = read_segmentation(path)
    np.testing.assert_array_equal(volume.array, array)
    assert volume.array.dtype == np.uint16
    assert got == segments
    mask = Volume(array == 1, GEOMETRY)
    path = write_segmentation(mask, tmp_path / "b.nii.gz", segments[:1])
    assert read_volume(path).array.dtype == np.uint8


def test_bad_extension_lists_supported(tmp_path: Path, sphere) -> None:
    labelmap, _ = sphere
    with pytest.raises(ValueError, match=r"\.seg\.nrrd.*\.nii\.gz"):
        write_segmentation(labelmap, tmp_path / "x.png", _la_segments())
    assert list(tmp_path.iterdir()) == []


def test_float_labelmap_with_fractions_rejected(tmp_path: Path) -> None:
    array = np.zeros((4, 4, 4), dtype=np.float32)
    array[1, 1, 1] = 0.5
    with pytest.raises(ValueError, match=r"whole numbers.*0\.5"):
        write_segmentation(Volume(array, GEOMETRY), tmp_path / "x.seg.nrrd", _la_segments())
    array[1, 1, 1] = 1.0  # whole-numbered floats are fine
    write_segmentation(Volume(array, GEOMETRY), tmp_path / "x.seg.nrrd", _la_segments())


def test_unexpected_label_value_rejected(tmp_path: Path) -> None:
    array = np.zeros((4, 4, 4), dtype=np.uint8)
    array[0, 0, 0], array[1, 1, 1] = 1, 7
    with pytest.raises(ValueError, match=r"values \[7\]"):
        write_segmentation(Volume(array, GEOMETRY), tmp_path / "x.seg.nrrd", _la_segments())
    assert list(tmp_path.iterdir()) == []


def test_2d_and_non_volume_rejected(tmp_path: Path) -> None:
    volume = Volume(np.zeros((4, 4, 4), np.uint8), GEOMETRY)
    volume.array = np.zeros((4, 4), np.uint8)  # Volume checks only at construction
    with pytest.raises(ValueError, match=r"3D.*\(4, 4\)"):
        write_segmentation(volume, tmp_path / "x.seg.nrrd", _la_segments())
    with pytest.raises(TypeError, match="Volume"):
        write_segmentation(np.zeros((4, 4, 4)), tmp_path / "x.seg.nrrd", _la_segments())


def test_segment_label_values_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        write_segmentation(
            Volume(np.zeros((2, 2, 2), np.uint8), GEOMETRY),
            "unused.seg.nrrd",
            [SegmentInfo(1, "a", (0, 0, 0)), SegmentInfo(1, "b", (0, 0, 0))],
        )


def test_failing_write_leaves_nothing(tmp_path: Path, sphere, monkeypatch) -> None:
    labelmap, _ = sphere

    def broken(filename: str, segmentation: dict, **kwargs: object) -> None:
        Path(filename).write_bytes(b"NRRD0004\npartial")
        raise OSError("disk full")

    monkeypatch.setattr(slicerio, "write_segmentation", broken)
    with pytest.raises(OSError, match="disk full"):
        write_segmentation(labelmap, tmp_path / "x.seg.nrrd", _la_segments())
    assert list(tmp_path.iterdir()) == []


def test_renamed_seg_nrrd_is_read_as_segmentation(tmp_path: Path, sphere) -> None:
    labelmap, _ = sphere
    path = write_segmentation(labelmap, tmp_path / "x.seg.nrrd", _la_segments())
    renamed = path.rename(tmp_path / "x.nrrd")
    _, segments = read_segmentation(renamed)
    assert segments[0].name == "Left atrium" and segments[0].terminology == LEFT_ATRIUM


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_segmentation(tmp_path / "none.seg.nrrd")


def test_write_scalar_volume_float32(tmp_path: Path) -> None:
    probs = Volume(np.linspace(0, 1, 60, dtype=np.float64).reshape(5, 4, 3), GEOMETRY)
    path = write_scalar_volume(probs, tmp_path / "p.nii.gz")
    back = read_volume(path)
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.array, probs.array, atol=1e-7)
    assert back.geometry.matches(GEOMETRY, tol=1e-5)


def test_supported_extensions() -> None:
    assert segmentation_io.SEG_NRRD_EXTENSION == ".seg.nrrd"
    assert segmentation_io.SUPPORTED_EXTENSIONS[0] == ".seg.nrrd"
    assert {".nii.gz", ".nrrd", ".mha"} <= set(segmentation_io.SUPPORTED_EXTENSIONS)
