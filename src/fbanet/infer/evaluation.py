"""Scoring a model on labeled cases: Dice, Jaccard, 95HD and ASD per case and overall."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from fbanet.infer.report import MetricsTable
from fbanet.infer.segmenter import Segmenter
from fbanet.io.volumes import Volume
from fbanet.metrics import compute_metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabeledVolume:
    """A scan with its reference segmentation.

    Attributes:
        name: Case name.
        image: The scan (X, Y, Z) with its geometry.
        label: Reference labelmap (X, Y, Z) on the scan's grid.
        normalized: The image is in the LA HDF5 layout, normalized as stored (used so by
            as-stored models only; see :meth:`Segmenter.segment`).
    """

    name: str
    image: Volume
    label: np.ndarray
    normalized: bool = False


def evaluate(
    segmenter: Segmenter,
    cases: Iterable[LabeledVolume],
    *,
    foreground: int = 1,
    on_case: Callable[[str, dict[str, float | bool]], None] | None = None,
) -> MetricsTable:
    """Segment every case and score class ``foreground`` against its reference.

    Distances are in millimetres from each image's spacing.

    Args:
        segmenter: The model and inference settings.
        cases: Labeled scans.
        foreground: The class to score.
        on_case: Called with each case's name and metrics as they are computed.
    """
    table = MetricsTable()
    for case in cases:
        if case.label.shape != case.image.array.shape:
            raise ValueError(
                f"case {case.name!r}: label shape {case.label.shape} differs from image shape "
                f"{case.image.array.shape}"
            )
        result = segmenter.segment(case.image, normalized=case.normalized)
        metrics = compute_metrics(
            result.labelmap.array == foreground,
            case.label == foreground,
            spacing=case.image.geometry.spacing,
        )
        table.add(case.name, metrics)
        logger.info("%s: Dice %.4f (%.1f s)", case.name, metrics.dice, result.seconds)
        if on_case is not None:
            on_case(case.name, metrics.as_dict())
    return table
