"""VGG with batch norm for CIFAR-sized inputs (Simonyan & Zisserman, ICLR 2015).

This is the variant of the CRD reference code: five blocks of 3x3 convolutions, each conv followed
by batch norm and ReLU, max-pooling between blocks, global average pooling and a single linear
classifier on the 512-d vector instead of VGG's three fully connected layers. The names ``vgg8``
... ``vgg19`` are the batch-norm models (the reference registers ``vgg8_bn`` etc. under them).

Features: ``[relu(block0), stage1, stage2, stage3, stage4, pooled]`` where stage ``i`` is
``relu(block_i(x))`` and its pre-activation is the output of the block's last batch norm.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DistillModel, check_in_channels
from .registry import register_model

__all__ = ["VGG", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]

# Conv widths of block0..block4 per depth (depth counts convs plus the classifier; vgg8 is the
# reference's extra-shallow configuration "S", the others are VGG's configurations A, B, D, E).
CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
    "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _make_block(widths: Sequence[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_channels = width
    # The block ends at its last batch norm: forward applies that ReLU itself, so the
    # pre-activation (preact features, get_bn_before_relu) is available without recomputation.
    return nn.Sequential(*layers[:-1])


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            # He-normal over fan-out, N(0, 2 / (k*k*out_channels)), as the reference.
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class VGG(DistillModel):
    """VGG-BN backbone (Simonyan & Zisserman, 2015) with the CRD feature contract.

    ``cfg`` lists the conv widths of the five blocks; the last block must have 512 channels.
    ``in_channels`` is the number of input image channels (see :class:`~kdzoo.models.base.DistillModel`).
    """

    classifier_name = "classifier"

    def __init__(
        self, cfg: Sequence[Sequence[int]], num_classes: int = 100, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.in_channels = check_in_channels(in_channels)
        if len(cfg) != 5:
            raise ValueError(f"VGG needs conv widths for 5 blocks, got {len(cfg)}")
        block_inputs = [in_channels] + [widths[-1] for widths in cfg[:-1]]
        self.block0 = _make_block(cfg[0], block_inputs[0])
        self.block1 = _make_block(cfg[1], block_inputs[1])
        self.block2 = _make_block(cfg[2], block_inputs[2])
        self.block3 = _make_block(cfg[3], block_inputs[3])
        self.block4 = _make_block(cfg[4], block_inputs[4])

        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))

        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        _init_weights(self)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> list[torch.Tensor]:
        # As in the reference, pool3 runs only for 64-pixel-high inputs (Tiny-ImageNet), so that
        # block4 sees a 4x4 map there as it does at 32x32; other sizes skip it and pool4 is
        # adaptive, so any input size works.
        pool3 = self.pool3 if x.shape[2] == 64 else None
        x = F.relu(self.block0(x))
        feats = [x]
        x = self.pool0(x)
        stages = (self.block1, self.block2, self.block3, self.block4)
        downsamples = (self.pool1, self.pool2, pool3, None)
        for block, downsample in zip(stages, downsamples):
            pre = block(x)
            x = F.relu(pre)
            feats.append(pre if preact else x)
            if downsample is not None:
                x = downsample(x)
        feats.append(torch.flatten(self.pool4(x), 1))
        return feats

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last batch norm of block1..block4 (the stem block0 is not a stage)."""
        return [self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1]]


@register_model
def vgg8(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-8 with batch norm (Simonyan & Zisserman, 2015), the reference's ``vgg8_bn``."""
    return VGG(CONFIGS["vgg8"], num_classes=num_classes, in_channels=in_channels)


@register_model
def vgg11(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-11 with batch norm (Simonyan & Zisserman, 2015), the reference's ``vgg11_bn``."""
    return VGG(CONFIGS["vgg11"], num_classes=num_classes, in_channels=in_channels)


@register_model
def vgg13(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-13 with batch norm (Simonyan & Zisserman, 2015), the reference's ``vgg13_bn``."""
    return VGG(CONFIGS["vgg13"], num_classes=num_classes, in_channels=in_channels)


@register_model
def vgg16(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-16 with batch norm (Simonyan & Zisserman, 2015), the reference's ``vgg16_bn``."""
    return VGG(CONFIGS["vgg16"], num_classes=num_classes, in_channels=in_channels)


@register_model
def vgg19(num_classes: int = 100, in_channels: int = 3) -> VGG:
    """VGG-19 with batch norm (Simonyan & Zisserman, 2015), the reference's ``vgg19_bn``."""
    return VGG(CONFIGS["vgg19"], num_classes=num_classes, in_channels=in_channels)


# The reference's own function names, for code ported from it (not separate architectures).
vgg8_bn = vgg8
vgg11_bn = vgg11
vgg13_bn = vgg13
vgg16_bn = vgg16
vgg19_bn = vgg19
