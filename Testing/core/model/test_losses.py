"""Losses against the authors' reference values and hand-computed cases."""

from __future__ import annotations

import json
import math

import pytest
import torch
from paths import REFERENCE

from fbanet.config import ContrastiveKind, TrainConfig
from fbanet.model.losses import (
    consistency_rampup,
    contrastive_loss,
    cosine_similarity_matrix,
    dice_loss,
    fba_loss,
    infonce_loss,
    mutual_consistency,
    negative_loss,
    positive_loss,
    rank_weights,
    sharpen,
)

VECTORS = REFERENCE / "loss_vectors.json"


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(VECTORS.read_text())


def test_contrastive_losses_match_the_authors(reference: dict) -> None:
    for case in reference["contrastive"]:
        fg, bg = torch.tensor(case["fg"]), torch.tensor(case["bg"])
        assert float(positive_loss(fg, 0.25)) == pytest.approx(
            case["positive_fg_alpha_0_25"], abs=1e-5
        )
        assert float(positive_loss(bg, 0.25)) == pytest.approx(
            case["positive_bg_alpha_0_25"], abs=1e-5
        )
        assert float(negative_loss(fg, bg, 2.5)) == pytest.approx(
            case["negative_fg_bg_alpha_2_5"], abs=1e-5
        )
        assert float(negative_loss(fg, bg, 0.25)) == pytest.approx(
            case["negative_fg_bg_alpha_0_25"], abs=1e-5
        )


def test_dice_loss_matches_the_authors(reference: dict) -> None:
    d = reference["dice"]
    value = dice_loss(torch.tensor(d["prob"]), torch.tensor(d["target"]))
    assert float(value) == pytest.approx(d["loss"], abs=1e-5)


def test_rampup_matches_the_authors(reference: dict) -> None:
    for iteration, expected in reference["consistency_weight_at_iteration"].items():
        assert consistency_rampup(int(iteration)) == pytest.approx(expected, abs=1e-7)


def test_sharpening_matches_the_authors(reference: dict) -> None:
    d = reference["sharpening_T_0_1"]
    assert torch.allclose(
        sharpen(torch.tensor(d["p"]), 0.1), torch.tensor(d["sharpened"]), atol=1e-7
    )


def test_rank_weights_by_hand() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]])
    # Row 0 descending: 0.9 (pos 0), 0.5 (pos 1), 0.1 (pos 2) -> ranks -1, 1, 0.
    expected = torch.exp(-torch.tensor([[-1.0, 1.0, 0.0], [1.0, 0.0, -1.0]]) * 0.5)
    assert torch.allclose(rank_weights(sim, 0.5), expected)


def test_similarity_is_clamped() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sim = cosine_similarity_matrix(a, a)
    assert torch.allclose(sim, torch.tensor([[0.9995, 0.0005], [0.0005, 0.9995]]))


def test_positive_loss_by_hand() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    s = torch.tensor([[0.9995, math.sqrt(0.5)], [math.sqrt(0.5), 0.9995]])
    w = torch.exp(-torch.tensor([[-1.0, 0.0], [0.0, -1.0]]) * 0.25)
    expected = (w * -torch.log(s)).mean()
    assert float(positive_loss(z, 0.25)) == pytest.approx(float(expected), rel=1e-6)


def test_dice_loss_by_hand() -> None:
    p = torch.tensor([[1.0, 0.5, 0.0, 0.0]]).reshape(1, 1, 2, 2)
    t = torch.tensor([[1.0, 1.0, 0.0, 0.0]]).reshape(1, 1, 2, 2)
    assert float(dice_loss(p, t)) == pytest.approx(1 - 3.0 / 3.5, abs=1e-7)


def test_mutual_consistency_by_hand() -> None:
    p1 = torch.full((1, 2, 1, 1, 1), 0.5)
    p2 = torch.tensor([0.9, 0.1]).reshape(1, 2, 1, 1, 1)
    s1 = sharpen(p1)
    s2 = sharpen(p2)
    expected = torch.mean((p1 - s2) ** 2) + torch.mean((p2 - s1) ** 2)
    assert float(mutual_consistency([p1, p2])) == pytest.approx(float(expected), rel=1e-6)
    assert float(mutual_consistency([p2, p2, p2])) == pytest.approx(
        6 * float(torch.mean((p2 - s2) ** 2)), rel=1e-6
    )


def test_rampup_shape() -> None:
    assert consistency_rampup(0) == pytest.approx(math.exp(-5))
    assert consistency_rampup(149) == consistency_rampup(0)
    assert consistency_rampup(6000) == 1.0
    assert consistency_rampup(10**6, max_weight=0.3) == pytest.approx(0.3)
    assert consistency_rampup(0, length=0) == 1.0


def test_infonce_prefers_separated_representations() -> None:
    torch.manual_seed(0)
    fg = torch.randn(4, 16).abs()
    separated = infonce_loss(torch.cat([fg[:, :8], torch.zeros(4, 8)], 1),
                             torch.cat([torch.zeros(4, 8), fg[:, 8:]], 1))  # fmt: skip
    mixed = infonce_loss(fg, fg.flip(0))
    assert float(separated) < float(mixed)
    with pytest.raises(ValueError, match="at least 2"):
        infonce_loss(fg[:1], fg[:1])


def test_contrastive_kind_is_switchable() -> None:
    torch.manual_seed(1)
    fg, bg = torch.rand(4, 8), torch.rand(4, 8)
    ranked = contrastive_loss(fg, bg, TrainConfig())
    expected = positive_loss(fg) + positive_loss(bg) + negative_loss(fg, bg, 2.5)
    assert torch.allclose(ranked, expected)
    info = contrastive_loss(fg, bg, TrainConfig(contrastive=ContrastiveKind.INFONCE))
    assert torch.allclose(info, infonce_loss(fg, bg, 0.1))


def test_total_loss_combines_the_terms() -> None:
    torch.manual_seed(2)
    logits = [torch.randn(4, 2, 4, 4, 4, requires_grad=True) for _ in range(3)]
    fg = [torch.rand(4, 8, requires_grad=True) for _ in range(3)]
    bg = [torch.rand(4, 8, requires_grad=True) for _ in range(3)]
    labels = (torch.rand(2, 4, 4, 4) > 0.5).long()
    config = TrainConfig()
    terms = fba_loss(logits, fg, bg, labels, iteration=3000, config=config)
    probs = [torch.softmax(x, 1) for x in logits]
    dice = sum(dice_loss(p[:2, 1], labels == 1) for p in probs)
    consistency = mutual_consistency(probs, 0.1)
    contrast = sum(contrastive_loss(f, b, config) for f, b in zip(fg, bg, strict=True))
    weight = consistency_rampup(3000)
    assert terms.consistency_weight == pytest.approx(weight)
    expected = 0.5 * dice + weight * consistency + contrast
    assert float(terms.total.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    terms.total.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in logits + fg + bg)


def test_losses_run_in_float32_under_bfloat16() -> None:
    p = torch.rand(2, 4, 4, 4).bfloat16()
    assert dice_loss(p, p > 0.5).dtype == torch.float32
    assert positive_loss(torch.rand(3, 5).bfloat16()).dtype == torch.float32


def test_ranked_contrastive_floor_needs_no_image_information() -> None:
    # Constant, orthogonal fg and bg vectors (what two ReLU heads give from their biases
    # alone) already reach the loss's floor under the similarity clamp: the value at which
    # every LA training run sits from the second step on (0.00773 over three decoders).
    fg = torch.zeros(4, 128)
    fg[:, :64] = 1.0
    bg = torch.zeros(4, 128)
    bg[:, 64:] = 1.0
    floor = float(contrastive_loss(fg, bg, TrainConfig()))
    assert 3 * floor == pytest.approx(0.0077311, abs=1e-6)
    # Identical fg and bg vectors are far above it: the heads alone can close the gap.
    mixed = torch.ones(4, 128)
    assert float(contrastive_loss(mixed, mixed, TrainConfig())) > 100 * floor
