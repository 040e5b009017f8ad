"""Which unlabeled scans to annotate next: ranking by the disagreement of the three decoders.

FBA-Net's three decoders differ only in how they upsample. Where they agree the model is
sure; where they disagree it is not. A scan's *disagreement score* is the mean, over the
region where any decoder predicts foreground (dilated by a small margin, so the boundary
where they disagree most is included), of the standard deviation of the decoders'
foreground probabilities. Annotating the scans with the highest score first spends the
annotator's effort where the model is least sure (uncertainty-based active learning).

A scan where no decoder finds any foreground is ranked first of all: the model has missed
the structure entirely, which is the most informative case to annotate.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import ndimage

from fbanet.data.preprocess import prepare_input
from fbanet.infer.files import read_scan
from fbanet.infer.orientation import training_axis_order
from fbanet.infer.segmenter import check_image
from fbanet.io.volumes import Volume, split_extension
from fbanet.model.files import ModelMetadata

logger = logging.getLogger(__name__)

# Voxels (at the network's spacing) added around the predicted foreground.
DEFAULT_MARGIN = 2
# A decoder predicts foreground where its foreground probability exceeds this.
FOREGROUND_THRESHOLD = 0.5


class DecoderPredictor(Protocol):
    """What ranking needs of a segmenter (:class:`fbanet.infer.segmenter.Segmenter` fits)."""

    metadata: ModelMetadata

    def predict(self, image: np.ndarray, decoders: Sequence[int]) -> np.ndarray:
        """Per-decoder class probabilities (n_decoders, K, X, Y, Z) of a normalized image."""
        ...


@dataclasses.dataclass(frozen=True)
class Disagreement:
    """How much the decoders disagree on one scan.

    Attributes:
        name: The scan's name (file name or node name).
        score: Mean standard deviation of the decoders' foreground probabilities over
            ``region_voxels`` voxels (0 when the region is empty).
        region_voxels: Voxels scored (any decoder's foreground, dilated), at the network's
            spacing; 0 when no decoder found foreground.
        path: Where the scan came from, if a file.
    """

    name: str
    score: float
    region_voxels: int
    path: Path | None = None

    @property
    def missed(self) -> bool:
        """No decoder found any foreground."""
        return self.region_voxels == 0

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form."""
        return {
            "name": self.name,
            "score": self.score,
            "region_voxels": self.region_voxels,
            "missed": self.missed,
            "path": str(self.path) if self.path is not None else None,
        }


def score_probabilities(foreground: np.ndarray, margin: int = DEFAULT_MARGIN) -> tuple[float, int]:
    """Disagreement of per-decoder foreground probabilities.

    Args:
        foreground: (n_decoders, X, Y, Z) foreground probabilities, n_decoders >= 2.
        margin: Dilation (voxels) of the region where any decoder predicts foreground.

    Returns:
        (mean standard deviation over the region, voxels in the region); (0.0, 0) when no
        decoder predicts foreground.
    """
    if foreground.ndim != 4 or foreground.shape[0] < 2:
        raise ValueError(
            f"need the foreground probabilities of at least 2 decoders (n, X, Y, Z), got "
            f"shape {foreground.shape}"
        )
    region = (foreground > FOREGROUND_THRESHOLD).any(axis=0)
    if not region.any():
        return 0.0, 0
    if margin > 0:
        region = ndimage.binary_dilation(region, iterations=int(margin))
    spread = foreground.std(axis=0)
    return float(spread[region].mean()), int(region.sum())


def disagreement(
    segmenter: DecoderPredictor,
    volume: Volume,
    *,
    name: str = "",
    normalized: bool = False,
    margin: int = DEFAULT_MARGIN,
    path: Path | None = None,
) -> Disagreement:
    """Score one scan by the disagreement of the model's decoders (see the module doc).

    Args:
        segmenter: The model (a :class:`fbanet.infer.segmenter.Segmenter`).
        volume: The scan, any size, spacing and orientation.
        name: Name to report.
        normalized: The image is in the LA HDF5 layout (see :meth:`Segmenter.segment`).
        margin: Dilation (voxels at the network's spacing) of the predicted region.
        path: The scan's file, to report.

    Raises:
        ValueError: The model file holds fewer than two decoders, or the image is bad.
    """
    decoders = tuple(segmenter.metadata.decoders)
    if len(decoders) < 2:
        raise ValueError(
            "ranking needs the disagreement of several decoders, but this model file holds "
            "only one; use a model written by 'fbanet train'"
        )
    check_image(volume)
    metadata = segmenter.metadata
    image = prepare_input(
        training_axis_order(volume.geometry).volume(volume),  # as the segmenter sees it
        normalization=metadata.normalization, spacing=metadata.spacing, normalized=normalized,
    ).network.array  # fmt: skip
    probabilities = segmenter.predict(image, decoders)
    foreground = probabilities[:, 1:].sum(axis=1)
    score, voxels = score_probabilities(foreground, margin)
    logger.info("%s: disagreement %.4f over %d voxels", name or "scan", score, voxels)
    return Disagreement(name, score, voxels, path)


def sort_by_disagreement(scores: Iterable[Disagreement]) -> list[Disagreement]:
    """Most informative first: scans where nothing was found, then by descending score."""
    return sorted(scores, key=lambda d: (not d.missed, -d.score))


def rank_files(
    segmenter: DecoderPredictor,
    paths: Sequence[Path],
    *,
    h5_spacing: Sequence[float] | None = None,
    margin: int = DEFAULT_MARGIN,
    on_scored: Callable[[int, Disagreement], None] | None = None,
) -> list[Disagreement]:
    """Score every scan file and sort, most in need of annotation first.

    Scans are read one at a time, so only one is in memory. Every path is checked before
    the first is scored.

    Args:
        segmenter: The model (a :class:`fbanet.infer.segmenter.Segmenter`).
        paths: Scan files or DICOM folders, with distinct names.
        h5_spacing: Voxel size (mm) of HDF5 scans.
        margin: Dilation (voxels) of the predicted region.
        on_scored: Called with (1-based index, result) after each scan, for progress.

    Raises:
        ValueError: A negative margin, or two scans with the same name.
        FileNotFoundError: A path does not exist.
    """
    if margin < 0:
        raise ValueError(f"the margin must be >= 0 voxels, got {margin}")
    names = [split_extension(path)[0] for path in paths]
    if len(set(names)) != len(names):
        raise ValueError("two scans have the same name; rank scans with distinct file names")
    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} does not exist; check the path")
    scores = []
    for index, (path, name) in enumerate(zip(paths, names, strict=True), start=1):
        volume, normalized = read_scan(path, h5_spacing)
        result = disagreement(
            segmenter, volume, name=name, normalized=normalized, margin=margin, path=Path(path)
        )
        scores.append(result)
        if on_scored is not None:
            on_scored(index, result)
    return sort_by_disagreement(scores)
