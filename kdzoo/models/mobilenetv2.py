"""MobileNetV2 for CIFAR-sized inputs (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018), as the CRD reference code builds it.

The architecture named ``MobileNetV2`` in the CRD tables is the reference's ``mobile_half``:
expansion 6, width multiplier 0.5, a stride-2 stem, 1280-d head. Every inverted-residual block ends
in a linear bottleneck (batch norm, no ReLU, plus the identity when shapes allow), so the stage
outputs have no final ReLU and their pre-activation is the output itself.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import DistillModel, check_in_channels
from .registry import register_model

__all__ = ["MobileNetV2", "InvertedResidual"]


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, stride: int
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            # He-normal over fan-out, N(0, 2 / (k*k*out_channels)), as the reference (depthwise
            # convs included: their fan-out is also k*k*out_channels).
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection (Sandler et al., 2018).

    The expansion conv is kept even for expansion 1, as in the reference, so checkpoints match.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            # No ReLU after the projection: the linear bottleneck of the paper.
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


@register_model
class MobileNetV2(DistillModel):
    """MobileNetV2 (Sandler et al., 2018); the defaults give the CRD tables' ``MobileNetV2``
    (the reference's ``mobile_half``: expansion 6, width 0.5), so the class is its own factory.

    Features: ``[stem, blocks[1], blocks[2], blocks[4], blocks[6], pooled]`` (stage outputs at
    16x16, 8x8, 4x4, 2x2 for a 32x32 input). Each stage output ends in a linear bottleneck with
    no ReLU, so ``preact=True`` returns the very same tensors. :meth:`get_bn_before_relu` returns
    the reference's choice, the last batch norm of each of those stages (not followed by a ReLU).
    ``in_channels`` is the number of input image channels (see :class:`~kdzoo.models.base.DistillModel`).
    """

    classifier_name = "classifier"
    # Index of the inverted-residual group whose output is each stage feature.
    stage_ends = (1, 2, 4, 6)

    def __init__(
        self,
        num_classes: int = 100,
        expand_ratio: int = 6,
        width_mult: float = 0.5,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = check_in_channels(in_channels)
        # (expansion, output channels at width 1, number of blocks, stride of the first block);
        # strides of the paper's ImageNet net except the second group, kept at 1 for 32x32 inputs.
        settings = [
            (1, 16, 1, 1),
            (expand_ratio, 24, 2, 1),
            (expand_ratio, 32, 3, 2),
            (expand_ratio, 64, 4, 2),
            (expand_ratio, 96, 3, 1),
            (expand_ratio, 160, 3, 2),
            (expand_ratio, 320, 1, 1),
        ]
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, stride=2)

        self.blocks = nn.ModuleList()
        for t, c, n, s in settings:
            out_channels = int(c * width_mult)
            group = []
            for i in range(n):
                group.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t))
                channels = out_channels
            self.blocks.append(nn.Sequential(*group))

        # The head is only widened, never narrowed, by the width multiplier.
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, self.last_channel, 1, stride=1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        # The reference pools with a fixed kernel equal to the 32x32 map size (2x2); adaptive
        # pooling is identical there and works for any input size.
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        _init_weights(self)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> list[torch.Tensor]:
        # preact needs no special handling: no stage output passes through a ReLU (see class doc).
        x = self.conv1(x)
        feats = [x]
        for i, group in enumerate(self.blocks):
            x = group(x)
            if i in self.stage_ends:
                feats.append(x)
        x = self.conv2(x)
        feats.append(torch.flatten(self.avgpool(x), 1))
        return feats

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last batch norm of blocks 1, 2, 4 and 6, as in the reference."""
        return [self.blocks[i][-1].conv[-1] for i in self.stage_ends]


def mobile_half(num_classes: int = 100, in_channels: int = 3) -> MobileNetV2:
    """The reference's name for ``MobileNetV2`` (Sandler et al., 2018) at width 0.5."""
    return MobileNetV2(num_classes=num_classes, expand_ratio=6, width_mult=0.5, in_channels=in_channels)
