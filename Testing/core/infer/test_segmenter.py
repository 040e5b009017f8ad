"""Whole-volume segmentation: geometry round trip, ROI, post-processing, protocols, bad inputs.

Models are tiny (4 base filters, 16^3 patches) and run on the CPU in fp32. Where a test needs
a predictor that actually finds something without training, the segmenter's network is
replaced by a function of the image intensity, so the pipeline around it (normalization,
crop, resampling, windows, resampling back, argmax, largest component) is what is tested.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from builders import rotation, trained_looking_model
from safetensors.torch import save_file

from fbanet.cli.main import main
from fbanet.config import IntensityNormalization, ModelConfig
from fbanet.data.preprocess import IndexBox, zscore
from fbanet.infer.config import InferenceConfig as Config
from fbanet.infer.segmenter import Segmenter, largest_component, paper_config, with_flips
from fbanet.io.volumes import Geometry, Volume
from fbanet.model.files import ModelMetadata, save_model_file
from fbanet.model.network import FBANet

TINY = ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8)
FP32_CPU = Config(device="cpu", precision="fp32")

SPACING = (0.7, 0.9, 1.6)
SHAPE = (48, 40, 24)
RADIUS_MM = 8.0
SPHERE_INDEX = (29.3, 16.8, 13.6)  # off-centre, so a flipped or shifted result is caught


pytestmark = pytest.mark.usefixtures("one_cpu_thread")


GEOMETRY = Geometry(SPACING, (-40.0, 25.5, 80.0), tuple(rotation(0.3, -0.25, 0.6).ravel()))


def reference_image(geometry: Geometry) -> sitk.Image:
    """A 1-voxel SimpleITK image carrying ``geometry``, for index <-> physical transforms."""
    return geometry.to_sitk(sitk.Image([1, 1, 1], sitk.sitkUInt8))


def sphere_scan() -> tuple[Volume, np.ndarray, np.ndarray]:
    """A bright anti-aliased sphere on a rotated, anisotropic, offset grid.

    Returns:
        The volume, the true mask (voxel centres within the radius) and the centre (mm, LPS).
    """
    ref = reference_image(GEOMETRY)
    centre = np.array(ref.TransformContinuousIndexToPhysicalPoint(list(SPHERE_INDEX)))
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1)
    index = grid.reshape(-1, 3).astype(float)
    d = np.asarray(GEOMETRY.direction).reshape(3, 3)
    points = np.asarray(GEOMETRY.origin) + (index * np.asarray(SPACING)) @ d.T
    dist = np.linalg.norm(points - centre, axis=1).reshape(SHAPE)
    image = np.clip(RADIUS_MM - dist + 0.5, 0.0, 1.0).astype(np.float32)
    return Volume(image, GEOMETRY), dist <= RADIUS_MM, centre


def intensity_predictor(image: np.ndarray) -> Callable[[Sequence[int]], Callable]:
    """A stand-in for ``Segmenter.predictor``: foreground = sigmoid of the normalized intensity.

    The threshold is the midpoint of the z-scored sphere and background, i.e. the sphere's
    surface in the anti-aliased image.
    """
    normalized = zscore(image)
    low, high = float(normalized.min()), float(normalized.max())
    middle, scale = (low + high) / 2, (high - low) / 20

    def factory(decoders: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            fg = torch.sigmoid((x - middle) / scale)
            return torch.cat([1 - fg, fg], dim=1).repeat(1, len(decoders), 1, 1, 1)

        return run

    return factory


def randomized_model(seed: int = 0, config: ModelConfig = TINY) -> FBANet:
    """An inference network with random weights and non-trivial batch-norm statistics."""
    return trained_looking_model(config, seed, with_contrast=False)


def sphere_segmenter(
    image: np.ndarray, spacing: tuple[float, float, float] | None, config: Config = FP32_CPU
) -> Segmenter:
    metadata = ModelMetadata(TINY, spacing=spacing)
    segmenter = Segmenter(randomized_model(), metadata, config)
    segmenter.predictor = intensity_predictor(image)  # type: ignore[method-assign]
    return segmenter


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), None], ids=["resampled", "native"])
def test_segmentation_lands_at_the_same_physical_place(
    spacing: tuple[float, float, float] | None,
) -> None:
    volume, truth, centre = sphere_scan()
    segmenter = sphere_segmenter(volume.array, spacing)
    result = segmenter.segment(volume)

    labels = result.labelmap.array
    assert result.labelmap.geometry == volume.geometry  # exactly, not approximately
    assert labels.shape == volume.array.shape
    assert labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) == {0, 1}
    assert dice(labels == 1, truth) > 0.95

    centroid_index = np.argwhere(labels == 1).mean(axis=0)
    ref = reference_image(result.labelmap.geometry)
    centroid = np.array(ref.TransformContinuousIndexToPhysicalPoint(centroid_index.tolist()))
    # Well within one voxel (the smallest side is 0.7 mm).
    assert np.linalg.norm(centroid - centre) < 0.35


def test_only_the_roi_is_segmented_on_the_full_grid() -> None:
    volume, truth, _ = sphere_scan()
    segmenter = sphere_segmenter(volume.array, (1.0, 1.0, 1.0))
    full = segmenter.segment(volume).labelmap.array
    box = IndexBox((4, 0, 2), (30, 40, 24))  # cuts the sphere near its middle along X
    result = segmenter.segment(volume, box, probability=True)

    labels = result.labelmap.array
    assert labels.shape == volume.array.shape
    assert result.labelmap.geometry == volume.geometry
    outside = np.ones(labels.shape, dtype=bool)
    outside[box.slices] = False
    assert not labels[outside].any()
    assert result.probability is not None
    assert not result.probability.array[outside].any()
    assert result.probability.array[box.slices].max() > 0.99
    inside = labels[box.slices] == 1
    assert inside.sum() > 0.3 * truth.sum()
    assert dice(inside, full[box.slices] == 1) > 0.95
    assert dice(inside, truth[box.slices]) > 0.95


def test_largest_component_keeps_only_the_biggest_blob_per_class() -> None:
    labels = np.zeros((20, 20, 12), dtype=np.uint8)
    labels[2:8, 2:8, 2:8] = 1  # 216 voxels
    labels[12:15, 12:15, 2:5] = 1  # 27 voxels, separate
    labels[9, 9, 9] = 1  # 1 voxel, separate
    labels[12:18, 2:6, 6:11] = 2  # 120 voxels: the only blob of class 2
    labels[16:19, 16:19, 8:11] = 2  # 27 voxels
    kept = largest_component(labels, classes=[1, 2])

    expected = np.zeros_like(labels)
    expected[2:8, 2:8, 2:8] = 1
    expected[12:18, 2:6, 6:11] = 2
    np.testing.assert_array_equal(kept, expected)
    assert kept.dtype == labels.dtype
    # Classes not listed are left alone; the input is not modified.
    only_one = largest_component(labels, classes=[1])
    assert (only_one == 2).sum() == 120 + 27
    assert (labels == 1).sum() == 216 + 27 + 1


def test_largest_component_counts_diagonal_neighbours_as_connected() -> None:
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[1, 1, 1] = labels[2, 2, 2] = labels[3, 3, 3] = 1  # 26-connected chain
    labels[5, 0, 5] = 1
    kept = largest_component(labels, classes=[1])
    assert kept.sum() == 3
    assert kept[5, 0, 5] == 0


def test_with_flips_of_a_flip_equivariant_predictor_is_the_predictor() -> None:
    def smooth(x: torch.Tensor) -> torch.Tensor:
        blurred = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1)
        return torch.softmax(torch.cat([-blurred, blurred], dim=1), dim=1)

    x = torch.randn(2, 1, 9, 8, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(with_flips(smooth)(x), smooth(x), atol=1e-6, rtol=0)


def test_with_flips_averages_the_mirrored_predictions() -> None:
    ramp = torch.arange(9, dtype=torch.float32)[:, None, None] * torch.ones(9, 8, 7)

    def position_dependent(x: torch.Tensor) -> torch.Tensor:
        return x * ramp

    x = torch.randn(1, 1, 9, 8, 7, generator=torch.Generator().manual_seed(1))
    along_x = x * (ramp + ramp.flip(0)) / 2  # mirroring X changes the ramp; Y does not
    torch.testing.assert_close(with_flips(position_dependent)(x), along_x, atol=1e-6, rtol=0)


def recorded_windows(config: Config, shape: tuple[int, int, int]) -> list[tuple[int, ...]]:
    """The input shapes the network sees when a volume of ``shape`` is segmented."""
    segmenter = Segmenter(randomized_model(seed=4), ModelMetadata(TINY), config)
    seen: list[tuple[int, ...]] = []
    decode = segmenter.model.decode

    def recording(x: torch.Tensor, decoders: Sequence[int]) -> list[torch.Tensor]:
        seen.append(tuple(x.shape))
        return decode(x, decoders)

    segmenter.model.decode = recording  # type: ignore[method-assign]
    volume = Volume(np.random.default_rng(4).normal(size=shape).astype(np.float32), Geometry())
    segmenter.segment(volume, normalized=True)
    return seen


def test_by_default_the_network_sees_the_whole_region_once_per_mirroring() -> None:
    # 40 x 20 x 9 voxels round up to one 48 x 32 x 16 window; as is, mirrored X, mirrored Y.
    assert recorded_windows(FP32_CPU, (40, 20, 9)) == [(1, 1, 48, 32, 16)] * 3


def test_patch_windows_and_no_mirroring_slide_the_training_patch() -> None:
    config = dataclasses.replace(FP32_CPU, window="patch", flips="none", windows_per_batch=1)
    # Overlap 0.25 (step 12): 3 windows along X (40 voxels), 2 along Y (20), 1 along Z (9,
    # padded to 16).
    assert recorded_windows(config, (40, 20, 9)) == [(1, 1, 16, 16, 16)] * 6


def test_a_region_past_the_voxel_bound_falls_back_to_patch_windows() -> None:
    config = dataclasses.replace(FP32_CPU, max_window_voxels=48 * 32 * 16 - 1, flips="none")
    assert {shape[2:] for shape in recorded_windows(config, (40, 20, 9))} == {(16, 16, 16)}


def test_whole_region_and_patch_windows_give_the_same_voxelwise_prediction() -> None:
    image = np.random.default_rng(6).normal(size=(40, 20, 9)).astype(np.float32)

    def voxelwise(x: torch.Tensor) -> torch.Tensor:
        # Each output voxel depends on its own input voxel only, so any placement, padding
        # and blending of windows must give it back unchanged.
        return torch.softmax(torch.cat([-x, x * x], dim=1), dim=1)

    results = []
    for window in ("volume", "patch"):
        config = dataclasses.replace(FP32_CPU, window=window, flips="none")
        segmenter = Segmenter(randomized_model(), ModelMetadata(TINY), config)
        segmenter.predictor = lambda decoders: voxelwise  # type: ignore[method-assign]
        results.append(segmenter.predict(image, (0,)))
    expected = voxelwise(torch.from_numpy(image)[None, None])[0].numpy()
    np.testing.assert_allclose(results[0][0], expected, atol=1e-6)
    np.testing.assert_allclose(results[1][0], expected, atol=1e-6)


def authors_loop(
    model: FBANet, image: np.ndarray, patch: Sequence[int], stride: Sequence[int]
) -> np.ndarray:
    """The authors' ``test_single_case``, written out: pad, nested loops, mean of softmax."""
    px, py, pz = patch
    pads = [max(0, p - s) for s, p in zip(image.shape, patch, strict=True)]
    padded = np.pad(image, [(p // 2, p - p // 2) for p in pads])
    ww, hh, dd = padded.shape
    sx = math.ceil((ww - px) / stride[0]) + 1
    sy = math.ceil((hh - py) / stride[1]) + 1
    sz = math.ceil((dd - pz) / stride[2]) + 1
    score = np.zeros((2, ww, hh, dd), dtype=np.float64)
    count = np.zeros((ww, hh, dd), dtype=np.float64)
    with torch.no_grad():
        for x in range(sx):
            xs = min(stride[0] * x, ww - px)
            for y in range(sy):
                ys = min(stride[1] * y, hh - py)
                for z in range(sz):
                    zs = min(stride[2] * z, dd - pz)
                    window = padded[xs : xs + px, ys : ys + py, zs : zs + pz]
                    tensor = torch.from_numpy(np.ascontiguousarray(window))[None, None]
                    out = torch.softmax(model.decode(tensor, (0,))[0], dim=1)[0].numpy()
                    score[:, xs : xs + px, ys : ys + py, zs : zs + pz] += out
                    count[xs : xs + px, ys : ys + py, zs : zs + pz] += 1
    score /= count
    lo = [p // 2 for p in pads]
    return score[:, lo[0] : lo[0] + image.shape[0], lo[1] : lo[1] + image.shape[1]][
        ..., lo[2] : lo[2] + image.shape[2]
    ]


def test_paper_protocol_equals_the_authors_loop() -> None:
    # The stride 18/18/4 needs patch sides of at least 18/18/4 to cover every voxel.
    config = dataclasses.replace(TINY, patch_size=(32, 32, 16))
    model = randomized_model(seed=2, config=config)
    rng = np.random.default_rng(2)
    image = rng.normal(size=(70, 29, 25)).astype(np.float32)  # Y smaller than the patch
    segmenter = Segmenter(
        model, ModelMetadata(config), paper_config(precision="fp32", device="cpu")
    )
    assert segmenter.config.paper_stride == (18, 18, 4)
    probs = segmenter.predict(image, (0,))
    expected = authors_loop(model, image, config.patch_size, (18, 18, 4))

    assert probs.shape == (1, 2, *image.shape)
    np.testing.assert_allclose(probs[0], expected, atol=1e-5, rtol=0)
    assert probs[0, 1].std() > 0.01  # not a constant output that would match anything

    # End to end: no resampling (no model spacing), no largest-component step by default.
    volume = Volume(image, Geometry((0.625, 0.625, 0.625)))
    labels = segmenter.segment(volume, normalized=True).labelmap.array
    np.testing.assert_array_equal(labels, expected.argmax(axis=0))


def test_probability_and_uncertainty_maps() -> None:
    model = randomized_model(seed=3)
    calls: list[tuple[int, ...]] = []
    decode = model.decode

    def spy(x: torch.Tensor, decoders: Sequence[int] = (0,)) -> list[torch.Tensor]:
        calls.append(tuple(decoders))
        return decode(x, decoders)

    model.decode = spy  # type: ignore[method-assign]
    rng = np.random.default_rng(3)
    geometry = Geometry((0.8, 0.8, 1.5), (10.0, -5.0, 3.0), GEOMETRY.direction)
    volume = Volume(rng.normal(size=(26, 22, 14)).astype(np.float32) * 50 + 300, geometry)
    segmenter = Segmenter(model, ModelMetadata(TINY, spacing=(1.0, 1.0, 1.0)), FP32_CPU)

    plain = segmenter.segment(volume, probability=True)
    assert set(calls) == {(0,)}
    calls.clear()
    both = segmenter.segment(volume, probability=True, uncertainty=True)
    assert set(calls) == {(0, 1, 2)}

    assert plain.uncertainty is None
    assert both.probability is not None and both.uncertainty is not None
    for output in (both.labelmap, both.probability, both.uncertainty):
        assert output.array.shape == volume.array.shape
        assert output.geometry == volume.geometry
    assert both.probability.array.dtype == np.float32
    assert both.uncertainty.array.dtype == np.float32
    probability = both.probability.array
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    assert both.uncertainty.array.min() >= 0.0
    assert both.uncertainty.array.mean() > 1e-3  # random decoders disagree
    # The labelmap and probability still come from decoder 1 alone.
    assert plain.probability is not None
    np.testing.assert_allclose(probability, plain.probability.array, atol=1e-5)
    np.testing.assert_array_equal(both.labelmap.array, plain.labelmap.array)


def test_uncertainty_is_the_std_of_the_decoders_foreground_probability() -> None:
    model = randomized_model(seed=4)
    rng = np.random.default_rng(4)
    image = rng.normal(size=(20, 18, 17)).astype(np.float32)
    volume = Volume(image, Geometry((1.0, 1.0, 1.0)))
    metadata = ModelMetadata(TINY, normalization=IntensityNormalization.AS_STORED)
    segmenter = Segmenter(model, metadata, dataclasses.replace(FP32_CPU, largest_component=False))
    # The LA HDF5 layout, used as stored by an as-stored model.
    result = segmenter.segment(volume, normalized=True, probability=True, uncertainty=True)

    probs = segmenter.predict(image, (0, 1, 2))
    assert result.uncertainty is not None and result.probability is not None
    np.testing.assert_allclose(result.uncertainty.array, probs[:, 1].std(axis=0), atol=1e-6)
    np.testing.assert_allclose(result.probability.array, probs[0, 1], atol=1e-6)
    np.testing.assert_array_equal(result.labelmap.array, probs[0].argmax(axis=0))


def test_volume_smaller_than_the_patch_is_segmented_on_its_grid() -> None:
    rng = np.random.default_rng(5)
    volume = Volume(rng.normal(size=(9, 20, 7)).astype(np.float32), GEOMETRY)
    segmenter = Segmenter(randomized_model(seed=5), ModelMetadata(TINY), FP32_CPU)
    result = segmenter.segment(volume, probability=True)
    assert result.labelmap.array.shape == (9, 20, 7)
    assert result.labelmap.geometry == GEOMETRY
    assert result.probability is not None
    assert 0.0 < result.probability.array.min() <= result.probability.array.max() < 1.0


def test_a_2d_image_is_refused() -> None:
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((16, 16), dtype=np.float32), Geometry())


def test_a_2d_nrrd_gives_exit_code_2_and_no_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_model_file(tmp_path / "m.safetensors", randomized_model(), ModelMetadata(TINY))
    image = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 24), dtype=np.float32)), str(image))
    out = tmp_path / "out"
    out.mkdir()
    code = main(["segment", str(image), "-m", str(model), "-o", str(out / "s.seg.nrrd")])
    assert code == 2
    assert "2D" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_nan_voxels_are_refused() -> None:
    volume, _, _ = sphere_scan()
    volume.array[3, 4, 5] = np.nan
    volume.array[6, 4, 5] = np.inf
    segmenter = Segmenter(randomized_model(), ModelMetadata(TINY), FP32_CPU)
    with pytest.raises(ValueError, match="NaN") as error:
        segmenter.segment(volume)
    assert "2 NaN or infinite" in str(error.value)


def test_foreign_corrupt_and_missing_model_files(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    with pytest.raises(ValueError, match="not an fbanet model"):
        Segmenter.from_file(foreign, FP32_CPU)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x10\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="not an fbanet model file"):
        Segmenter.from_file(garbage, FP32_CPU)

    good = save_model_file(tmp_path / "good.safetensors", randomized_model(), ModelMetadata(TINY))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="damaged"):
        Segmenter.from_file(truncated, FP32_CPU)

    with pytest.raises(FileNotFoundError):
        Segmenter.from_file(tmp_path / "missing.safetensors", FP32_CPU)

    # The intact file loads and segments.
    segmenter = Segmenter.from_file(good, FP32_CPU)
    assert segmenter.patch_size == TINY.patch_size
