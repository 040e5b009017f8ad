"""The learning contrastive module: masked average pooling, a shared head, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fbanet.config import ModelConfig, TrainConfig
from fbanet.model.files import ModelMetadata
from fbanet.model.losses import contrastive_gradient_norm, contrastive_loss, fba_loss
from fbanet.model.network import FBANet, FeatureContrastModule, inference_state_dict

LEARNING = ModelConfig(
    base_filters=4, patch_size=(16, 16, 16), projection_dim=8, contrast="learning"
)


def test_pooling_is_the_mean_feature_inside_and_outside_the_foreground() -> None:
    module = FeatureContrastModule(channels=2, projection_dim=3)
    module.head = nn.Identity()
    features = torch.zeros(1, 2, 2, 2, 2)
    features[0, 0] = torch.arange(8.0).reshape(2, 2, 2)
    features[0, 1] = 1.0
    logits = torch.zeros(1, 2, 2, 2, 2)
    logits[0, 1, 0] = 50.0  # the first X slab is foreground (probability 1)
    logits[0, 0, 1] = 50.0  # the second is background
    fg, bg = module(features, logits)
    assert fg[0].tolist() == pytest.approx([(0 + 1 + 2 + 3) / 4, 1.0])
    assert bg[0].tolist() == pytest.approx([(4 + 5 + 6 + 7) / 4, 1.0])


def test_one_head_serves_foreground_and_background() -> None:
    module = FeatureContrastModule(channels=4, projection_dim=8)
    assert [name for name, _ in module.named_parameters()] == [
        "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias",
    ]  # fmt: skip


def test_every_parameter_gets_a_gradient_from_the_learning_term() -> None:
    torch.manual_seed(0)
    model = FBANet(LEARNING).train()
    out = model(torch.randn(4, 1, 16, 16, 16))
    assert len(out.contrast_inputs) == 3  # the decoders' last feature maps
    loss = sum(contrastive_loss(f, b, TrainConfig()) for f, b in zip(out.fg, out.bg, strict=True))
    loss.backward()
    # The term alone reaches every encoder/decoder weight (a dead term reaches none).
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_the_gradient_norm_counts_each_path_into_the_network_once() -> None:
    # The learning term reaches a decoder's last features directly (pooling) and through
    # the logits computed from them; its gradient enters the network there, once. Measured
    # at the logits too, the logits' path counted twice (0.892 logged against 0.807).
    torch.manual_seed(0)
    model = FBANet(LEARNING).train()
    last: list[torch.Tensor] = []
    for decoder in model.decoders:
        decoder.stages[-1].register_forward_hook(lambda _m, _i, output: last.append(output))
    out = model(torch.randn(4, 1, 16, 16, 16))
    labels = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    terms = fba_loss(out.logits, out.fg, out.bg, labels, 1, TrainConfig(rampup_length=0.0))
    logged = contrastive_gradient_norm(terms, out.contrast_inputs, 0.5)
    grads = torch.autograd.grad(terms.contrastive, last, retain_graph=True)
    expected = 0.5 * float(sum(g.double().square().sum() for g in grads)) ** 0.5
    assert len(last) == 3 and expected > 0
    assert logged == pytest.approx(expected, rel=1e-9)


def test_the_learning_module_stays_out_of_model_files() -> None:
    model = FBANet(LEARNING)
    assert not any(k.startswith("contrast.") for k in inference_state_dict(model))
    assert ModelMetadata(model=LEARNING).model.contrast.value == "learning"


def test_the_default_stays_the_authors_module() -> None:
    assert ModelConfig().contrast.value == "authors"
    with pytest.raises(ValueError, match="authors"):
        ModelConfig(contrast="pooled")
