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

from fbanet.config import IntensityNormalization
from fbanet.data.cases import zscore
from fbanet.data.preprocess import resample
from fbanet.infer.segmenter import check_image
from fbanet.io.volumes import Volume
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


def _network_input(metadata: ModelMetadata, volume: Volume, normalized: bool) -> np.ndarray:
    """The image as the network sees it: normalized, at the model's spacing."""
    check_image(volume)
    array = volume.array.astype(np.float32, copy=False)
    if not normalized and metadata.normalization is not IntensityNormalization.AS_STORED:
        array = zscore(array)
    prepared = Volume(array, volume.geometry)
    if metadata.spacing is not None:
        prepared = resample(prepared, metadata.spacing)
    return prepared.array


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
        normalized: The intensities are already normalized as the model expects.
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
    image = _network_input(segmenter.metadata, volume, normalized)
    probabilities = segmenter.predict(image, decoders)
    foreground = probabilities[:, 1:].sum(axis=1)
    score, voxels = score_probabilities(foreground, margin)
    logger.info("%s: disagreement %.4f over %d voxels", name or "scan", score, voxels)
    return Disagreement(name, score, voxels, path)


def disagreement_score(
    segmenter: DecoderPredictor,
    volume: Volume,
    normalized: bool = False,
    margin: int = DEFAULT_MARGIN,
) -> float:
    """The mean decoder disagreement over the predicted region (0.0 when nothing is found)."""
    return disagreement(segmenter, volume, normalized=normalized, margin=margin).score


def sort_by_disagreement(scores: Iterable[Disagreement]) -> list[Disagreement]:
    """Most informative first: scans where nothing was found, then by descending score."""
    return sorted(scores, key=lambda d: (not d.missed, -d.score))


def rank_volumes(
    segmenter: DecoderPredictor,
    volumes: Iterable[tuple[str, Volume]],
    *,
    normalized: bool = False,
    margin: int = DEFAULT_MARGIN,
    on_scored: Callable[[Disagreement], None] | None = None,
) -> list[Disagreement]:
    """Score every (name, volume) and sort, most in need of annotation first.

    ``volumes`` may be a generator, so that only one scan is in memory at a time.
    ``on_scored`` is called after each scan (for progress).
    """
    scores = []
    for name, volume in volumes:
        result = disagreement(segmenter, volume, name=name, normalized=normalized, margin=margin)
        scores.append(result)
        if on_scored is not None:
            on_scored(result)
    return sort_by_disagreement(scores)
