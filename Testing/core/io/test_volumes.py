"""Tests of fbanet.io.volumes: formats, geometry round trips, rejections and atomic writes."""

from __future__ import annotations

import errno
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

import fbanet.io.atomic
from fbanet.io.atomic import check_output_folder, staged_writes
from fbanet.io.integrity import check_complete
from fbanet.io.volumes import (
    Geometry,
    Volume,
    atomic_write,
    is_hdf5,
    read_volume,
    split_extension,
    write_volume,
)


def _rotation_z(degrees: float) -> tuple[float, ...]:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


GEOMETRY = Geometry((0.7, 0.9, 2.5), (-12.5, 40.25, 3.0), _rotation_z(30.0))


def _volume(dtype: type = np.int16) -> Volume:
    # Distinct sizes per axis and a ramp pattern catch any axis-order mistake.
    array = np.arange(5 * 6 * 7).reshape(5, 6, 7).astype(dtype)
    return Volume(array, GEOMETRY)


@pytest.mark.parametrize("name", ["vol.nrrd", "vol.nii.gz", "vol.nii", "vol.mha", "a.seg.nrrd"])
def test_round_trip_preserves_array_and_geometry(tmp_path: Path, name: str) -> None:
    volume = _volume()
    write_volume(volume, tmp_path / name)
    back = read_volume(tmp_path / name)
    assert back.array.shape == (5, 6, 7)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, volume.array)
    # NIfTI stores float32 and a quaternion: equal to ~1e-6, not bit-for-bit.
    assert back.geometry.matches(GEOMETRY, tol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_axis_order_matches_sitk_index(tmp_path: Path) -> None:
    volume = _volume(np.float32)
    image = volume.to_sitk()
    assert image.GetSize() == (5, 6, 7)
    assert image.GetPixel(4, 1, 2) == volume.array[4, 1, 2] == 4 * 42 + 1 * 7 + 2
    assert Volume.from_sitk(image).geometry == GEOMETRY


def test_bool_array_written_as_uint8(tmp_path: Path) -> None:
    volume = Volume(np.eye(4, dtype=bool)[:, :, None].repeat(3, axis=2), Geometry())
    back = read_volume(write_volume(volume, tmp_path / "mask.nrrd"))
    assert back.array.dtype == np.uint8
    assert int(back.array.sum()) == 12


def test_geometry_matches_tolerance() -> None:
    shifted = Geometry(GEOMETRY.spacing, (-12.5, 40.25, 3.00005), GEOMETRY.direction)
    assert GEOMETRY.matches(shifted)
    assert not GEOMETRY.matches(shifted, tol=1e-6)
    assert not GEOMETRY.matches(Geometry((0.7, 0.9, 2.0)))


def test_geometry_validates() -> None:
    with pytest.raises(ValueError, match="spacing must be positive"):
        Geometry((1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="direction must be 9"):
        Geometry(direction=(1.0, 0.0, 0.0))


def test_h5_read_default_and_stored_geometry(tmp_path: Path) -> None:
    path = tmp_path / "case.h5"
    image = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    with h5py.File(path, "w") as handle:
        handle["image"] = image
        label = handle.create_dataset("label", data=(image > 0).astype(np.uint8))
        label.attrs["spacing"] = [0.5, 0.5, 2.0]
        label.attrs["origin"] = [1.0, 2.0, 3.0]
    vol = read_volume(path, h5_spacing=(0.625, 0.625, 0.625))
    np.testing.assert_array_equal(vol.array, image)
    assert vol.array.dtype == np.float32
    assert vol.geometry == Geometry((0.625, 0.625, 0.625))
    lab = read_volume(path, dataset="label")
    assert lab.geometry == Geometry((0.5, 0.5, 2.0), (1.0, 2.0, 3.0))
    assert int(lab.array.sum()) == int((image > 0).sum())


def test_h5_missing_dataset_lists_present(tmp_path: Path) -> None:
    path = tmp_path / "case.hdf5"
    with h5py.File(path, "w") as handle:
        handle["img"] = np.zeros((2, 2, 2))
        handle["seg"] = np.zeros((2, 2, 2))
    with pytest.raises(ValueError, match=r"no dataset 'image'.*\['img', 'seg'\]"):
        read_volume(path)


def test_h5_2d_dataset_rejected(tmp_path: Path) -> None:
    path = tmp_path / "flat.h5"
    with h5py.File(path, "w") as handle:
        handle["image"] = np.zeros((4, 5))
    with pytest.raises(ValueError, match=r"shape \(4, 5\).*3D"):
        read_volume(path)


def test_2d_image_rejected(tmp_path: Path) -> None:
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((6, 5), np.uint8)), str(path))
    with pytest.raises(ValueError, match=r"slice\.nrrd is a 2D image \(size \(5, 6\)\)"):
        read_volume(path)


def test_4d_image_rejected(tmp_path: Path) -> None:
    path = tmp_path / "series.nii.gz"
    frames = [sitk.Image([5, 4, 3], sitk.sitkFloat32) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    with pytest.raises(ValueError, match=r"4D image \(size \(5, 4, 3, 2\)\).*extract one frame"):
        read_volume(path)


def test_multicomponent_image_rejected(tmp_path: Path) -> None:
    path = tmp_path / "rgb.mha"
    rgb = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(path))
    with pytest.raises(
        ValueError, match=r"3 components per voxel \(size \(5, 4, 3\)\).*one channel"
    ):
        read_volume(path)


def test_corrupt_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "broken.nrrd"
    path.write_bytes(np.random.default_rng(1).bytes(2048))
    with pytest.raises(ValueError, match=r"cannot read .*broken\.nrrd"):
        read_volume(path)
    bad_h5 = tmp_path / "broken.h5"
    bad_h5.write_bytes(b"not hdf5 at all")
    with pytest.raises(ValueError, match=r"cannot read .*broken\.h5 as HDF5"):
        read_volume(bad_h5)


def test_unsupported_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match=r"unsupported extension '\.png'.*\.nrrd"):
        read_volume(path)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.nrrd"):
        read_volume(tmp_path / "nowhere.nrrd")
    with pytest.raises(ValueError, match="without a DICOM series"):
        read_volume(tmp_path)
    with pytest.raises(ValueError, match=r"'\.mhd' is not supported for writing"):
        write_volume(_volume(), tmp_path / "out.mhd")


def test_dicom_series_folder(tmp_path: Path) -> None:
    array = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)  # (X, Y, Z)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(3):
        image = sitk.GetImageFromArray(np.ascontiguousarray(array[:, :, z].T))
        image.SetSpacing((0.5, 0.5))
        tags = {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.1.2.{z + 1}",
            "0020|0013": str(z + 1),
            "0020|0032": f"0\\0\\{2.0 * z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.5\\0.5",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(tmp_path / f"slice{z}.dcm"))
        writer.Execute(image)
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.geometry.spacing, (0.5, 0.5, 2.0))


def test_split_extension() -> None:
    assert split_extension("/a/case.nii.gz") == ("case", ".nii.gz")
    assert split_extension("x.Seg.NRRD") == ("x.Seg", ".nrrd")
    assert split_extension("model.pt") == ("model", ".pt")
    assert is_hdf5("c.H5") and not is_hdf5("c.nrrd")


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "state.seg.nrrd"
    target.write_text("old")
    seen: list[Path] = []

    def failing(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.seg.nrrd"]
    assert seen[0].parent == tmp_path
    assert seen[0].name.startswith(".state.tmp-") and seen[0].name.endswith(".seg.nrrd")


def test_atomic_write_replaces_and_cleans(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    target.write_text("old")
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "x.pt", lambda tmp: tmp.write_text("x"))


def test_write_volume_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "vol.nrrd"
    write_volume(_volume(), target)
    before = target.read_bytes()
    with pytest.raises(TypeError, match="dtype complex128"):
        write_volume(Volume(np.zeros((2, 2, 2), complex), GEOMETRY), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["vol.nrrd"]


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii"])
def test_truncated_nifti_is_refused(tmp_path: Path, name: str) -> None:
    # SimpleITK reads the missing half of a cut-short NIfTI as zeros and reports nothing.
    path = write_volume(_volume(np.float32), tmp_path / name)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated"):
        read_volume(path)


def test_complete_nifti_passes_the_check(tmp_path: Path) -> None:
    for name in ("a.nii", "a.nii.gz"):
        path = write_volume(_volume(np.float32), tmp_path / name)
        check_complete(path)
        assert read_volume(path).array.shape == _volume().array.shape


def test_staged_writes_appear_together_or_not_at_all(tmp_path: Path) -> None:
    first, second = tmp_path / "a.seg.nrrd", tmp_path / "a-probability.nrrd"
    with staged_writes():
        atomic_write(first, lambda tmp: tmp.write_text("seg"))
        assert not first.exists()  # held back until the block succeeds
        atomic_write(second, lambda tmp: tmp.write_text("prob"))
    assert first.read_text() == "seg" and second.read_text() == "prob"

    def full(tmp: Path) -> None:
        tmp.write_text("part")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    with (
        pytest.raises(OSError, match=r"no space left on the disk holding") as info,
        staged_writes(),
    ):
        atomic_write(first, lambda tmp: tmp.write_text("new seg"))
        atomic_write(second, full)
    assert info.value.errno == errno.ENOSPC and ".tmp-" not in str(info.value)
    assert first.read_text() == "seg" and second.read_text() == "prob"  # old files kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-probability.nrrd", "a.seg.nrrd"]


def test_silent_nifti_disk_full_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ITK's NIfTI writer returns normally when the disk fills up, leaving a cut-short file.
    real_write = sitk.WriteImage

    def short_write(image: sitk.Image, name: str, **options: bool) -> None:
        real_write(image, name, **options)
        data = Path(name).read_bytes()
        Path(name).write_bytes(data[: len(data) // 3])

    monkeypatch.setattr(sitk, "WriteImage", short_write)
    monkeypatch.setattr(
        fbanet.io.atomic.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10, 10, 0)
    )
    for name in ("out.nii", "out.nii.gz"):
        with pytest.raises(OSError, match=rf"no space left on the disk holding .*{name}"):
            write_volume(_volume(np.float32), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_itk_write_errors_name_the_path_not_itk_internals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(image: sitk.Image, name: str, **options: bool) -> None:
        Path(name).write_bytes(b"x")
        raise RuntimeError(
            "Exception thrown in SimpleITK ImageFileWriter_Execute: /src/...\n"
            "[nrrd] _nrrdEncodingRaw_write: fwrite wrote only 10 things"
        )

    monkeypatch.setattr(sitk, "WriteImage", failing)
    monkeypatch.setattr(
        fbanet.io.atomic.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10, 10, 0)
    )
    with pytest.raises(OSError, match=r"^\[Errno 28\] no space left on the disk holding"):
        write_volume(_volume(), tmp_path / "p.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_output_under_a_file_says_the_parent_is_not_a_folder(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"afile is a file, not a folder"):
        write_volume(_volume(), afile / "out.nrrd")
    with pytest.raises(NotADirectoryError, match=r"afile is a file, not a folder"):
        check_output_folder(afile / "deeper" / "out.nrrd")


def test_permission_error_names_the_users_path(tmp_path: Path) -> None:
    # (Run as root, a read-only folder does not refuse writes: the writer's error is simulated.)
    target = tmp_path / "seg.nrrd"

    def refused(tmp: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    with pytest.raises(PermissionError) as info:
        atomic_write(target, refused)
    assert str(target) in str(info.value) and ".tmp-" not in str(info.value)
