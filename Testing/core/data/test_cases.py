"""Tests of fbanet.data.cases: normalization, case validation, label alignment, loading."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from paths import SHARED_LA

from fbanet.config import IntensityNormalization
from fbanet.data.cases import load_case, load_cases
from fbanet.data.manifest import CaseRef, spec_from_h5_list
from fbanet.io.volumes import Geometry, Volume, write_volume

LA_DIR = SHARED_LA
ZSCORE = IntensityNormalization.ZSCORE


def _image(shape: tuple[int, int, int] = (8, 10, 6), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(50.0, 10.0, size=shape).astype(np.float32)


def _box_label(shape: tuple[int, int, int], box: tuple[slice, ...]) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[box] = 1
    return label


def _write_pair(
    tmp_path: Path, image: np.ndarray, label: np.ndarray, label_geom: Geometry | None = None
) -> tuple[Path, Path]:
    geom = Geometry((1.0, 1.0, 1.0), (10.0, -5.0, 2.0))
    image_path = write_volume(Volume(image, geom), tmp_path / "img.nrrd")
    label_path = write_volume(Volume(label, label_geom or geom), tmp_path / "img-label.nii.gz")
    return image_path, label_path


def test_load_case_zscore_and_as_stored(tmp_path: Path) -> None:
    image = _image()
    label = _box_label(image.shape, (slice(2, 5), slice(3, 7), slice(1, 4)))
    image_path, label_path = _write_pair(tmp_path, image, label)
    case = load_case(image_path, label_path, normalization="zscore")
    assert case.name == "img"
    assert case.image.dtype == np.float32 and case.label is not None
    assert case.label.dtype == np.uint8
    np.testing.assert_allclose(case.image.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(case.image.std(), 1.0, atol=1e-5)
    np.testing.assert_array_equal(case.label, label)
    assert case.spacing == (1.0, 1.0, 1.0)
    stored = load_case(image_path, normalization=IntensityNormalization.AS_STORED, name="x")
    np.testing.assert_array_equal(stored.image, image)
    assert stored.label is None and stored.name == "x"


def test_label_resampled_from_coarser_grid(tmp_path: Path) -> None:
    image = _image((12, 12, 8))
    # Label grid: 2 mm voxels starting half a fine voxel before the image origin, so coarse
    # voxel i covers fine voxels 2i and 2i+1 exactly.
    coarse = _box_label((6, 6, 4), (slice(1, 3), slice(2, 4), slice(1, 2)))
    label_geom = Geometry((2.0, 2.0, 2.0), (10.5, -4.5, 2.5))
    image_path, label_path = _write_pair(tmp_path, image, coarse, label_geom)
    case = load_case(image_path, label_path, normalization=ZSCORE)
    expected = _box_label((12, 12, 8), (slice(2, 6), slice(4, 8), slice(2, 4)))
    assert case.label is not None
    np.testing.assert_array_equal(case.label, expected)
    assert int(case.label.sum()) == 4 * 4 * 2


def test_non_overlapping_label_rejected(tmp_path: Path) -> None:
    image = _image()
    label = _box_label(image.shape, (slice(1, 3),) * 3)
    far = Geometry((1.0, 1.0, 1.0), (500.0, 500.0, 500.0))
    image_path, label_path = _write_pair(tmp_path, image, label, far)
    with pytest.raises(
        ValueError, match=r"img\.nrrd and label .*img-label\.nii\.gz do not overlap"
    ):
        load_case(image_path, label_path, normalization=ZSCORE)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda im, lb: im.__setitem__((0, 0, 0), np.nan), r"img\.nrrd has 1 NaN or infinite"),
        (lambda im, lb: im.__setitem__((1, 1, 1), np.inf), r"img\.nrrd has 1 NaN or infinite"),
        (lambda im, lb: lb.fill(0), r"img-label\.nii\.gz has no foreground voxel"),
        (lambda im, lb: lb.__setitem__((0, 0, 0), 3), r"values \[3\] outside 0\.\.1"),
    ],
)
def test_bad_case_rejected(tmp_path: Path, mutate, message: str) -> None:
    image = _image()
    label = _box_label(image.shape, (slice(2, 4),) * 3)
    mutate(image, label)
    image_path, label_path = _write_pair(tmp_path, image, label)
    with pytest.raises(ValueError, match=message):
        load_case(image_path, label_path, normalization=ZSCORE)


LA = (0.625, 0.625, 0.625)


def test_label_shape_mismatch_in_h5(tmp_path: Path) -> None:
    path = tmp_path / "case.h5"
    with h5py.File(path, "w") as handle:
        handle["image"] = _image()
    label_path = tmp_path / "lab.h5"
    with h5py.File(label_path, "w") as handle:
        handle["label"] = np.ones((8, 10, 5), np.uint8)
    with pytest.raises(ValueError, match=r"different shapes \(\(8, 10, 6\) vs \(8, 10, 5\)\)"):
        load_case(path, label_path, normalization=ZSCORE, h5_spacing=LA)


def test_h5_case_and_require_label(tmp_path: Path) -> None:
    path = tmp_path / "case01.h5"
    image = _image()
    with h5py.File(path, "w") as handle:
        handle["image"] = image
        handle["label"] = _box_label(image.shape, (slice(0, 2),) * 3)
    case = load_case(path, normalization="as-stored", h5_spacing=(0.625, 0.625, 0.625))
    assert case.name == "case01" and case.spacing == (0.625, 0.625, 0.625)
    assert case.label is not None and int(case.label.sum()) == 8
    unlabeled = load_case(path, normalization=ZSCORE, read_label=False, h5_spacing=LA)
    assert unlabeled.label is None
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as handle:
        handle["image"] = image
    with pytest.raises(ValueError, match=r"no label for image .*bare\.h5"):
        load_case(bare, normalization=ZSCORE, require_label=True, h5_spacing=LA)


def test_h5_spacing_is_never_assumed(tmp_path: Path) -> None:
    # HDF5 stores no geometry: without --h5-spacing (or a 'spacing' attribute) the LA data
    # was silently taken as 1 mm and scored far worse; now it is refused.
    path = tmp_path / "case.h5"
    with h5py.File(path, "w") as handle:
        handle["image"] = _image()
    with pytest.raises(ValueError, match=r"stores no voxel spacing.*--h5-spacing X Y Z"):
        load_case(path, normalization=ZSCORE)
    with h5py.File(path, "a") as handle:
        handle.attrs["spacing"] = (0.5, 0.5, 2.0)  # a file-level attribute is used
    assert load_case(path, normalization=ZSCORE).spacing == (0.5, 0.5, 2.0)


def test_load_cases_order(tmp_path: Path) -> None:
    refs = []
    for i in range(2):
        path = tmp_path / f"c{i}.h5"
        with h5py.File(path, "w") as handle:
            handle["image"] = _image(seed=i)
            handle["label"] = _box_label((8, 10, 6), (slice(i, i + 2),) * 3)
        refs.append(CaseRef(path, None, f"case{i}"))
    cases = load_cases(refs, normalization=ZSCORE, require_label=True, h5_spacing=LA)
    assert [c.name for c in cases] == ["case0", "case1"]
    assert cases[1].label is not None and cases[1].label[1, 1, 1] == 1


@pytest.mark.skipif(not (LA_DIR / "train.list").is_file(), reason="shared LA data absent")
def test_load_a_real_la_case() -> None:
    spec = spec_from_h5_list(LA_DIR / "train", LA_DIR / "train.list", labeled=8, validation=8)
    case = load_case(
        spec.labeled[0].image, normalization="as-stored", require_label=True, h5_spacing=LA
    )
    assert case.image.ndim == 3 and case.label is not None and case.label.max() == 1
