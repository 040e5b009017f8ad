"""FBANet Segmentation jobs: regions of interest, transforms, cancelling, errors, models."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
import vtk  # noqa: E402
from FBANetSegmentationLib import environment, logic, models, testing  # noqa: E402
from FBANetSegmentationLib.job import (  # noqa: E402
    SegmentationError,
    SegmentationJob,
    SegmentationOptions,
    segmentArguments,
)
from test_slicer_segmentation_logic import add_volume, segment_world_points  # noqa: E402

from fbanet.cli import environment as workers  # noqa: E402
from fbanet.protocol import JobState  # noqa: E402


def _rigid(degrees: float, translation: tuple[float, float, float]) -> Any:
    transform = vtk.vtkTransform()
    transform.Translate(*translation)
    transform.RotateWXYZ(degrees, 0.3, 1.0, 0.2)
    return transform.GetMatrix()


def _to_world(transform_node: Any) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToParent(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def test_roi_becomes_the_voxel_box_that_holds_it(mrml_scene: Any) -> None:
    volume = add_volume(mrml_scene, testing.syntheticCase(), np.diag([2.0, 1.0, 4.0, 1.0]), "v")
    roi = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(10.0, 20.0, 40.0)
    roi.SetSize(4.0, 6.0, 8.0)  # R 8..12, A 17..23, S 36..44 mm
    assert logic.roiVoxelBox(roi, volume) == (4, 17, 9, 7, 24, 12)
    shift = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, -6.0)  # the volume moved 6 mm to the left: the ROI is 3 voxels on
    shift.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(shift.GetID())
    assert logic.roiVoxelBox(roi, volume) == (7, 17, 9, 10, 24, 12)
    roi.SetCenter(1000.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="does not overlap"):
        logic.roiVoxelBox(roi, volume)


def test_roi_limits_the_segmentation_of_a_transformed_volume(
    mrml_scene: Any, threshold_model: Path, tmp_path: Path
) -> None:
    case = testing.syntheticCase()
    ijk_to_ras = testing.obliqueIjkToRas()
    volume = add_volume(mrml_scene, case, ijk_to_ras, "moved")
    parent = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    parent.SetMatrixTransformToParent(_rigid(30.0, (15.0, -8.0, 4.0)))
    volume.SetAndObserveTransformNodeID(parent.GetID())
    # An 8 mm world-aligned cube around a point on the ellipsoid's low-I side.
    to_world = _to_world(parent)
    center_ijk = np.array([24.0 - 7.0, 20.0, 16.0, 1.0])
    center = (center_ijk @ ijk_to_ras.T @ to_world.T)[:3]
    low, high = center - 4.0, center + 4.0
    roi = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    roi.SetCenter(*center)
    roi.SetSize(8.0, 8.0, 8.0)

    job = SegmentationJob(volume, SegmentationOptions(threshold_model, device="cpu"), roi,
                          workDir=tmp_path)  # fmt: skip
    job.start()
    result = job.waitForResult(timeout=300)

    segmentation = result.segmentationNode
    assert segmentation.GetTransformNodeID() == parent.GetID()
    # The worker segments the box of voxels that holds the ROI's corners (in the volume's
    # own IJK space, where the ROI is oblique): computed here independently.
    from_world = np.linalg.inv(to_world)
    corners = np.array([[x, y, z, 1.0] for x in (low[0], high[0]) for y in (low[1], high[1])
                        for z in (low[2], high[2])])  # fmt: skip
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    corner_ijk = (corners @ from_world.T @ ras_to_ijk.T)[:, :3]
    box_low, box_high = np.floor(corner_ijk.min(0) + 0.5), np.floor(corner_ijk.max(0) + 0.5)
    found_local = segment_world_points(segmentation, result.segmentIds[0])
    found_ijk = np.round((np.c_[found_local, np.ones(len(found_local))] @ ras_to_ijk.T)[:, :3])
    inside_box = np.all((found_ijk >= box_low) & (found_ijk <= box_high), axis=1)
    assert inside_box.all()
    expected = case.mask.copy()
    outside = np.ones_like(expected)
    grid = np.indices(expected.shape).reshape(3, -1).T
    in_box = np.all((grid >= box_low) & (grid <= box_high), axis=1).reshape(expected.shape)
    outside[in_box] = False
    expected[outside] = False
    assert 0 < expected.sum() < case.mask.sum()  # the ROI really cuts the ellipsoid
    assert len(found_ijk) == int(expected.sum())
    np.testing.assert_allclose(found_ijk.mean(0), np.argwhere(expected).mean(0), atol=0.01)


def _started_job(scene: Any, model: Path, work: Path) -> tuple[SegmentationJob, int]:
    """A job segmenting a synthetic volume, started; and the scene's node count before it."""
    volume = add_volume(scene, testing.syntheticCase(), np.eye(4), "volume")
    before = scene.GetNumberOfNodes()
    job = SegmentationJob(volume, SegmentationOptions(model, device="cpu"), workDir=work)
    job.start()
    return job, before


def test_cancel_stops_the_worker_and_leaves_the_scene_alone(
    mrml_scene: Any, threshold_model: Path, tmp_path: Path
) -> None:
    job, before = _started_job(mrml_scene, threshold_model, tmp_path)
    pid = job.worker._process.pid
    job.cancel()
    assert job.poll().state is JobState.CANCELLED
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone
    assert mrml_scene.GetNumberOfNodes() == before
    assert list(tmp_path.iterdir()) == []  # the exported volume was removed


def test_a_cancel_after_the_worker_ended_adds_nothing_to_the_scene(
    mrml_scene: Any, threshold_model: Path, tmp_path: Path
) -> None:
    job, before = _started_job(mrml_scene, threshold_model, tmp_path)
    job.worker.wait(timeout=300)  # the worker wrote its result and exited; no poll yet
    assert job.worker.returncode == 0
    job.cancel()  # the user pressed Cancel just after: its result must not be loaded
    assert job.state is JobState.CANCELLED and job.poll().state is JobState.CANCELLED
    assert job.status.result is None
    assert mrml_scene.GetNumberOfNodes() == before
    assert list(tmp_path.iterdir()) == []


def test_a_worker_error_carries_the_workers_message(mrml_scene: Any, tmp_path: Path) -> None:
    volume = add_volume(mrml_scene, testing.syntheticCase(), np.eye(4), "volume")
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"this is not a model")
    work = tmp_path / "work"
    job = SegmentationJob(volume, SegmentationOptions(fake, device="cpu"), workDir=work)
    job.start()
    with pytest.raises(SegmentationError) as raised:
        job.waitForResult(timeout=300)
    message = str(raised.value)
    assert "is not an fbanet model file" in message and "Traceback" not in message
    assert mrml_scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is None
    assert list(work.iterdir()) == []


def test_bad_inputs_are_refused_before_starting(mrml_scene: Any, tmp_path: Path) -> None:
    options = SegmentationOptions(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="select an input volume"):
        SegmentationJob(None, options)
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    with pytest.raises(ValueError, match="no voxels"):
        SegmentationJob(empty, SegmentationOptions(model), workDir=tmp_path / "w").start()
    color = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "color")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    color.SetAndObserveImageData(image)
    with pytest.raises(ValueError, match="grayscale"):
        logic.exportVolume(color, tmp_path / "color.nrrd")


def test_command_line_and_environment(tmp_path: Path) -> None:
    options = SegmentationOptions(Path("m.safetensors"), device="cuda", largestComponent=False,
                                  probabilityMap=True, uncertaintyMap=True)  # fmt: skip
    args = segmentArguments("in.nrrd", "out.seg.nrrd", options, (1, 2, 3, 4, 5, 6))
    assert args[:6] == ["segment", "in.nrrd", "-o", "out.seg.nrrd", "-m", "m.safetensors"]
    assert args[args.index("--device") + 1] == "cuda" and "--json" in args
    assert {"--no-largest-component", "--probability", "--uncertainty"} <= set(args)
    assert args[args.index("--roi") + 1 :] == ["1", "2", "3", "4", "5", "6"]
    assert "--largest-component" not in segmentArguments("a", "b", SegmentationOptions(Path("m")))
    assert "--flips" not in segmentArguments("a", "b", SegmentationOptions(Path("m")))
    for mirroring, value in ((True, "axes"), (False, "none")):
        mirrored = segmentArguments("a", "b", SegmentationOptions(Path("m"), mirroring=mirroring))
        assert mirrored[mirrored.index("--flips") + 1] == value
    fbanet_parent = environment.ensureFbanetImportable(environment.__file__)
    assert (fbanet_parent / "fbanet" / "cli" / "worker.py").is_file()
    path = workers.worker_environment()["PYTHONPATH"].split(os.pathsep)
    assert path[0] == str(fbanet_parent)
    assert workers.python_executable() in (sys.executable, workers.shutil.which("PythonSlicer"))
    assert workers.models_folder("/home/u/.config/slicer.org/Slicer.ini") == Path(
        "/home/u/.config/slicer.org/FBANet/models"
    )


def test_source_checkout_layout_is_found() -> None:
    module_dir = Path(environment.__file__).resolve().parents[1]
    assert environment.sourceTreeFbanetFolder(module_dir) == module_dir.parent / "src"
    assert environment.sourceTreeFbanetFolder(module_dir.parent / "nowhere" / "x") is None


def test_trained_models_are_listed_with_their_description(
    threshold_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "FBANet" / "models"
    folder.mkdir(parents=True)
    (folder / "older.safetensors").write_bytes(threshold_model.read_bytes())
    os.utime(folder / "older.safetensors", (1, 1))
    (folder / "newer.safetensors").write_bytes(threshold_model.read_bytes())
    (folder / "broken.safetensors").write_bytes(b"junk")
    (folder / "notes.txt").write_text("not a model")
    listed = models.listTrainedModels(folder)
    assert [m.name for m in listed][-1] == "older"
    assert {m.name for m in listed} == {"older", "newer", "broken"}
    newer = next(m for m in listed if m.name == "newer")
    assert newer.readable and newer.description.startswith("Left atrium")
    broken = next(m for m in listed if m.name == "broken")
    assert not broken.readable and "unreadable" in broken.description
    assert models.listTrainedModels(tmp_path / "absent") == []
    assert models.defaultSource(folder) in (models.ModelSource.BUNDLED, models.ModelSource.TRAINED)


def test_model_choices_resolve_or_explain(threshold_model: Path, tmp_path: Path) -> None:
    source = models.ModelSource
    assert models.resolveModelPath(source.FILE, modelFile=threshold_model) == threshold_model
    with pytest.raises(ValueError, match="choose an fbanet model file"):
        models.resolveModelPath(source.FILE, modelFile=Path())
    with pytest.raises(ValueError, match="no trained model is selected"):
        models.resolveModelPath(source.TRAINED, "", modelsFolder=tmp_path)
    with pytest.raises(ValueError, match="no longer in"):
        models.resolveModelPath(source.TRAINED, "gone", modelsFolder=tmp_path)
    if models.bundledModel() is None:
        with pytest.raises(ValueError, match="ships no bundled model"):
            models.resolveModelPath(source.BUNDLED)
        assert models.defaultSource(tmp_path) is source.FILE
    assert source.TRAINED.label()
