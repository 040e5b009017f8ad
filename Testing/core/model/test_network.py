"""The network: shapes, gradients, parameter counts, and the authors' checkpoint layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from paths import REFERENCE

from fbanet.config import ModelConfig
from fbanet.model.authors import convert_key, convert_state_dict, infer_model_config
from fbanet.model.network import FBANet, inference_state_dict

REFERENCE = REFERENCE
TINY = ModelConfig(base_filters=4, patch_size=(32, 32, 16), projection_dim=8)


def _tiny(seed: int = 0, config: ModelConfig = TINY) -> FBANet:
    torch.manual_seed(seed)
    return FBANet(config)


@pytest.mark.parametrize("patch", [(16, 16, 16), (32, 32, 16), (48, 32, 64)])
def test_output_shapes_follow_the_patch(patch: tuple[int, int, int]) -> None:
    config = ModelConfig(base_filters=4, patch_size=patch, projection_dim=8)
    model = FBANet(config).eval()
    out = model(torch.randn(2, 1, *patch))
    assert len(out.logits) == 3
    for logits, fg, bg in zip(out.logits, out.fg, out.bg, strict=True):
        assert logits.shape == (2, 2, *patch)
        assert fg.shape == bg.shape == (2, 8)
    head = model.contrast[0].fg_head[0]
    assert head.in_features == (patch[0] // 2) * (patch[1] // 2) * (patch[2] // 2)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_projection_input_is_derived_from_the_patch() -> None:
    assert ModelConfig(patch_size=(112, 112, 80)).projection_input == 56 * 56 * 40
    assert ModelConfig(patch_size=(96, 96, 96)).projection_input == 48**3


def test_every_parameter_gets_a_gradient() -> None:
    model = _tiny().train()
    out = model(torch.randn(2, 1, *TINY.patch_size))
    loss = sum(o.square().mean() for o in out.logits) + sum(
        f.sum() + b.sum() for f, b in zip(out.fg, out.bg, strict=True)
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_the_three_decoders_differ_only_in_upsampling() -> None:
    model = _tiny()
    kinds = [type(d.ups[0][0]).__name__ for d in model.decoders]
    assert kinds == ["ConvTranspose3d", "Upsample", "Upsample"]
    assert [d.ups[0][0].mode for d in model.decoders[1:]] == ["trilinear", "nearest"]
    assert model.decoders[1].ups[0][0].align_corners is True
    depths = [sum(isinstance(m, torch.nn.Conv3d) for m in s) for s in model.decoders[0].stages]
    assert depths == [3, 3, 2, 1]


def test_inference_runs_decoder_one_only() -> None:
    model = _tiny().eval()
    calls: list[str] = []
    for name, module in [("d1", model.decoders[0]), ("d2", model.decoders[1])]:
        module.register_forward_hook(lambda *_, n=name: calls.append(n))
    for module in model.contrast:
        module.register_forward_hook(lambda *_: calls.append("contrast"))
    probs = model.segment(torch.randn(1, 1, 32, 32, 32))
    assert calls == ["d1"]
    assert torch.allclose(probs.sum(1), torch.ones(1, 32, 32, 32))


def test_segment_can_average_decoders() -> None:
    model = _tiny().eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        each = [torch.softmax(o, 1) for o in model.decode(x, (0, 1, 2))]
        mean = model.segment(x, decoders=(0, 1, 2))
    assert torch.allclose(mean, sum(each) / 3, atol=1e-6)
    with pytest.raises(ValueError, match="decoder index 3"):
        model.decode(x, (3,))


def test_inference_model_has_no_heads() -> None:
    model = _tiny()
    keys = inference_state_dict(model)
    assert keys and not any(k.startswith("contrast.") for k in keys)
    bare = FBANet(TINY, with_contrast=False)
    bare.load_state_dict(keys, strict=True)
    # Without heads (a run without a contrastive term) training gets the logits alone.
    x = torch.randn(2, 1, *TINY.patch_size)
    bare.eval()
    out = bare(x)
    assert (out.fg, out.bg, out.contrast_inputs) == ([], [], [])
    for logits, expected in zip(out.logits, bare.decode(x, (0, 1, 2)), strict=True):
        torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_wrong_patch_size_in_training_is_explained() -> None:
    with pytest.raises(ValueError, match="patch size of the model configuration"):
        _tiny()(torch.randn(2, 1, 16, 16, 16))


def test_parameter_counts_match_the_authors_la_configuration() -> None:
    model = FBANet(ModelConfig())
    assert count_parameters(model.encoder) == 7_376_896
    per_decoder = [
        count_parameters(d) + count_parameters(c)
        for d, c in zip(model.decoders, model.contrast, strict=True)
    ]
    assert per_decoder == [34_184_922, 35_011_802, 35_011_802]
    heads = count_parameters(model.contrast[0].fg_head) + count_parameters(
        model.contrast[0].bg_head
    )
    assert heads == 32_112_896
    module = model.contrast[0]
    assert count_parameters(module.map_conv) + count_parameters(module.map_norm) == 56


def _reference_layout() -> list[tuple[str, str]]:
    path = REFERENCE / "official_state_dict_la.tsv"
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines()]
    return [(r[0], r[1]) for r in rows if r and not r[0].startswith("#")]


def test_the_authors_layout_maps_one_to_one_with_equal_shapes() -> None:
    ours = FBANet(ModelConfig()).state_dict()
    layout = _reference_layout()
    assert len(layout) == len(ours) == 421
    for name, shape in layout:
        tensor = ours[convert_key(name)]
        assert ("x".join(map(str, tensor.shape)) or "scalar") == shape, name
    assert {convert_key(n) for n, _ in layout} == set(ours)


def test_foreign_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="not a parameter of the FBA-Net"):
        convert_key("backbone.layer1.weight")


# --- an independent, functional forward of the authors' network over their own names ---


def _bn(x: torch.Tensor, s: dict[str, torch.Tensor], p: str) -> torch.Tensor:
    return F.batch_norm(
        x, s[p + ".running_mean"], s[p + ".running_var"], s[p + ".weight"], s[p + ".bias"]
    )


def _convs(x: torch.Tensor, s: dict[str, torch.Tensor], p: str, n: int) -> torch.Tensor:
    for i in range(n):
        x = F.conv3d(x, s[f"{p}.conv.{3 * i}.weight"], s[f"{p}.conv.{3 * i}.bias"], padding=1)
        x = F.relu(_bn(x, s, f"{p}.conv.{3 * i + 1}"))
    return x


def _up(x: torch.Tensor, s: dict[str, torch.Tensor], p: str, kind: int) -> torch.Tensor:
    if kind == 0:
        x = F.conv_transpose3d(x, s[p + ".conv.0.weight"], s[p + ".conv.0.bias"], stride=2)
        return F.relu(_bn(x, s, p + ".conv.1"))
    mode = "trilinear" if kind == 1 else "nearest"
    extra = {"align_corners": True} if kind == 1 else {}
    x = F.interpolate(x, scale_factor=2, mode=mode, **extra)
    x = F.conv3d(x, s[p + ".conv.1.weight"], s[p + ".conv.1.bias"], padding=1)
    return F.relu(_bn(x, s, p + ".conv.2"))


def _authors_forward(s: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    names = ["one", "two", "three", "four", "five"]
    feats = []
    for i, (name, n) in enumerate(zip(names, [1, 2, 3, 3, 3], strict=True)):
        x = _convs(x, s, f"encoder.block_{name}", n)
        feats.append(x)
        if i < 4:
            p = f"encoder.block_{name}_dw.conv"
            x = F.relu(
                _bn(F.conv3d(x, s[p + ".0.weight"], s[p + ".0.bias"], stride=2), s, p + ".1")
            )
    outputs = []
    for k in range(3):
        d = f"decoder{k + 1}"
        y = feats[4]
        for j, (block, n) in enumerate(
            zip(["six", "seven", "eight", "nine"], [3, 3, 2, 1], strict=True)
        ):
            up_name = ["five", "six", "seven", "eight"][j]
            y = _convs(
                _up(y, s, f"{d}.block_{up_name}_up", k) + feats[3 - j], s, f"{d}.block_{block}", n
            )
        outputs.append(F.conv3d(y, s[f"{d}.out_conv.weight"], s[f"{d}.out_conv.bias"]))
    return outputs


def _inverse_names(model: FBANet) -> dict[str, str]:
    """Authors' name of each of our keys, by searching the authors' naming scheme."""
    layout = [n for n, _ in _reference_layout()]
    return {convert_key(n): n for n in layout}


def test_converted_authors_weights_give_the_authors_outputs() -> None:
    torch.manual_seed(3)
    config = ModelConfig(patch_size=(112, 112, 80))
    donor = FBANet(config).eval()
    for module in donor.modules():  # non-trivial statistics, so BN mix-ups would show
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    names = _inverse_names(donor)
    authors = {names[k]: v.clone() for k, v in donor.state_dict().items()}

    converted = convert_state_dict({"module." + k: v for k, v in authors.items()})
    assert infer_model_config(converted) == config
    model = FBANet(config).eval()
    model.load_state_dict(converted, strict=True)

    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        expected = _authors_forward(authors, x)
        ours = model.decode(x, (0, 1, 2))
    for a, b in zip(expected, ours, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
