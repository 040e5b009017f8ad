"""The FBA-Net network: a V-Net encoder, three decoders and their contrastive modules.

Layout follows the authors' implementation (so their checkpoints load through
:mod:`fbanet.model.authors`), with descriptive names of our own:

- ``encoder.stages[i]``: stacks of 3x3x3 conv + BN + ReLU (1, 2, 3, 3, 3 convs), f to 16f
  channels; ``encoder.downs[i]``: 2x2x2 stride-2 conv + BN + ReLU between them.
- ``decoders[k]``: ``ups[i]`` double the resolution (transposed conv, trilinear or nearest,
  the only difference between the three decoders), are added to the matching encoder
  features, then ``stages[i]`` (3, 3, 2, 1 convs) and a 1x1x1 ``out_conv`` to K classes.
- ``contrast[k]``: the contrastive module on decoder k's logits, a 3x3x3 stride-2 conv to one
  channel + BN + sigmoid giving a foreground map M, whose flattened foreground and
  background vectors go through projection heads ``fg_head``/``bg_head``. With
  ``contrast = learning`` it is a :class:`FeatureContrastModule` instead (ours, not the
  authors').
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn

from fbanet.config import ContrastModule, ModelConfig, Upsampling

DECODER_UPSAMPLING: tuple[Upsampling, ...] = (
    Upsampling.TRANSPOSED,
    Upsampling.TRILINEAR,
    Upsampling.NEAREST,
)
ENCODER_DEPTHS: tuple[int, ...] = (1, 2, 3, 3, 3)
DECODER_DEPTHS: tuple[int, ...] = (3, 3, 2, 1)


def conv_stack(channels_in: int, channels_out: int, depth: int) -> nn.Sequential:
    """``depth`` units of 3x3x3 conv (padding 1) + batch norm + ReLU, flat in one Sequential."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [
            nn.Conv3d(channels_in if i == 0 else channels_out, channels_out, 3, padding=1),
            nn.BatchNorm3d(channels_out),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def down_block(channels_in: int, channels_out: int) -> nn.Sequential:
    """Halve the resolution: 2x2x2 stride-2 conv + batch norm + ReLU."""
    return nn.Sequential(
        nn.Conv3d(channels_in, channels_out, 2, stride=2),
        nn.BatchNorm3d(channels_out),
        nn.ReLU(inplace=True),
    )


def up_block(channels_in: int, channels_out: int, mode: Upsampling) -> nn.Sequential:
    """Double the resolution with ``mode``, then batch norm + ReLU."""
    if mode is Upsampling.TRANSPOSED:
        resample: list[nn.Module] = [nn.ConvTranspose3d(channels_in, channels_out, 2, stride=2)]
    elif mode is Upsampling.TRILINEAR:
        resample = [
            nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True),
            nn.Conv3d(channels_in, channels_out, 3, padding=1),
        ]
    else:
        resample = [
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv3d(channels_in, channels_out, 3, padding=1),
        ]
    return nn.Sequential(*resample, nn.BatchNorm3d(channels_out), nn.ReLU(inplace=True))


class VNetEncoder(nn.Module):
    """V-Net encoder: five stages of widths f, 2f, 4f, 8f, 16f.

    Input (B, C_in, X, Y, Z) with X, Y, Z multiples of 16; output the five stages' features,
    stage s of shape (B, f * 2**s, X / 2**s, Y / 2**s, Z / 2**s).
    """

    def __init__(self, in_channels: int, base_filters: int, dropout: float) -> None:
        super().__init__()
        widths = [base_filters * 2**s for s in range(len(ENCODER_DEPTHS))]
        self.stages = nn.ModuleList(
            conv_stack(in_channels if s == 0 else widths[s], widths[s], depth)
            for s, depth in enumerate(ENCODER_DEPTHS)
        )
        self.downs = nn.ModuleList(down_block(widths[s], widths[s + 1]) for s in range(4))
        self.dropout = nn.Dropout3d(dropout)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for s, stage in enumerate(self.stages):
            x = stage(x)
            features.append(x)
            if s < len(self.downs):
                x = self.downs[s](x)
        features[-1] = self.dropout(features[-1])
        return features


class VNetDecoder(nn.Module):
    """V-Net decoder: four upsampling steps with additive skip connections.

    Input: the encoder's five feature maps; output logits (B, K, X, Y, Z).
    """

    def __init__(self, num_classes: int, base_filters: int, mode: Upsampling, dropout: float):
        super().__init__()
        widths = [base_filters * 2**s for s in range(len(ENCODER_DEPTHS))]
        self.mode = mode
        self.ups = nn.ModuleList(up_block(widths[4 - i], widths[3 - i], mode) for i in range(4))
        self.stages = nn.ModuleList(
            conv_stack(widths[3 - i], widths[3 - i], depth)
            for i, depth in enumerate(DECODER_DEPTHS)
        )
        self.dropout = nn.Dropout3d(dropout)
        self.out_conv = nn.Conv3d(base_filters, num_classes, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.classify(self.last_features(features))

    def last_features(self, features: Sequence[Tensor]) -> Tensor:
        """The last stage's features (B, f, X, Y, Z), before dropout and ``out_conv``."""
        x = features[4]
        for i, (up, stage) in enumerate(zip(self.ups, self.stages, strict=True)):
            x = stage(up(x) + features[3 - i])
        return x

    def classify(self, x: Tensor) -> Tensor:
        """Logits (B, K, X, Y, Z) of the last stage's features."""
        return self.out_conv(self.dropout(x))


class ContrastiveModule(nn.Module):
    """Foreground/background representations of one decoder's logits.

    A 3x3x3 stride-2 conv (K -> 1, no bias) + BN + sigmoid gives a foreground map M of size
    (h, w, d) = ceil((X, Y, Z) / 2). Its foreground vector flatten(M) / (h*w*d) and
    background vector flatten(1 - M) / (h*w*d) each go through a projection head
    Linear(h*w*d -> projection_dim) + ReLU.
    """

    def __init__(self, num_classes: int, projection_input: int, projection_dim: int) -> None:
        super().__init__()
        self.map_conv = nn.Conv3d(num_classes, 1, 3, stride=2, padding=1, bias=False)
        self.map_norm = nn.BatchNorm3d(1)
        self.fg_head = nn.Sequential(nn.Linear(projection_input, projection_dim), nn.ReLU())
        self.bg_head = nn.Sequential(nn.Linear(projection_input, projection_dim), nn.ReLU())

    def forward(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Map logits (B, K, X, Y, Z) to foreground and background vectors (B, D) each."""
        fg_map = torch.sigmoid(self.map_norm(self.map_conv(logits)))
        flat = fg_map.reshape(fg_map.shape[0], -1)
        expected = self.fg_head[0].in_features
        if flat.shape[1] != expected:
            raise ValueError(
                f"the contrastive module was built for patches whose half-resolution map has "
                f"{expected} voxels, got a map of {tuple(fg_map.shape[2:])}: train with the "
                f"patch size of the model configuration"
            )
        voxels = flat.shape[1]
        return self.fg_head(flat / voxels), self.bg_head((1 - flat) / voxels)


class FeatureContrastModule(nn.Module):
    """Foreground/background representations that keep image information (not the paper's).

    Masked average pooling of one decoder's last features F (B, f, X, Y, Z) under its
    foreground probability M = softmax(logits)[:, 1]: fg = sum(M F) / sum(M) and
    bg = sum((1 - M) F) / sum(1 - M), each (B, f). One projection head, Linear(f -> 2f) +
    ReLU + Linear(2f -> D), is shared by both, so the two can only differ through the
    features they pool, never through separate heads' biases (how the authors' module
    collapses).
    """

    def __init__(self, channels: int, projection_dim: int) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(channels, 2 * channels), nn.ReLU(), nn.Linear(2 * channels, projection_dim)
        )

    def forward(self, features: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Map features (B, f, X, Y, Z) and logits (B, K, X, Y, Z) to fg, bg vectors (B, D)."""
        # At least float32 (bfloat16 autocast pools in float32), float64 stays float64.
        dtype = torch.promote_types(
            torch.promote_types(features.dtype, logits.dtype), torch.float32
        )
        weight = torch.softmax(logits.to(dtype), dim=1)[:, 1:2]
        values = features.to(dtype)
        axes = (2, 3, 4)
        # A patch without foreground (or background) pools over a tiny mass; the floor
        # keeps the mean finite there.
        fg = (weight * values).sum(axes) / weight.sum(axes).clamp_min(1e-6)
        bg = ((1 - weight) * values).sum(axes) / (1 - weight).sum(axes).clamp_min(1e-6)
        return self.head(fg), self.head(bg)


@dataclass
class FBANetOutput:
    """What one training forward pass gives, one entry per decoder.

    Attributes:
        logits: Decoder logits, each (B, K, X, Y, Z).
        fg: Foreground projections, each (B, D).
        bg: Background projections, each (B, D).
        contrast_inputs: Where the contrastive term's gradient enters the encoder and
            decoders, once: the logits the authors' modules read, or the decoders' last
            features that the learning modules pool (directly and through the logits).
    """

    logits: list[Tensor]
    fg: list[Tensor]
    bg: list[Tensor]
    contrast_inputs: list[Tensor] = field(default_factory=list)


class FBANet(nn.Module):
    """FBA-Net: shared V-Net encoder, three decoders and (for training) contrastive modules.

    Args:
        config: The architecture.
        with_contrast: Build the contrastive modules and projection heads. Inference does not
            need them (they hold most of the parameters), so model files leave them out.
    """

    def __init__(self, config: ModelConfig, with_contrast: bool = True) -> None:
        super().__init__()
        self.config = config
        self.encoder = VNetEncoder(config.in_channels, config.base_filters, config.dropout)
        self.decoders = nn.ModuleList(
            VNetDecoder(config.num_classes, config.base_filters, mode, config.dropout)
            for mode in DECODER_UPSAMPLING
        )
        self.contrast = (
            nn.ModuleList(_contrast_module(config) for _ in DECODER_UPSAMPLING)
            if with_contrast
            else None
        )

    def forward(self, x: Tensor) -> FBANetOutput:
        """Training pass over all decoders and contrastive modules.

        A network built without contrastive modules gives the logits alone (``fg``, ``bg``
        and ``contrast_inputs`` empty): for training without a contrastive term.

        Args:
            x: Images (B, C_in, X, Y, Z), (X, Y, Z) equal to the configured patch size.
        """
        features = self.encoder(x)
        if self.contrast is None:  # a run without a contrastive term (supervised, weight 0)
            return FBANetOutput([decoder(features) for decoder in self.decoders], [], [])
        if self.config.contrast is ContrastModule.LEARNING:
            decoders = cast(list[VNetDecoder], list(self.decoders))
            last = [decoder.last_features(features) for decoder in decoders]
            logits = [decoder.classify(f) for decoder, f in zip(decoders, last, strict=True)]
            pairs = [m(f, out) for m, f, out in zip(self.contrast, last, logits, strict=True)]
            inputs = last  # the logits are computed from them: they carry both paths
        else:
            logits = [decoder(features) for decoder in self.decoders]
            pairs = [module(out) for module, out in zip(self.contrast, logits, strict=True)]
            inputs = list(logits)
        return FBANetOutput(logits, [p[0] for p in pairs], [p[1] for p in pairs], inputs)

    def decode(self, x: Tensor, decoders: Sequence[int] = (0,)) -> list[Tensor]:
        """Logits of the chosen decoders only (no projection heads run).

        Args:
            x: Images (B, C_in, X, Y, Z), sides multiples of 16.
            decoders: Indices (0, 1, 2) of the decoders to run; decoder 0 is the one the
                authors evaluate.

        Returns:
            One logits tensor (B, K, X, Y, Z) per requested decoder.
        """
        for index in decoders:
            if not 0 <= index < len(self.decoders):
                raise ValueError(
                    f"decoder index {index!r} out of range 0..{len(self.decoders) - 1}"
                )
        features = self.encoder(x)
        return [self.decoders[i](features) for i in decoders]

    def segment(self, x: Tensor, decoders: Sequence[int] = (0,)) -> Tensor:
        """Class probabilities (B, K, X, Y, Z): softmax of each chosen decoder, averaged."""
        logits = self.decode(x, decoders)
        probs = [torch.softmax(out.float(), dim=1) for out in logits]
        return probs[0] if len(probs) == 1 else torch.stack(probs).mean(dim=0)


def _contrast_module(config: ModelConfig) -> nn.Module:
    if config.contrast is ContrastModule.LEARNING:
        return FeatureContrastModule(config.base_filters, config.projection_dim)
    return ContrastiveModule(config.num_classes, config.projection_input, config.projection_dim)


def inference_state_dict(model: FBANet) -> dict[str, Tensor]:
    """The weights segmentation needs: encoder and decoders, without contrastive modules."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("contrast.")}
