"""Scene -> dataset export of the training panel, with the real MRML library (slicer-core)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import training_support as support
from training_support import dataset, logic, settings, slicer, synthetic, writer

from fbanet.data.cases import load_case
from fbanet.data.manifest import read_manifest
from fbanet.io.volumes import read_volume
from fbanet.train.runs import load_training_data

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@pytest.fixture
def scene() -> Any:
    return support.newScene()


@pytest.fixture
def built(scene: Any) -> synthetic.SyntheticScene:
    return synthetic.buildSyntheticScene(scene)


def _examples(built: synthetic.SyntheticScene) -> list[dataset.LabeledExample]:
    return [dataset.LabeledExample(v.GetID(), s.GetID(), i) for v, s, i in built.labeled]


def _slicerRasterisation(segmentation: Any, segment_id: str, volume: Any) -> np.ndarray:
    """The segment's binary labelmap resampled onto the volume grid by Slicer (K, J, I)."""
    from vtk.util import numpy_support

    source = slicer.vtkOrientedImageData()
    assert segmentation.GetBinaryLabelmapRepresentation(segment_id, source)
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(volume.GetImageData().GetExtent())
    matrix, _ = synthetic.volumeGeometry(volume)
    reference.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(matrix))
    output = slicer.vtkOrientedImageData()
    resample = slicer.vtkOrientedImageDataResample
    assert resample.ResampleOrientedImageToReferenceOrientedImage(source, reference, output)
    dimensions = output.GetDimensions()
    values = numpy_support.vtk_to_numpy(output.GetPointData().GetScalars())
    return (values.reshape(dimensions[::-1]) > 0).astype(np.uint8)


def test_export_writes_a_dataset_that_fbanet_train_accepts(
    scene: Any, built: synthetic.SyntheticScene, tmp_path: Path
) -> None:
    before, arrays = support.nodeIds(scene), support.volumeArrays(scene)
    unlabeled = [v.GetID() for v in built.unlabeled]
    written = writer.exportDataset(scene, _examples(built), unlabeled, tmp_path, validationCases=1)
    spec = read_manifest(written.manifest)
    assert [len(spec.labeled), len(spec.unlabeled), len(spec.validation)] == [1, 2, 1]
    data = load_training_data(spec)
    assert [c.name for c in data.validation] == ["02_Labeled2"]
    for case in (*data.labeled, *data.validation):
        assert set(np.unique(case.label)) == {0, 1}
    # The scene is exactly as it was: no node added or left behind, no voxel changed.
    assert support.nodeIds(scene) == before
    after = support.volumeArrays(scene)
    assert all(np.array_equal(arrays[k], after[k]) for k in arrays)


def test_label_maps_land_on_their_volumes_voxel_for_voxel(
    scene: Any, built: synthetic.SyntheticScene, tmp_path: Path
) -> None:
    written = writer.exportDataset(scene, _examples(built), [], tmp_path)
    for index, (volume, segmentation, segmentId) in enumerate(built.labeled):
        case = written.labeled[index]
        exported = dataset.exportLabelArray(scene, _examples(built)[index])
        # 1. Slicer's own rasterisation of the segment on the volume grid, voxel for voxel.
        assert np.array_equal(exported, _slicerRasterisation(segmentation, segmentId, volume))
        # 2. The analytic ellipsoid on the volume grid: exact where it was drawn on that grid.
        matrix, shape = synthetic.volumeGeometry(volume)
        grid = synthetic.GridGeometry(shape)
        points = grid.rasPoints() @ matrix[:3, :3].T + matrix[:3, 3]
        truth = (((points - built.centers[volume.GetID()]) / built.radii) ** 2).sum(-1) <= 1
        if index == 0:
            assert np.array_equal(exported, truth)
        else:  # drawn on a finer grid, then resampled: nearly the same voxels
            overlap = 2 * (exported.astype(bool) & truth).sum() / (exported.sum() + truth.sum())
            assert overlap > 0.85
        # 3. The files fbanet reads: the same voxels and the volume's own geometry (LPS).
        loaded = load_case(case.image, case.label, normalization="as-stored")
        assert np.array_equal(loaded.label, exported.transpose(2, 1, 0))
        voxels = support.volumeArrays(scene)[volume.GetID()].reshape(shape[::-1])
        assert np.array_equal(loaded.image, voxels.transpose(2, 1, 0).astype(np.float32))
        geometry = read_volume(case.label).geometry
        lps = RAS_TO_LPS @ matrix[:3, :3]
        assert np.allclose(geometry.spacing, np.linalg.norm(lps, axis=0), atol=1e-4)
        assert np.allclose(geometry.origin, RAS_TO_LPS @ matrix[:3, 3], atol=1e-4)
        assert np.allclose(
            np.reshape(geometry.direction, (3, 3)), lps / geometry.spacing, atol=1e-4
        )
        # 4. The label's physical centre is the ellipsoid's centre.
        ijk = np.argwhere(loaded.label).mean(axis=0)
        centre = (matrix @ np.append(ijk, 1.0))[:3]
        assert np.allclose(centre, built.centers[volume.GetID()], atol=1.0)


def test_unlabeled_volumes_exclude_labeled_ones(
    scene: Any, built: synthetic.SyntheticScene, tmp_path: Path
) -> None:
    panel = logic.FBANetTrainingLogic(scene)
    for volume, segmentation, segmentId in built.labeled:
        panel.addLabeledExample(volume, segmentation, segmentId)
    assert panel.takeUnusedVolumes() == [v.GetID() for v in built.unlabeled]
    everything = [v.GetID() for v in dataset.scalarVolumeNodes(scene)]
    written = writer.exportDataset(scene, panel.labeledExamples, everything, tmp_path)
    assert [c.volumeNodeId for c in written.unlabeled] == [v.GetID() for v in built.unlabeled]
    with pytest.raises(dataset.InputError, match="already a labeled example"):
        panel.addLabeledExample(*built.labeled[0])


def test_no_labeled_example_is_refused(scene: Any, built: synthetic.SyntheticScene) -> None:
    panel = logic.FBANetTrainingLogic(scene)
    panel.takeUnusedVolumes()
    assert any("No labeled example" in p for p in panel.checkInputs())
    with pytest.raises(dataset.InputError, match="No labeled example"):
        panel.startTraining()
    assert panel.run is None


def test_an_empty_segment_is_refused_with_its_name(
    scene: Any, built: synthetic.SyntheticScene
) -> None:
    volume = built.labeled[0][0]
    empty, segmentId = synthetic.addSegmentation(
        scene, "Unpainted", synthetic.LABELED_GEOMETRIES[0], None, None
    )
    before = support.nodeIds(scene)
    problems = dataset.checkLabeledExamples(
        scene, [dataset.LabeledExample(volume.GetID(), empty.GetID(), segmentId)]
    )
    assert len(problems) == 1 and "segment 'Left atrium' is empty" in problems[0]
    assert "Segment Editor" in problems[0]
    assert support.nodeIds(scene) == before


def test_a_segmentation_that_misses_its_volume_is_refused(
    scene: Any, built: synthetic.SyntheticScene
) -> None:
    volume = built.labeled[0][0]
    far = synthetic.GridGeometry((20, 20, 20), origin=(400.0, 400.0, 400.0))
    elsewhere, segmentId = synthetic.addSegmentation(
        scene, "Elsewhere", far, (410.0, 410.0, 410.0), (5, 5, 5)
    )
    example = dataset.LabeledExample(volume.GetID(), elsewhere.GetID(), segmentId)
    before = support.nodeIds(scene)
    problems = dataset.checkLabeledExamples(scene, [example])
    assert len(problems) == 1 and "does not overlap volume 'Labeled1'" in problems[0]
    assert support.nodeIds(scene) == before
    scene.RemoveNode(elsewhere)
    assert "no longer in the scene" in dataset.checkLabeledExamples(scene, [example])[0]


def test_settings_problems_are_reported(
    scene: Any, built: synthetic.SyntheticScene, tmp_path: Path
) -> None:
    panel = logic.FBANetTrainingLogic(scene)
    panel.addLabeledExample(*built.labeled[0])
    panel.settings = settings.TrainingSettings(
        patchSize=(100, 96, 80), startFrom=settings.START_SCRATCH, validationCases=1,
        modelName="../escape", modelsFolder=str(tmp_path),
    )  # fmt: skip
    problems = "\n".join(panel.checkInputs())
    for expected in ("multiple of 16", "No unlabeled volume", "leaves none for training",
                     "Model name"):  # fmt: skip
        assert expected in problems
    # The fine-tune preset trains supervised: it needs no unlabeled volume.
    panel.settings = settings.TrainingSettings(modelsFolder=str(tmp_path))
    assert not any("unlabeled" in p for p in panel.checkInputs())
    panel.settings = settings.TrainingSettings(
        startFrom=settings.START_FILE, initModelPath=str(tmp_path / "none")
    )
    assert any("model file to start from" in p for p in panel.checkInputs())
    (tmp_path / "foreign.safetensors").write_bytes(b"not a model")
    panel.settings.initModelPath = str(tmp_path / "foreign.safetensors")
    assert any("Cannot start from this model file" in p for p in panel.checkInputs())
    (tmp_path / "Taken.safetensors").write_bytes(b"x")
    panel.settings = settings.TrainingSettings(
        modelName="Taken", modelsFolder=str(tmp_path), startFrom="scratch"
    )
    assert any("already exists" in p for p in panel.checkInputs())


def test_chart_nodes_follow_the_events(scene: Any) -> None:
    from FBANetTrainingLib.charts import TrainingChart

    chart = TrainingChart(scene)
    assert not chart.addEvents([{"event": "finished", "iteration": 0}]) and chart.nodes() == []
    losses = {"loss": 1.0, "dice_loss": 0.5, "consistency_loss": 0.2, "contrastive_loss": 0.3}
    validation = {"event": "validation", "iteration": 1, "dice": 0.4, "best_dice": 0.4}
    chart.addEvents([{"event": "iteration", "iteration": 1, **losses}, validation])
    chart.addEvents([{"event": "iteration", "iteration": 2, **losses}])
    assert chart.rows() == [[1, 1.0, 0.5, 0.2, 0.3], [2, 1.0, 0.5, 0.2, 0.3]]
    assert chart.rows("dice") == [[1, 0.4]]
    assert chart.chartNode.GetNumberOfPlotSeriesNodes() == 5
    assert all(scene.IsNodePresent(n) for n in chart.nodes())
    chart.clear()
    assert chart.rows() == [] and chart.rows("dice") == []


def test_starting_from_a_model_file_adopts_its_architecture_and_spacing(
    scene: Any, built: synthetic.SyntheticScene, tmp_path: Path
) -> None:
    import torch

    from fbanet.config import ModelConfig
    from fbanet.model.files import ModelMetadata, save_model_file
    from fbanet.model.network import FBANet

    torch.manual_seed(0)
    config = ModelConfig(base_filters=8, patch_size=(32, 32, 32), projection_dim=8)
    model = tmp_path / "start.safetensors"
    save_model_file(
        model, FBANet(config, with_contrast=False), ModelMetadata(config, (1.0, 1.0, 2.0))
    )
    panel = logic.FBANetTrainingLogic(scene)
    panel.settings = settings.TrainingSettings(
        startFrom=settings.START_FILE, initModelPath=str(model),
        settingsChoice=settings.SettingsChoice.CUSTOM,  # (fine-tune: the preset's flags)
    )  # fmt: skip
    arguments = panel.trainingArguments(tmp_path / "manifest.json")
    text = " ".join(arguments)
    assert f"--init-model {model}" in text and "--base-filters 8" in text
    assert "--spacing 1.0 1.0 2.0" in text and "--patch-size 112 112 80" in text
    panel.settings.startFrom = settings.START_SCRATCH
    assert "--init-model" not in panel.trainingArguments("m.json")
