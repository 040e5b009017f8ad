"""Float32 gradients of a small FBA-Net in both memory layouts against float64.

One training loss (``fba_loss``, batch 2 labeled + 2 unlabeled, random weights and
images) per seed and configuration; prints the relative distance of the contiguous and
the channels-last float32 weight gradients from the float64 ones, and from each other::

    python benchmarks/channels_last_gradients.py

(The biases of convolutions followed by batch norm are left out: their true gradient is 0.)
Measured on the 2-core Xeon of the development machine: both layouts are 1e-5 to 3e-2 off
float64, channels-last more often the further, and single convolutions are exact to
rounding in both (``fbanet.device.channels_last_gradients_ok``): the small network's
gradient itself is ill-conditioned (batch norm over 4 values at its 1x1x1 bottleneck, the
ranked loss's clamps and ranks), so any rounding moves it by percents.
"""

from __future__ import annotations

import sys

import torch

from fbanet.config import ModelConfig, TrainConfig
from fbanet.model.losses import fba_loss
from fbanet.model.network import FBANet

Gradients = dict[str, torch.Tensor]


def gradients(
    state: Gradients, config: ModelConfig, batch: tuple[torch.Tensor, torch.Tensor],
    dtype: torch.dtype, fmt: torch.memory_format,
) -> Gradients:  # fmt: skip
    """Weight gradients of one loss in ``dtype`` and layout ``fmt``."""
    model = FBANet(config)
    model.load_state_dict(state)
    model = model.to(dtype).to(memory_format=fmt).train()  # type: ignore[call-overload]
    x, y = batch
    out = model(x.to(dtype).contiguous(memory_format=fmt))
    train = TrainConfig(rampup_length=0.0)
    fba_loss(out.logits, out.fg, out.bg, y, 1, train).total.backward()
    return {
        n: p.grad.double()
        for n, p in model.named_parameters()
        if p.grad is not None and ("bias" not in n or "out_conv" in n)
    }


def distance(a: Gradients, b: Gradients) -> float:
    """|a - b| / |b| over all tensors."""
    num = sum(float((a[n] - b[n]).square().sum()) for n in b)
    return (num / sum(float(b[n].square().sum()) for n in b)) ** 0.5


def main() -> int:
    torch.set_num_threads(1)
    print("| module | filters | patch | seed | contiguous-f64 | CL-f64 | CL-contiguous |")
    print("|---|---|---|---|---|---|---|")
    for contrast in ("authors", "learning"):
        for filters, side in ((4, 16), (8, 32)):
            config = ModelConfig(
                base_filters=filters, patch_size=(side,) * 3, projection_dim=8,
                dropout=0.0, contrast=contrast,
            )  # fmt: skip
            for seed in range(3):
                g = torch.Generator().manual_seed(seed)
                x = torch.randn(4, 1, side, side, side, generator=g)
                y = (torch.rand(2, side, side, side, generator=g) > 0.6).long()
                torch.manual_seed(seed)
                state = FBANet(config).state_dict()
                ref = gradients(state, config, (x, y), torch.float64, torch.contiguous_format)
                c = gradients(state, config, (x, y), torch.float32, torch.contiguous_format)
                cl = gradients(state, config, (x, y), torch.float32, torch.channels_last_3d)
                print(
                    f"| {contrast} | {filters} | {side} | {seed} | {distance(c, ref):.1e} | "
                    f"{distance(cl, ref):.1e} | {distance(cl, c):.1e} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
