"""Small builders shared by several test files."""

from __future__ import annotations

import numpy as np
import torch

from fbanet.config import ModelConfig
from fbanet.data.cases import Case
from fbanet.model.network import FBANet


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """A proper rotation matrix from three angles (radians)."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def trained_looking_model(config: ModelConfig, seed: int = 0, with_contrast: bool = True) -> FBANet:
    """A network in eval mode with random weights and non-default batch-norm statistics.

    Fresh batch-norm layers have mean 0 / variance 1 and an identity affine; randomizing them
    makes sure a round trip that dropped the buffers would change the eval-mode outputs.
    """
    torch.manual_seed(seed)
    model = FBANet(config, with_contrast=with_contrast)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.3)
    return model.eval()


def blob_case(
    name: str, seed: int, labeled: bool, shape: tuple[int, int, int] = (24, 22, 20)
) -> Case:
    """A bright ellipsoid in Gaussian noise, z-scored; its label is the ellipsoid."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = [rng.uniform(0.35 * s, 0.65 * s) for s in shape]
    radii = [rng.uniform(0.2 * s, 0.3 * s) for s in shape]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
    image = inside * 2.0 + rng.normal(0.0, 0.7, shape)
    image = ((image - image.mean()) / image.std()).astype(np.float32)
    label = inside.astype(np.uint8) if labeled else None
    return Case(name, image, label, (1.0, 1.0, 1.0))
