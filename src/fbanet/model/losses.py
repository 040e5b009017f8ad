"""FBA-Net's losses, as in the authors' implementation (which produced the paper's numbers).

Where the paper's equations and the authors' code differ, the code is followed and the
difference is an option:

- the negative loss's ranking decay ``alpha`` is 2.5 in the code, 0.25 in the paper;
- the paper's weight decay (5e-3) and the code's (1e-4) differ (see ``TrainConfig``);
- the code's ranking weight uses ``rank - 1``, so the most similar pair of every row (for
  the positive loss, the vector with itself) gets weight exp(alpha) > 1.

All losses compute in float32 whatever the autocast dtype of their inputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from fbanet.config import ContrastiveKind, TrainConfig, TrainingMode

SIMILARITY_MIN = 0.0005
SIMILARITY_MAX = 0.9995


def cosine_similarity_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Clamped cosine similarities s_ij = clamp(cos(a_i, b_j), 0.0005, 0.9995).

    Args:
        a: Vectors (N, D).
        b: Vectors (M, D).

    Returns:
        Similarities (N, M).
    """
    a = F.normalize(a.float(), dim=1)
    b = F.normalize(b.float(), dim=1)
    return torch.clamp(a @ b.T, min=SIMILARITY_MIN, max=SIMILARITY_MAX)


def rank_weights(similarity: Tensor, alpha: float) -> Tensor:
    """Ranking weights w_ij = exp(-alpha * (rank_ij - 1)).

    rank_ij is the 0-based position of s_ij when row i is sorted in descending order (ties
    keep their column order). Weights carry no gradient.

    Args:
        similarity: Similarities (N, M).
        alpha: Decay per rank.

    Returns:
        Weights (N, M).
    """
    order = torch.sort(similarity.detach(), dim=1, descending=True, stable=True).indices
    rank = torch.argsort(order, dim=1)
    return torch.exp(-(rank.float() - 1.0) * alpha)


def positive_loss(z: Tensor, alpha: float = 0.25) -> Tensor:
    """Pull vectors of one kind together: mean_ij w_ij * max(0, -log s_ij), s = sim(z, z).

    Args:
        z: Foreground or background vectors (N, D); the diagonal pairs are included.
        alpha: Ranking decay (0.25 in code and paper).
    """
    sim = cosine_similarity_matrix(z, z)
    return (rank_weights(sim, alpha) * torch.clamp(-torch.log(sim), min=0)).mean()


def negative_loss(fg: Tensor, bg: Tensor, alpha: float = 2.5) -> Tensor:
    """Push foreground from background: mean_ij w_ij * max(0, -log(1 - s_ij)), s = sim(fg, bg).

    Args:
        fg: Foreground vectors (N, D).
        bg: Background vectors (N, D).
        alpha: Ranking decay (2.5 in the authors' code; the paper says 0.25).
    """
    sim = cosine_similarity_matrix(fg, bg)
    return (rank_weights(sim, alpha) * torch.clamp(-torch.log(1 - sim), min=0)).mean()


def infonce_loss(fg: Tensor, bg: Tensor, temperature: float = 0.1) -> Tensor:
    """InfoNCE alternative (the paper's Table 3 ablation), symmetric in fg and bg.

    For every anchor of one kind, each other vector of the same kind is a positive and every
    vector of the other kind a negative: -log(exp(s_ap/t) / (exp(s_ap/t) + sum_n exp(s_an/t))),
    averaged over anchor-positive pairs, with unclamped cosine similarities.

    Args:
        fg: Foreground vectors (N, D), N >= 2.
        bg: Background vectors (N, D).
        temperature: Softmax temperature t.
    """
    if fg.shape[0] < 2:
        raise ValueError(f"InfoNCE needs at least 2 vectors per kind, got {fg.shape[0]}")
    total = fg.new_zeros((), dtype=torch.float32)
    for anchor, other in ((fg, bg), (bg, fg)):
        a = F.normalize(anchor.float(), dim=1)
        o = F.normalize(other.float(), dim=1)
        same = a @ a.T / temperature
        negatives = torch.logsumexp(a @ o.T / temperature, dim=1, keepdim=True)
        log_prob = same - torch.logaddexp(same, negatives)
        off_diagonal = ~torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
        total = total - log_prob[off_diagonal].mean()
    return total / 2


class BatchGroup(Protocol):
    """The processes that together hold one training batch (data-parallel training).

    The batch-dependent parts of the loss (Dice sums, contrastive similarities) must see the
    whole batch; this is how :func:`fba_loss` reaches the other processes' parts.
    """

    world_size: int  # processes in the group

    def rows(self, local: Tensor, labeled: int) -> Tensor:
        """Every process's rows (B_local, ...) as one (B, ...) tensor, with gradients, ordered
        as a one-process batch: the labeled rows of every process first, then the others."""
        ...

    def sum(self, local: Tensor) -> Tensor:
        """Elementwise sum of ``local`` over the processes, with gradients."""
        ...

    def mean_value(self, local: Tensor) -> Tensor:
        """``local`` shifted to the mean value over the processes; the gradient stays local."""
        ...


def dice_loss(
    probability: Tensor, target: Tensor, eps: float = 1e-8, group: BatchGroup | None = None
) -> Tensor:
    """Binary soft Dice loss 1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps) over the batch.

    Args:
        probability: Foreground probabilities (L, X, Y, Z).
        target: Binary targets (L, X, Y, Z).
        group: With several processes, the sums run over the whole batch of all of them.
    """
    p = probability.float()
    t = target.float()
    if group is None:
        return 1 - (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)
    sums = group.sum(torch.stack([(p * t).sum(), p.sum(), t.sum()]))
    return 1 - (2 * sums[0] + eps) / (sums[1] + sums[2] + eps)


def sharpen(probability: Tensor, temperature: float = 0.1) -> Tensor:
    """Sharpened pseudo label p^(1/T) / (p^(1/T) + (1 - p)^(1/T))."""
    p = probability.float()
    power = 1.0 / temperature
    num = p**power
    return num / (num + (1 - p) ** power)


def mutual_consistency(probabilities: Sequence[Tensor], temperature: float = 0.1) -> Tensor:
    """Sum over decoder pairs i != j of mean((p_i - sharpen(p_j))^2).

    As in the authors' code, gradients flow through both p_i and the sharpened target.

    Args:
        probabilities: Softmax outputs of each decoder on the whole batch, (B, K, X, Y, Z).
    """
    sharpened = [sharpen(p, temperature) for p in probabilities]
    total = probabilities[0].new_zeros((), dtype=torch.float32)
    for i, p in enumerate(probabilities):
        for j, s in enumerate(sharpened):
            if i != j:
                total = total + torch.mean((p.float() - s) ** 2)
    return total


def consistency_rampup(
    iteration: int, max_weight: float = 1.0, length: float = 40.0, interval: int = 150
) -> float:
    """Sigmoid ramp-up w(t) = max_weight * exp(-5 (1 - x / length)^2).

    x = min(t // interval, length): the weight rises in steps of ``interval`` iterations.
    """
    if length == 0:
        return max_weight
    x = min(iteration // interval, length)
    phase = 1.0 - x / length
    return float(max_weight * math.exp(-5.0 * phase * phase))


@dataclass
class LossTerms:
    """The loss of one training step and its parts (scalars, float32)."""

    total: Tensor
    dice: Tensor
    consistency: Tensor
    contrastive: Tensor
    consistency_weight: float

    def as_floats(self) -> dict[str, float]:
        """Plain numbers for logging."""
        return {
            "loss": float(self.total.detach()),
            "dice_loss": float(self.dice.detach()),
            "consistency_loss": float(self.consistency.detach()),
            "contrastive_loss": float(self.contrastive.detach()),
            "consistency_weight": self.consistency_weight,
        }


def contrastive_gradient_norm(
    terms: LossTerms, inputs: Sequence[Tensor], weight: float, group: BatchGroup | None = None
) -> float:
    """L2 norm of the gradient that the weighted contrastive term sends into the network.

    Measured at the activations the contrastive modules read (``FBANetOutput
    .contrast_inputs``): the term reaches the encoder and decoders only through them, so 0
    here means the term teaches the network nothing (the authors' module after step 1).
    The graph is kept for the main backward pass.

    With a ``group`` (a collective: every process calls it) the norm is over the whole
    batch: each process's copy of the term sends its gradient back through the gather to
    every process's rows, so a process's rows receive ``world_size`` times their share (the
    data-parallel average divides it out of the weights' gradients, and so does this norm).
    """
    contrast = terms.contrastive
    if weight == 0 or not contrast.requires_grad or not inputs:
        return 0.0
    grads = torch.autograd.grad(contrast, list(inputs), retain_graph=True, allow_unused=True)
    squares = contrast.new_zeros((), dtype=torch.float64)
    for g in grads:
        if g is not None:
            squares = squares + g.double().square().sum()
    if group is not None:
        squares = group.sum(squares.detach()) / group.world_size**2
    return weight * math.sqrt(float(squares))


def balance_contrast(
    terms: LossTerms, inputs: Sequence[Tensor], config: TrainConfig, group: BatchGroup | None = None
) -> tuple[LossTerms, float, float]:
    """Cap the contrastive term's pull at ``contrastive_weight`` times the segmentation's.

    For the learning module (its term reaches the network through the decoders' last
    features, ``inputs``): the contrastive term is scaled by s = min(1, |g_seg| / |g_con|),
    a constant of the step, where g_seg and g_con are the gradients that the segmentation
    terms (Dice, consistency) and the contrastive term send into those features. So
    ``weight * s * g_con`` is never larger than ``weight * g_seg``: at initialisation
    foreground and background pool nearly the same features through one head, where the
    negative loss is steepest, and unscaled the term's gradient is about 190-1500 times the
    segmentation's (benchmarks/contrast_stability.py). A collective with a ``group``: the
    norms span the whole batch.

    Args:
        terms: The step's loss (:func:`fba_loss` with ``config``).
        inputs: The features the term reaches the network through.
        config: The loss weights ``terms`` was made with.
        group: The processes sharing the batch, or None.

    Returns:
        The terms with the total rebalanced, the scale s, and the norm of what the weighted,
        scaled term sends into the network (as :func:`contrastive_gradient_norm`).
    """
    contrast, weight = terms.contrastive, config.contrastive_weight
    if weight == 0 or not contrast.requires_grad or not inputs:
        return terms, 1.0, 0.0
    # The total of fba_loss without its contrastive part, from the parts (no cancellation).
    segmentation = config.dice_weight * terms.dice + terms.consistency_weight * terms.consistency
    squares = []
    for part in (segmentation, contrast):
        grads = torch.autograd.grad(part, list(inputs), retain_graph=True, allow_unused=True)
        squares.append(sum((g.double().square().sum() for g in grads if g is not None),
                           contrast.new_zeros((), dtype=torch.float64)))  # fmt: skip
    both = torch.stack(squares).detach()
    if group is not None:
        # Every process's rows receive world_size times their share of each gradient (the
        # gathers' and sums' backward), which the ratio cancels and the norm divides out.
        both = group.sum(both) / group.world_size**2
    seg_norm, con_norm = (math.sqrt(float(v)) for v in both)
    scale = 1.0 if con_norm == 0 else min(1.0, seg_norm / con_norm)
    total = segmentation + (weight * scale) * contrast
    return dataclasses.replace(terms, total=total), scale, weight * scale * con_norm


def contrastive_loss(fg: Tensor, bg: Tensor, config: TrainConfig) -> Tensor:
    """One decoder's contrastive loss: pos(fg) + pos(bg) + neg(fg, bg), or InfoNCE."""
    if config.contrastive is ContrastiveKind.INFONCE:
        return infonce_loss(fg, bg, config.infonce_temperature)
    return (
        positive_loss(fg, config.positive_alpha)
        + positive_loss(bg, config.positive_alpha)
        + negative_loss(fg, bg, config.negative_alpha)
    )


def fba_loss(
    logits: Sequence[Tensor],
    fg: Sequence[Tensor],
    bg: Sequence[Tensor],
    labels: Tensor,
    iteration: int,
    config: TrainConfig,
    group: BatchGroup | None = None,
) -> LossTerms:
    """Total FBA-Net loss: dice_weight * Dice + w(t) * consistency + contrastive.

    In supervised mode only dice_weight * Dice (the baseline without unlabeled data).
    With a ``group`` (data-parallel training) the Dice sums and the contrastive vectors span
    the whole batch of all processes; the consistency, a mean over equal local batches,
    stays local (data-parallel gradient averaging makes it global), its value averaged.

    Args:
        logits: Each decoder's logits (B, K, X, Y, Z); the first L samples are labeled.
        fg: Each decoder's foreground projections (B, D).
        bg: Each decoder's background projections (B, D).
        labels: Class maps (L, X, Y, Z) of the labeled samples (foreground = class 1).
        iteration: Steps done including this one (the authors count from 1).
        config: Loss weights and options.
        group: The processes sharing the batch, or None for one process.
    """
    n_labeled = labels.shape[0]
    probabilities = [torch.softmax(out.float(), dim=1) for out in logits]
    target = labels == 1
    # sum() of tensors is a tensor; cast() tells the type checker so.
    dice = cast(
        Tensor, sum(dice_loss(p[:n_labeled, 1], target, group=group) for p in probabilities)
    )
    if config.mode is TrainingMode.SUPERVISED:
        zero = dice.new_zeros(())
        return LossTerms(config.dice_weight * dice, dice, zero, zero, 0.0)
    consistency = mutual_consistency(probabilities, config.temperature)
    if group is not None:
        consistency = group.mean_value(consistency)
        fg = [group.rows(f, n_labeled) for f in fg]
        bg = [group.rows(b, n_labeled) for b in bg]
    # A network without contrastive modules (contrastive weight 0) gives no vectors.
    contrast = sum(
        (contrastive_loss(f, b, config) for f, b in zip(fg, bg, strict=True)), dice.new_zeros(())
    )
    weight = consistency_rampup(
        iteration, config.consistency_weight, config.rampup_length, config.rampup_interval
    )
    total = config.dice_weight * dice + weight * consistency + config.contrastive_weight * contrast
    return LossTerms(total, dice, consistency, contrast, weight)
