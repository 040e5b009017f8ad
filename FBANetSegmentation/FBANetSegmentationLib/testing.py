"""Synthetic data and a tiny model for the module's self-test and the pytest suite.

A "case" is a bright ellipsoid in noise; :func:`thresholdModel` writes a real fbanet model
file (a 4-filter FBA-Net) that finds it again. Only :func:`thresholdModel` needs torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TINY_PATCH = (32, 32, 32)


@dataclass
class SyntheticCase:
    """An image and its mask, both (I, J, K) = voxel index order."""

    image: np.ndarray
    mask: np.ndarray


def ellipsoidMask(
    shape: tuple[int, int, int],
    center: tuple[float, float, float],
    radii: tuple[float, float, float],
) -> np.ndarray:
    """A boolean (I, J, K) array, true inside the axis-aligned ellipsoid (voxel units)."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii, strict=True))
    return np.asarray(distance <= 1.0)


def syntheticCase(
    shape: tuple[int, int, int] = (48, 40, 32),
    center: tuple[float, float, float] | None = None,
    radii: tuple[float, float, float] = (9.0, 7.0, 6.0),
    seed: int = 0,
) -> SyntheticCase:
    """A bright ellipsoid (intensity ~300) in noise (~100 +- 20), like an enhanced cavity."""
    rng = np.random.default_rng(seed)
    if center is None:
        center = tuple(n / 2.0 for n in shape)  # type: ignore[assignment]
    mask = ellipsoidMask(shape, center, radii)  # type: ignore[arg-type]
    image = rng.normal(100.0, 20.0, size=shape).astype(np.float32)
    image[mask] += 200.0
    return SyntheticCase(image, mask)


def obliqueIjkToRas(
    spacing: tuple[float, float, float] = (0.7, 0.9, 2.5),
    origin: tuple[float, float, float] = (-31.0, 12.5, 47.0),
    degrees: tuple[float, float] = (25.0, -15.0),
) -> np.ndarray:
    """A 4x4 IJK-to-RAS matrix that is rotated (about S, then R), anisotropic and offset,
    with the I axis pointing left: a geometry on which any axis or sign mix-up shows."""
    a, b = np.radians(degrees)
    about_s = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_r = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    flip = np.diag([-1.0, 1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = about_s @ about_r @ flip @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def thresholdModel(path: str | Path, threshold: float = 2.5) -> Path:
    """Save a real fbanet model file whose network segments voxels brighter than a threshold.

    The weights are set by hand rather than trained (fitting even a 4-filter FBA-Net takes
    minutes on a small CPU): the first encoder convolution and the last decoder stage pass the
    z-scored image through unchanged, every deeper path is switched off, and the output
    convolution gives the "Left atrium" class the logit ``10 * (z - threshold)``. Inference
    runs the full network, the sliding window and the file I/O as for any model; on
    :func:`syntheticCase` images the result matches the ellipsoid. Needs torch and fbanet.
    """
    import torch

    from fbanet.config import IntensityNormalization, ModelConfig
    from fbanet.model.files import ModelMetadata, save_model_file
    from fbanet.model.network import FBANet

    config = ModelConfig(base_filters=4, patch_size=TINY_PATCH, projection_dim=8, dropout=0.0)
    model = FBANet(config, with_contrast=False)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):  # identity in eval mode
                module.reset_parameters()
                module.reset_running_stats()
        encoder: Any = model.encoder  # torch's Module indexing is untyped
        first = encoder.stages[0][0]
        _passThrough(first)
        decoders: Any = model.decoders  # torch's Module indexing is untyped
        for decoder in decoders:
            last_up_norm = decoder.ups[3][-2]
            last_up_norm.weight.zero_()  # the upsampled path adds 0: only the skip remains
            last_up_norm.bias.zero_()
            _passThrough(decoder.stages[3][0])
            decoder.out_conv.weight.zero_()
            decoder.out_conv.bias.zero_()
            decoder.out_conv.weight[1, 0] = 10.0
            decoder.out_conv.bias[1] = -10.0 * threshold
    metadata = ModelMetadata(
        model=config,
        spacing=None,
        # Its threshold is on the whole image's z-score, also where a ROI cuts the ellipsoid:
        # the as-stored convention z-scores a file over all of it before cropping.
        normalization=IntensityNormalization.AS_STORED,
        largest_component=True,
        description=f"test model: z-scored intensity above {threshold} (not for real images)",
    )
    return save_model_file(path, model.eval(), metadata)


def _passThrough(conv: object) -> None:
    """Make a 3x3x3 convolution copy input channel 0 to output channel 0, nothing else."""
    conv.weight.zero_()  # type: ignore[attr-defined]
    conv.bias.zero_()  # type: ignore[attr-defined]
    conv.weight[0, 0, 1, 1, 1] = 1.0  # type: ignore[attr-defined]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean arrays (1.0 when both are empty)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def checkSyntheticEllipsoid(test: Any, scene: Any, segment: Callable[[Any], Any]) -> float:
    """The module self-test: a bright ellipsoid in an oblique volume comes back as a coded
    'Left atrium' on the volume's geometry; returns its Dice.

    Args:
        test: The ``unittest.TestCase`` whose assertions are used.
        scene: The scene to add the volume to.
        segment: Segments a volume node and returns the :class:`~.job.SegmentationResult`.
    """
    import slicer

    from .logic import segmentIdsByName, segmentTerminology

    case = syntheticCase()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "FBANet synthetic")
    slicer.util.updateVolumeFromArray(volume, case.image.transpose(2, 1, 0).copy())
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(obliqueIjkToRas()))
    volume.CreateDefaultDisplayNodes()
    segmentation = segment(volume).segmentationNode
    ids = segmentIdsByName(segmentation)
    test.assertIn("Left atrium", ids)
    coded = segmentation.GetSegmentation().GetSegment(ids["Left atrium"])
    test.assertIn("82471001", segmentTerminology(coded))
    role = segmentation.GetReferenceImageGeometryReferenceRole()
    test.assertEqual(segmentation.GetNodeReferenceID(role), volume.GetID())
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "FBANet test labelmap")
    try:  # (the class's own export: slicer-core has no slicer.modules)
        test.assertTrue(slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation, [ids["Left atrium"]], labelmap, volume))  # fmt: skip
        overlap = dice(slicer.util.arrayFromVolume(labelmap).transpose(2, 1, 0) > 0, case.mask)
    finally:
        scene.RemoveNode(labelmap)
    test.assertGreater(overlap, 0.9)
    return overlap
