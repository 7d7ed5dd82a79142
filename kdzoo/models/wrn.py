"""Wide Residual Networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: a 16-channel 3x3 stem, three stages of ``(d - 4) / 6`` pre-activation blocks with
16k/32k/64k channels (strides 1, 2, 2), then BN + ReLU, global average pooling and ``fc``.
Module names follow the reference code (``block1.layer.0.convShortcut``, ...) so its checkpoints
load with ``strict=True``.

Features, as in the reference: ``[conv1 output, block1, block2, block3, pooled]``. The blocks are
pre-activation blocks, so a stage output is a residual sum that no ReLU follows inside the stage;
the BN + ReLU applied to it belongs to the next block (or to the head for ``block3``).

``preact=True`` reports, as the reference does for AB, the value right before the ReLU that a
stage output meets next: the output of the batch norm it feeds (``block2.layer[0].bn1(block1)``,
``block3.layer[0].bn1(block2)``, ``bn1(block3)``, i.e. ``get_bn_before_relu()[i](stage_i)``).
Unlike the reference, each of those batch norms still runs once per forward pass: the forward keeps
their output, which is both reported and consumed.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DistillModel, check_in_channels
from .registry import register_model

__all__ = ["BasicBlock", "NetworkBlock", "WideResNet", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


class BasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the shortcut.

    When the shape changes, the 1x1 shortcut projection reads the activated input (BN-ReLU of
    ``x``), otherwise the shortcut is ``x`` itself.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_activated(x, F.relu(self.bn1(x)))

    def forward_activated(self, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The block given ``act = relu(bn1(x))`` already computed (lets the caller keep bn1's output)."""
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return out + shortcut


class NetworkBlock(nn.Module):
    """One WRN stage: ``nb_layers`` blocks, the first carrying the stride and the width change."""

    def __init__(
        self,
        nb_layers: int,
        in_planes: int,
        out_planes: int,
        block: type[BasicBlock],
        stride: int,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(nb_layers)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    @property
    def entry_bn(self) -> nn.BatchNorm2d:
        """The batch norm that the stage applies first to its input."""
        return self.layer[0].bn1

    def forward_activated(self, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The stage given ``act = relu(entry_bn(x))`` already computed."""
        first, *rest = self.layer
        out = first.forward_activated(x, act)
        for block in rest:
            out = block(out)
        return out


class WideResNet(DistillModel):
    """WRN-``depth``-``widen_factor`` for 32x32 inputs (see the module docstring for features);
    ``in_channels`` is the number of input image channels (see :class:`~kdzoo.models.base.DistillModel`)."""

    classifier_name = "fc"

    def __init__(
        self,
        depth: int,
        num_classes: int = 100,
        widen_factor: int = 1,
        drop_rate: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.in_channels = check_in_channels(in_channels)
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.nChannels = channels[3]

        self.conv1 = nn.Conv2d(in_channels, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], BasicBlock, 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], BasicBlock, 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], BasicBlock, 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        # Adaptive pooling equals the reference's fixed 8x8 pooling at 32x32 and works at any size.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init with fan_out, i.e. N(0, 2 / (k*k*out_channels)), as in the reference.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> list[torch.Tensor]:
        stem = self.conv1(x)
        s1 = self.block1(stem)
        # Each stage output is normalised exactly once, by the BN that consumes it; keeping that
        # BN's output lets preact report it without a second (running-stat-updating) BN call.
        p1 = self.block2.entry_bn(s1)
        s2 = self.block2.forward_activated(s1, F.relu(p1))
        p2 = self.block3.entry_bn(s2)
        s3 = self.block3.forward_activated(s2, F.relu(p2))
        p3 = self.bn1(s3)
        pooled = torch.flatten(self.avgpool(F.relu(p3)), 1)
        stages = [p1, p2, p3] if preact else [s1, s2, s3]
        return [stem, *stages, pooled]

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        return [self.block2.entry_bn, self.block3.entry_bn, self.bn1]


@register_model
def wrn_16_1(**kwargs) -> WideResNet:
    """WRN-16-1 (Zagoruyko & Komodakis 2016)."""
    return WideResNet(depth=16, widen_factor=1, **kwargs)


@register_model
def wrn_16_2(**kwargs) -> WideResNet:
    """WRN-16-2 (Zagoruyko & Komodakis 2016)."""
    return WideResNet(depth=16, widen_factor=2, **kwargs)


@register_model
def wrn_40_1(**kwargs) -> WideResNet:
    """WRN-40-1 (Zagoruyko & Komodakis 2016)."""
    return WideResNet(depth=40, widen_factor=1, **kwargs)


@register_model
def wrn_40_2(**kwargs) -> WideResNet:
    """WRN-40-2 (Zagoruyko & Komodakis 2016)."""
    return WideResNet(depth=40, widen_factor=2, **kwargs)
