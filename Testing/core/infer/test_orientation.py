"""The network sees every scan in the training's axis order, whatever order it is stored in."""

from __future__ import annotations

import numpy as np
import pytest
from paths import SHARED_LA

from fbanet.data.preprocess import IndexBox
from fbanet.infer.config import InferenceConfig
from fbanet.infer.files import read_scan
from fbanet.infer.orientation import AxisOrder, training_axis_order
from fbanet.infer.segmenter import Segmenter
from fbanet.io.volumes import Geometry, Volume
from fbanet.model.bundled import default_model_path

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

# The last 8 cases of train.list: the validation split the default model never saw.
VALIDATION_CASE = "TDDI6L3Y0L9VVFP9MNFS"
# Stored axes of a sagittal scan: anterior-posterior, superior-inferior, then left-right
# (the slices), as a permutation of the axial axes (X, Y, Z).
SAGITTAL = (1, 2, 0)
CORONAL = (0, 2, 1)


def stored_as(volume: Volume, axes: tuple[int, int, int]) -> Volume:
    """The same scan stored with its array axes in the order ``axes`` (exact, no resampling)."""
    g = volume.geometry
    columns = np.asarray(g.direction).reshape(3, 3)[:, list(axes)]
    geometry = Geometry(
        tuple(g.spacing[a] for a in axes), g.origin, tuple(columns.ravel().tolist())
    )
    return Volume(np.ascontiguousarray(np.transpose(volume.array, axes)), geometry)


def test_the_training_order_undoes_a_sagittal_or_coronal_storage() -> None:
    rng = np.random.default_rng(0)
    axial = Volume(rng.normal(size=(5, 6, 7)).astype(np.float32), Geometry((0.5, 0.6, 2.0)))
    assert training_axis_order(axial.geometry).is_identity
    for axes in (SAGITTAL, CORONAL):
        stored = stored_as(axial, axes)
        order = training_axis_order(stored.geometry)
        back = order.volume(stored)
        np.testing.assert_array_equal(back.array, axial.array)
        assert back.geometry.matches(axial.geometry)
        # Results come back in the stored order; boxes go the other way.
        channels = np.stack([back.array, -back.array])
        np.testing.assert_array_equal(order.restore(channels)[1], -stored.array)
        box = IndexBox((1, 2, 3), (4, 5, 6))
        assert order.box(box) == IndexBox(
            tuple(box.start[a] for a in order.order), tuple(box.stop[a] for a in order.order)
        )


def test_an_oblique_scan_goes_to_its_nearest_patient_axes() -> None:
    c, s = np.cos(0.5), np.sin(0.5)  # 29 degrees about the patient's Z axis
    turned = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    sagittal_turned = turned[:, list(SAGITTAL)]
    order = training_axis_order(Geometry(direction=tuple(sagittal_turned.ravel())))
    assert order == AxisOrder((2, 0, 1))


def test_a_scan_stored_sagittally_gets_the_labelmap_of_its_axial_storage() -> None:
    image = SHARED_LA / "train" / f"{VALIDATION_CASE}.h5"
    if not image.exists():
        pytest.skip("../shared/la is not available")
    path = default_model_path()
    assert path is not None
    volume, normalized = read_scan(image, (0.625, 0.625, 0.625))
    segmenter = Segmenter.from_file(path, InferenceConfig(device="cpu", precision="fp32"))
    axial = segmenter.segment(volume, normalized=normalized).labelmap.array == 1
    stored = stored_as(volume, SAGITTAL)
    sagittal = segmenter.segment(stored, normalized=normalized).labelmap.array == 1
    back = np.transpose(sagittal, np.argsort(SAGITTAL))
    dice = 2 * (axial & back).sum() / (axial.sum() + back.sum())
    # Measured 1.0. Fed as stored, the network saw sagittal planes where it learnt axial
    # ones: Dice 0.0 (132051 voxels axial, 75283 elsewhere sagittal).
    assert axial.sum() > 10_000 and dice >= 0.99, dice
