"""MobileNetV3 feature extractor (Howard et al., ICCV 2019), as laid out by torchvision.

Why not torchvision itself: PyPI carries only CUDA builds of torchvision, and each pins the
same-version CUDA torch, so a CPU machine or a Jetson installing avemo[train] pulled about
4.5 GB of CUDA libraries for 60 lines of layer tables (and ran out of disk in CI). The module
tree, parameter names, channel rounding, BatchNorm eps and weight initialisation follow
torchvision 0.29's ``MobileNetV3.features``, so checkpoints trained with either load in both.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Bneck(NamedTuple):
    """One inverted-residual block of the paper's Table 1/2 (channels before width scaling)."""

    in_ch: int
    kernel: int
    expanded: int
    out_ch: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (hard-swish)
    stride: int


SETTINGS: dict[str, tuple[tuple[Bneck, ...], int]] = {
    # name: (blocks, first conv channels); the last conv has 6x the last block's output.
    "mobilenet_v3_small": (
        (
            Bneck(16, 3, 16, 16, True, "RE", 2),
            Bneck(16, 3, 72, 24, False, "RE", 2),
            Bneck(24, 3, 88, 24, False, "RE", 1),
            Bneck(24, 5, 96, 40, True, "HS", 2),
            Bneck(40, 5, 240, 40, True, "HS", 1),
            Bneck(40, 5, 240, 40, True, "HS", 1),
            Bneck(40, 5, 120, 48, True, "HS", 1),
            Bneck(48, 5, 144, 48, True, "HS", 1),
            Bneck(48, 5, 288, 96, True, "HS", 2),
            Bneck(96, 5, 576, 96, True, "HS", 1),
            Bneck(96, 5, 576, 96, True, "HS", 1),
        ),
        16,
    ),
    "mobilenet_v3_large": (
        (
            Bneck(16, 3, 16, 16, False, "RE", 1),
            Bneck(16, 3, 64, 24, False, "RE", 2),
            Bneck(24, 3, 72, 24, False, "RE", 1),
            Bneck(24, 5, 72, 40, True, "RE", 2),
            Bneck(40, 5, 120, 40, True, "RE", 1),
            Bneck(40, 5, 120, 40, True, "RE", 1),
            Bneck(40, 3, 240, 80, False, "HS", 2),
            Bneck(80, 3, 200, 80, False, "HS", 1),
            Bneck(80, 3, 184, 80, False, "HS", 1),
            Bneck(80, 3, 184, 80, False, "HS", 1),
            Bneck(80, 3, 480, 112, True, "HS", 1),
            Bneck(112, 3, 672, 112, True, "HS", 1),
            Bneck(112, 5, 672, 160, True, "HS", 2),
            Bneck(160, 5, 960, 160, True, "HS", 1),
            Bneck(160, 5, 960, 160, True, "HS", 1),
        ),
        16,
    ),
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8, never more than 10% down (the reference implementation's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come only from the frames ``mask`` marks real, so the zero frames a
    batch is padded with move neither the normalisation nor the running statistics. Without a mask, or in eval
    mode, it is nn.BatchNorm2d (same parameters and buffers, so checkpoints and exported graphs are unchanged)."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None or not self.training:
            return super().forward(x)
        keep = mask[:, None, None, None]
        count = mask.sum() * (x.shape[2] * x.shape[3])
        values = x.float()  # statistics in fp32 under autocast too
        mean = torch.where(keep, values, 0.0).sum(dim=(0, 2, 3)) / count.clamp_min(1)
        centred = values - mean[None, :, None, None]
        var = torch.where(keep, centred.square(), 0.0).sum(dim=(0, 2, 3)) / count.clamp_min(1)
        with torch.no_grad():
            # momentum is always set (ConvNormAct); a batch without a real frame leaves the statistics alone
            step = float(self.momentum or 0.0) * (count > 0).float()
            self.running_mean.lerp_(mean, step)
            self.running_var.lerp_(var * count / (count - 1).clamp_min(1), step)  # unbiased, as BatchNorm keeps
            self.num_batches_tracked.add_(1)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return (centred * scale[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


def run_masked(layers: Iterable[nn.Module], x: Tensor, mask: Tensor | None) -> Tensor:
    """``layers`` in turn, handing ``mask`` (real frames) to those that take it."""
    for layer in layers:
        x = layer(x, mask) if isinstance(layer, (MaskedBatchNorm2d, ConvNormAct, InvertedResidual)) else layer(x)
    return x


class ConvNormAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation; children named 0, 1, 2 as in torchvision."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.Hardswish,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            # eps as torchvision; momentum 0.1, not its 0.01 for fine-tuning ImageNet weights: trained from
            # scratch the running statistics then lag far behind the weights and eval-mode outputs collapse.
            MaskedBatchNorm2d(cout, eps=0.001, momentum=0.1),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return run_masked(self, x, mask)


class SqueezeExcitation(nn.Module):
    """Channel gate: global average -> fc1 -> ReLU -> fc2 -> hard-sigmoid (1x1 convs, as torchvision)."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # exports as GlobalAveragePool, as torchvision's did
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(F.relu(self.fc1(self.avgpool(x))))
        return x * F.hardsigmoid(scale)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise -> optional SE -> project (1x1), residual when shapes allow."""

    def __init__(self, cfg: Bneck, width: float) -> None:
        super().__init__()
        cin, expanded, cout = (make_divisible(c * width) for c in (cfg.in_ch, cfg.expanded, cfg.out_ch))
        act = nn.Hardswish if cfg.activation == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvNormAct(cin, expanded, act=act))
        layers.append(ConvNormAct(expanded, expanded, cfg.kernel, cfg.stride, groups=expanded, act=act))
        if cfg.use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
        layers.append(ConvNormAct(expanded, cout, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = cfg.stride == 1 and cin == cout

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        y = run_masked(self.block, x, mask)
        return x + y if self.use_residual else y


class Trunk(nn.Sequential):
    """torchvision's ``features`` Sequential; ``mask`` [N] bool marks real frames for training's BatchNorm."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return run_masked(self, x, mask)


def mobilenet_v3_features(name: str, width: float = 1.0) -> Trunk:
    """The convolutional trunk: [N, 3, H, W] -> [N, C, H/32, W/32], randomly initialised."""
    if name not in SETTINGS:
        raise ValueError(f"unknown CNN {name!r}; known: {', '.join(SETTINGS)}")
    blocks, first = SETTINGS[name]
    last_in = make_divisible(blocks[-1].out_ch * width)
    features = Trunk(
        ConvNormAct(3, make_divisible(first * width), 3, 2),
        *(InvertedResidual(b, width) for b in blocks),
        ConvNormAct(last_in, 6 * last_in),
    )
    for module in features.modules():  # torchvision's initialisation
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return features
