"""Scoring a network during training: the validation Dice that picks the best state."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fbanet.data.cases import Case
from fbanet.device import ComputeSetup
from fbanet.infer.sliding_window import sliding_window_inference
from fbanet.metrics import dice as dice_score
from fbanet.model.network import FBANet


def validation_dice(
    model: FBANet, cases: Sequence[Case], patch_size: tuple[int, int, int], setup: ComputeSetup
) -> float:
    """Mean Dice of decoder 1 over labeled ``cases`` (sliding windows, argmax).

    The cases are at the training spacing, as the network sees them; the windows are the
    training patch at overlap 0.25, without mirroring, so the score is comparable across a run
    and with earlier runs. The model is left in training mode.

    Args:
        model: The network being trained.
        cases: Labeled validation cases, images (X, Y, Z) already normalized.
        patch_size: The training patch (X, Y, Z).
        setup: Device, precision and memory format of the run.
    """
    model.eval()
    fmt = setup.memory_format

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with setup.autocast():
            return model.segment(x.contiguous(memory_format=fmt))

    scores = []
    for case in cases:
        image = torch.from_numpy(np.ascontiguousarray(case.image, dtype=np.float32))[None]
        probs = sliding_window_inference(
            image.to(setup.device), predictor, patch_size, overlap=0.25, windows_per_batch=2
        )
        prediction = probs.argmax(0).cpu().numpy() == 1
        assert case.label is not None  # validation cases are labeled (checked at start)
        scores.append(dice_score(prediction, case.label == 1))
    model.train()
    return float(np.mean(scores))
