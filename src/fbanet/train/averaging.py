"""Weight averaging: the weights a run validates and exports, averaged over its last steps.

Fine-tuning on a few scans at batch 2 moves the weights noisily: the in-loop validation Dice
of single states swings by several points from one check to the next (0.83 to 0.75 and back
within 100 steps at site B, ``benchmarks/site_adaptation.py``). An exponential moving average
of the weights (and of the batch-norm statistics) follows the same path without the swings,
and a fine-tune's average starts as the model it starts from, so it leaves that model slowly.
torch's own :class:`~torch.optim.swa_utils.AveragedModel` does the averaging.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """An exponential moving average of a model's weights and buffers.

    After each optimizer step, :meth:`update` sets every averaged tensor ``a`` to
    ``decay * a + (1 - decay) * w`` (``w`` the model's); the first update copies the model.
    Batch-norm running statistics are averaged the same way, so the averaged network is
    used as it is, without recomputing them.

    Args:
        model: The network being trained (copied; the copy holds the average).
        decay: Weight of the old average, in (0, 1): about ``1 / (1 - decay)`` recent steps
            count.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
            raise ValueError(f"the weight-average decay must lie in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self._averaged = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True
        )

    @property
    def module(self) -> torch.nn.Module:
        """The network with the averaged weights (the model files hold these)."""
        return self._averaged.module

    @property
    def updates(self) -> int:
        """How many steps have been averaged."""
        return int(self._averaged.n_averaged)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the model's current weights and buffers into the average."""
        self._averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        """The averaged tensors and the update count (a checkpoint holds them)."""
        return self._averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._averaged.load_state_dict(state)
