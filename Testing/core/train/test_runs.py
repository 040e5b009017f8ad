"""Tests of fbanet.train.runs: how training data is read and normalized."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from fbanet.config import IntensityNormalization
from fbanet.data.manifest import spec_from_h5_list
from fbanet.train.runs import load_training_data


def _h5_cases(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        label = np.zeros((12, 10, 8), np.uint8)
        label[3:8, 3:7, 2:6] = 1
        image = rng.normal(size=label.shape) * 3.0 + 5.0 + 4.0 * label
        with h5py.File(folder / f"c{i}.h5", "w") as handle:
            handle["image"] = image.astype(np.float32)
            handle["label"] = label
    (folder / "list").write_text("".join(f"c{i}\n" for i in range(count)))
    return folder / "list"


@pytest.mark.parametrize("asked", ["zscore", "auto"])
def test_hdf5_cases_are_zscored_like_every_other_file(tmp_path: Path, asked: str) -> None:
    spec = spec_from_h5_list(tmp_path, _h5_cases(tmp_path, 3), labeled=2, validation=1)
    data = load_training_data(spec, normalization=asked, h5_spacing=(1.0, 1.0, 1.0))
    assert data.normalization is IntensityNormalization.ZSCORE
    for case in (*data.labeled, *data.validation):
        assert abs(float(case.image.mean())) < 1e-5 and abs(float(case.image.std()) - 1) < 1e-5


def test_as_stored_keeps_the_hdf5_intensities_for_the_paper(tmp_path: Path) -> None:
    spec = spec_from_h5_list(tmp_path, _h5_cases(tmp_path, 2), labeled=1, validation=1)
    data = load_training_data(spec, normalization="as-stored", h5_spacing=(1.0, 1.0, 1.0))
    assert data.normalization is IntensityNormalization.AS_STORED
    with h5py.File(tmp_path / "c0.h5") as handle:
        np.testing.assert_array_equal(data.labeled[0].image, handle["image"][:])


def test_a_fine_tune_inherits_what_the_user_left_unset() -> None:
    from fbanet.config import ModelConfig
    from fbanet.model.header import ModelMetadata
    from fbanet.train.presets import inherit_from_model

    start = ModelMetadata(ModelConfig(base_filters=8, patch_size=(64, 64, 48)), (1.25,) * 3)
    settings, spacing, notes = inherit_from_model({}, None, start)
    assert (settings["base_filters"], settings["patch_size"], spacing) == (
        8,
        [64, 64, 48],
        (1.25,) * 3,
    )
    assert notes == []
    _, _, notes = inherit_from_model({"patch_size": (64, 64, 48)}, [1.25] * 3, start)
    assert notes == []  # a tuple equals the stored list
    _, spacing, notes = inherit_from_model({"patch_size": (32, 32, 32)}, [2, 2, 2], start)
    assert spacing == (2.0, 2.0, 2.0)
    assert notes == [
        "patch_size (32, 32, 32) (the starting model's: [64, 64, 48])",
        "spacing [2, 2, 2] mm (the starting model's: [1.25, 1.25, 1.25])",
    ]
    assert inherit_from_model({}, None, ModelMetadata(ModelConfig()))[1] is None


def test_a_preset_changes_the_batch_with_the_mode_unless_the_user_set_it() -> None:
    from fbanet.train.presets import build_configs, preset_settings, with_mode_settings

    _, train = preset_settings("finetune")
    # Supervised (the preset's mode): batch 2, all labeled.
    config = build_configs({}, with_mode_settings("finetune", train, set()))[1]
    assert (config.batch_size, config.labeled_batch_size) == (2, 2)
    semi = {**train, "mode": "semi-supervised"}
    config = build_configs({}, with_mode_settings("finetune", semi, {"mode"}))[1]
    assert (config.batch_size, config.labeled_batch_size) == (4, 2)
    # Any spelling TrainConfig accepts ('_' for '-', capitals) is the same mode.
    for spelling in ("semi_supervised", "Semi-Supervised"):
        spelled = with_mode_settings("finetune", {**train, "mode": spelling}, {"mode"})
        assert (spelled["batch_size"], spelled["labeled_batch_size"]) == (4, 2), spelling
    config = build_configs({}, {**train, "mode": "SUPERVISED"})[1]
    assert (config.batch_size, config.labeled_batch_size) == (2, 2)
    # A batch the user gave is kept, and the labeled share takes its default.
    mine = {**semi, "batch_size": 6}
    config = build_configs({}, with_mode_settings("finetune", mine, {"mode", "batch_size"}))[1]
    assert (config.batch_size, config.labeled_batch_size) == (6, 2)
    assert with_mode_settings("la-cpu", semi, set()) == semi  # no per-mode settings
    with pytest.raises(ValueError, match="valid presets"):
        with_mode_settings("nope", train, set())
