"""FBANet: semi-supervised 3D segmentation with FBA-Net (Chung et al., MICCAI 2023).

The public API, in a few lines::

    import fbanet

    segmenter = fbanet.Segmenter.from_file(fbanet.default_model_path())
    result = segmenter.segment(fbanet.read_volume("scan.nrrd"))
    fbanet.write_segmentation(result.labelmap, "scan.seg.nrrd", segmenter.segments)

Names are imported on first use, so ``import fbanet`` stays light (no PyTorch): the Slicer
panels import parts of the package that must not load it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fbanet._version import __version__  # a leaf module: lower layers import it from there

# Public name -> module that defines it.
_API = {
    "ModelConfig": "fbanet.config",
    "TrainConfig": "fbanet.config",
    "InferenceConfig": "fbanet.infer.config",
    "Volume": "fbanet.io.volumes",
    "Geometry": "fbanet.io.volumes",
    "read_volume": "fbanet.io.volumes",
    "write_volume": "fbanet.io.volumes",
    "read_segmentation": "fbanet.io.segmentation",
    "write_segmentation": "fbanet.io.segmentation",
    "read_manifest": "fbanet.data.manifest",
    "ModelMetadata": "fbanet.model.header",
    "read_model_header": "fbanet.model.header",
    "load_model": "fbanet.model.files",
    "save_model": "fbanet.model.files",
    "default_model_path": "fbanet.model.bundled",
    "Segmenter": "fbanet.infer.segmenter",
    "SegmentationResult": "fbanet.infer.segmenter",
    "segment_file": "fbanet.infer.files",
    "rank_files": "fbanet.infer.ranking",
    "compute_metrics": "fbanet.metrics",
    "Trainer": "fbanet.train.trainer",
    "TrainingData": "fbanet.train.trainer",
    "load_training_data": "fbanet.train.runs",
}
# Public names that differ from the name in their module.
_RENAMED = {"load_model": "load_model_file", "save_model": "save_model_file"}

# Literal, so that linters and type checkers read it; a test keeps it equal to _API.
__all__ = [
    "Geometry",
    "InferenceConfig",
    "ModelConfig",
    "ModelMetadata",
    "SegmentationResult",
    "Segmenter",
    "TrainConfig",
    "Trainer",
    "TrainingData",
    "Volume",
    "__version__",
    "compute_metrics",
    "default_model_path",
    "load_model",
    "load_training_data",
    "rank_files",
    "read_manifest",
    "read_model_header",
    "read_segmentation",
    "read_volume",
    "save_model",
    "segment_file",
    "write_segmentation",
    "write_volume",
]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from fbanet.config import ModelConfig, TrainConfig
    from fbanet.data.manifest import read_manifest
    from fbanet.infer.config import InferenceConfig
    from fbanet.infer.files import segment_file
    from fbanet.infer.ranking import rank_files
    from fbanet.infer.segmenter import SegmentationResult, Segmenter
    from fbanet.io.segmentation import read_segmentation, write_segmentation
    from fbanet.io.volumes import Geometry, Volume, read_volume, write_volume
    from fbanet.metrics import compute_metrics
    from fbanet.model.bundled import default_model_path
    from fbanet.model.files import load_model_file as load_model
    from fbanet.model.files import save_model_file as save_model
    from fbanet.model.header import ModelMetadata, read_model_header
    from fbanet.train.runs import load_training_data
    from fbanet.train.trainer import Trainer, TrainingData


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562)."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'fbanet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
