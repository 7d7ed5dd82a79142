"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

Three stages of 16/32/64 channels (``x4`` variants: 64/128/256 after a 32-channel stem) with
``(depth - 2) / 6`` basic blocks each, as used as teachers and students in the CRD benchmark.
Module names follow the reference code so its checkpoints load with ``strict=True``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DistillModel, PreActBlock, check_in_channels, run_stage
from .registry import register_model

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a batch norm always follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(PreActBlock):
    """Two 3x3 convolutions plus the (possibly projected) input."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)  # in place, as the reference
        return out


class Bottleneck(PreActBlock):
    """1x1 reduce, 3x3, 1x1 expand (x4) plus the (possibly projected) input."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)  # in place, as the reference
        return out


class ResNet(DistillModel):
    """CIFAR ResNet: 3x3 stem, three stages (strides 1, 2, 2), global average pooling, ``fc``.

    ``num_filters`` gives the stem width followed by the three stage widths; ``in_channels`` is
    the number of input image channels (see :class:`~kdzoo.models.base.DistillModel`).
    """

    classifier_name = "fc"

    def __init__(
        self,
        depth: int,
        num_filters: Sequence[int],
        block_name: str = "BasicBlock",
        num_classes: int = 100,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = check_in_channels(in_channels)
        kind = block_name.lower()
        if kind == "basicblock":
            if (depth - 2) % 6 != 0:
                raise ValueError(f"BasicBlock ResNet depth must be 6n+2 (20, 32, 44, ...), got {depth}")
            n, block = (depth - 2) // 6, BasicBlock
        elif kind == "bottleneck":
            if (depth - 2) % 9 != 0:
                raise ValueError(f"Bottleneck ResNet depth must be 9n+2 (29, 47, 56, ...), got {depth}")
            n, block = (depth - 2) // 9, Bottleneck
        else:
            raise ValueError(f"block_name must be 'BasicBlock' or 'Bottleneck', got {block_name!r}")

        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(in_channels, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        # Adaptive pooling equals the reference's fixed 8x8 pooling at 32x32 and works at any size.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        feats = [x]
        for stage in (self.layer1, self.layer2, self.layer3):
            x, pre = run_stage(stage, x)
            feats.append(pre if preact else x)
        feats.append(torch.flatten(self.avgpool(x), 1))
        return feats

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [stage[-1].last_bn for stage in (self.layer1, self.layer2, self.layer3)]


def _cifar_resnet(depth: int, num_filters: Sequence[int], **kwargs) -> ResNet:
    return ResNet(depth, num_filters, "basicblock", **kwargs)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model
def resnet8(**kwargs) -> ResNet:
    """ResNet-8 for CIFAR (He et al. 2016), 1 basic block per stage."""
    return _cifar_resnet(8, _NARROW, **kwargs)


@register_model
def resnet14(**kwargs) -> ResNet:
    """ResNet-14 for CIFAR (He et al. 2016), 2 basic blocks per stage."""
    return _cifar_resnet(14, _NARROW, **kwargs)


@register_model
def resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR (He et al. 2016), 3 basic blocks per stage."""
    return _cifar_resnet(20, _NARROW, **kwargs)


@register_model
def resnet32(**kwargs) -> ResNet:
    """ResNet-32 for CIFAR (He et al. 2016), 5 basic blocks per stage."""
    return _cifar_resnet(32, _NARROW, **kwargs)


@register_model
def resnet44(**kwargs) -> ResNet:
    """ResNet-44 for CIFAR (He et al. 2016), 7 basic blocks per stage."""
    return _cifar_resnet(44, _NARROW, **kwargs)


@register_model
def resnet56(**kwargs) -> ResNet:
    """ResNet-56 for CIFAR (He et al. 2016), 9 basic blocks per stage."""
    return _cifar_resnet(56, _NARROW, **kwargs)


@register_model
def resnet110(**kwargs) -> ResNet:
    """ResNet-110 for CIFAR (He et al. 2016), 18 basic blocks per stage."""
    return _cifar_resnet(110, _NARROW, **kwargs)


@register_model
def resnet8x4(**kwargs) -> ResNet:
    """ResNet-8 for CIFAR (He et al. 2016) with 4x wider stages (64/128/256)."""
    return _cifar_resnet(8, _WIDE, **kwargs)


@register_model
def resnet32x4(**kwargs) -> ResNet:
    """ResNet-32 for CIFAR (He et al. 2016) with 4x wider stages (64/128/256)."""
    return _cifar_resnet(32, _WIDE, **kwargs)
