"""ShuffleNet V1 for CIFAR (Zhang et al., "ShuffleNet: An Extremely Efficient Convolutional Neural
Network for Mobile Devices", CVPR 2018), in the CIFAR variant of the CRD benchmark.

The CIFAR variant uses a 1x1 stem with no pooling, so the three stages run at 16x16, 8x8 and 4x4
for a 32x32 input. Module names follow the reference code so its checkpoints load with
``strict=True``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DistillModel, PreActBlock, check_in_channels, run_stage
from .registry import register_model

__all__ = ["channel_shuffle", "ShuffleUnit", "ShuffleNet", "ShuffleV1"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups: ``[a1 a2 | b1 b2] -> [a1 b1 a2 b2]``."""
    if groups == 1:
        return x
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(PreActBlock):
    """Grouped 1x1 conv, channel shuffle, depthwise 3x3 conv, grouped 1x1 conv; the result is added
    to the input (stride 1) or concatenated with its 3x3 average pooling (stride 2).

    ``out_planes`` is the unit's output width; at stride 2 the convolutional branch only produces
    ``out_planes - in_planes`` channels, the rest comes from the pooled input.
    """

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, groups: int, first_groups: int | None = None
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleUnit stride must be 1 or 2, got {stride}")
        if stride == 1 and in_planes != out_planes:
            raise ValueError(
                f"a stride-1 ShuffleUnit needs in_planes == out_planes ({in_planes} != {out_planes})"
            )
        self.stride = stride
        branch_planes = out_planes - in_planes if stride == 2 else out_planes
        mid_planes = branch_planes // 4
        # The first unit after the stem has too few input channels to split into groups.
        self.first_groups = groups if first_groups is None else first_groups

        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, branch_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_planes)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        # The paper has no ReLU after the depthwise conv; the reference code (whose checkpoints and
        # published numbers we reproduce) has one, so we keep it.
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, kernel_size=3, stride=2, padding=1)], dim=1)
        return out + x


class ShuffleNet(DistillModel):
    """ShuffleNet V1 for 32x32 inputs: 1x1 stem, three stages of :class:`ShuffleUnit` (the first
    unit of each stage halves the resolution), global average pooling, ``linear``.

    ``feats = [stem, stage1, stage2, stage3, pooled]``; every stage ends with a ReLU, so
    ``preact=True`` gives the residual sum (or concatenation) that the stage's last ReLU receives.
    ``in_channels`` is the number of input image channels (see :class:`~kdzoo.models.base.DistillModel`).
    """

    classifier_name = "linear"

    def __init__(
        self,
        out_planes: Sequence[int] = (240, 480, 960),
        num_blocks: Sequence[int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = check_in_channels(in_channels)
        stem_planes = 24
        self.conv1 = nn.Conv2d(in_channels, stem_planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_planes)
        in_planes = stem_planes
        for index, (planes, blocks) in enumerate(zip(out_planes, num_blocks), start=1):
            first_groups = 1 if index == 1 else groups
            units = [ShuffleUnit(in_planes, planes, stride=2, groups=groups, first_groups=first_groups)]
            units += [ShuffleUnit(planes, planes, stride=1, groups=groups) for _ in range(1, blocks)]
            self.add_module(f"layer{index}", nn.Sequential(*units))
            in_planes = planes
        self.num_stages = len(out_planes)
        self.linear = nn.Linear(in_planes, num_classes)
        # Weights keep PyTorch's default initialisation, as in the reference.

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i}") for i in range(1, self.num_stages + 1)]

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        feats = [x]
        for stage in self.stages:
            x, pre = run_stage(stage, x)
            feats.append(pre if preact else x)
        # Adaptive pooling equals the reference's fixed 4x4 pooling at 32x32 and works at any size.
        feats.append(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return feats

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """``bn3`` of each stage's last unit: it feeds the residual sum that the stage's final ReLU
        receives (as ``bn2`` of the last block does in a ResNet).

        The reference raises ``NotImplementedError`` here (OFD never used ShuffleNets); this is our
        choice, one batch norm per stage.
        """
        return [stage[-1].last_bn for stage in self.stages]


@register_model
def ShuffleV1(num_classes: int = 100, **kwargs) -> ShuffleNet:
    """ShuffleNet V1 with 3 groups (Zhang et al. 2018), CIFAR variant: 240/480/960 channels,
    4/8/4 units."""
    return ShuffleNet(
        out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups=3, num_classes=num_classes, **kwargs
    )
