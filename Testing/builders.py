"""Small builders shared by several test files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from fbanet.config import ModelConfig
from fbanet.data.cases import Case
from fbanet.model.network import FBANet
from fbanet.train.progress import StopRequest


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


def write_nrrd(array: np.ndarray, path: Path, spacing: tuple[float, ...]) -> Path:
    """Write an (X, Y, Z) array as NRRD; SimpleITK wants the axes reversed."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose()))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def blob_arrays(seed: int, shape: tuple[int, int, int] = (24, 20, 18)) -> tuple[np.ndarray, ...]:
    """A noisy bright ellipsoid (float32) and its label (uint8)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = [rng.uniform(0.4 * s, 0.6 * s) for s in shape]
    inside = sum(((g - c) / (0.25 * s)) ** 2 for g, c, s in zip(grid, centre, shape, strict=True))
    label = (inside <= 1).astype(np.uint8)
    image = (100.0 + 50.0 * label + rng.normal(0.0, 20.0, shape)).astype(np.float32)
    return image, label


def write_manifest(
    folder: Path, labeled: int = 2, unlabeled: int = 2, spacing: tuple[float, ...] = (0.8, 0.8, 1.0)
) -> Path:
    """NRRD cases (the first ``labeled`` with labels) and a manifest with relative paths."""
    folder.mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[Any]] = {"labeled": [], "unlabeled": []}
    for i in range(labeled + unlabeled):
        image, label = blob_arrays(i)
        write_nrrd(image, folder / f"case{i}.nrrd", spacing)
        if i < labeled:
            write_nrrd(label, folder / f"case{i}_label.nrrd", spacing)
            entries["labeled"].append({"image": f"case{i}.nrrd", "label": f"case{i}_label.nrrd"})
        else:
            entries["unlabeled"].append(f"case{i}.nrrd")
    path = folder / "manifest.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


class StopAt:
    """A JSON-lines sink that requests a stop once iteration ``at`` has been reported."""

    def __init__(self, stop: StopRequest, at: int) -> None:
        self.stop = stop
        self.at = at

    def write(self, text: str) -> None:
        event = json.loads(text)
        if event.get("event") == "iteration" and event["iteration"] >= self.at:
            self.stop.request()

    def flush(self) -> None:
        pass
