"""ImageNet-style ResNets adapted to CIFAR (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016): a 3x3 stride-1 stem without max pooling, then four stages of
64/128/256/512 base channels. ``ResNet50`` is the CRD benchmark's teacher; the other depths are
provided as unregistered constructors.

Module names follow the reference code (``shortcut``, ``linear``) so its checkpoints load with
``strict=True``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DistillModel, PreActBlock, check_in_channels, run_stage
from .registry import register_model

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNet101",
    "ResNet152",
]


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (an empty ``Sequential``) unless the shape changes, then a 1x1 projection + BN."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(PreActBlock):
    """Two 3x3 convolutions plus the (possibly projected) input."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)  # in place, as the reference
        return out


class Bottleneck(PreActBlock):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand (x4) plus the (possibly projected) input."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        out += self.shortcut(x)  # in place, as the reference
        return out


class ResNet(DistillModel):
    """Four-stage ResNet for 32x32 inputs (strides 1, 2, 2, 2), global average pooling, ``linear``.

    ``zero_init_residual`` zeroes the last BN of every residual branch so each block starts as
    the identity (Goyal et al. 2017); off by default, as in the reference. ``in_channels`` is the
    number of input image channels (see :class:`~kdzoo.models.base.DistillModel`).
    """

    classifier_name = "linear"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        num_classes: int = 100,
        zero_init_residual: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = check_in_channels(in_channels)
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.constant_(m.last_bn.weight, 0)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, num_blocks: int, stride: int
    ) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, block_stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    @property
    def _stages(self) -> tuple[nn.Sequential, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        feats = [x]
        for stage in self._stages:
            x, pre = run_stage(stage, x)
            feats.append(pre if preact else x)
        feats.append(torch.flatten(self.avgpool(x), 1))
        return feats

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [stage[-1].last_bn for stage in self._stages]


def ResNet18(**kwargs) -> ResNet:
    """ResNet-18 for CIFAR (He et al. 2016); not part of the benchmark, so not registered."""
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def ResNet34(**kwargs) -> ResNet:
    """ResNet-34 for CIFAR (He et al. 2016); not part of the benchmark, so not registered."""
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


@register_model
def ResNet50(**kwargs) -> ResNet:
    """ResNet-50 for CIFAR (He et al. 2016): bottleneck blocks [3, 4, 6, 3]."""
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def ResNet101(**kwargs) -> ResNet:
    """ResNet-101 for CIFAR (He et al. 2016); not part of the benchmark, so not registered."""
    return ResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


def ResNet152(**kwargs) -> ResNet:
    """ResNet-152 for CIFAR (He et al. 2016); not part of the benchmark, so not registered."""
    return ResNet(Bottleneck, [3, 8, 36, 3], **kwargs)
