"""ShuffleNet V2 for CIFAR (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018), in the CIFAR variant of the CRD benchmark.

The CIFAR variant uses a 1x1 stem with no pooling, so the three stages run at 16x16, 8x8 and 4x4
for a 32x32 input. Module names follow the reference code so its checkpoints load with
``strict=True``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ShuffleNetv1 import channel_shuffle
from .base import DistillModel, check_in_channels
from .registry import register_model

__all__ = ["DownUnit", "BasicUnit", "ShuffleNetV2", "ShuffleV2"]

# Stage widths and final 1x1 conv width, then units per stage (after each stage's down unit).
CONFIGS: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.2: ((40, 80, 160, 512), (3, 3, 3)),
    0.3: ((40, 80, 160, 512), (3, 7, 3)),
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2: ((224, 488, 976, 2048), (3, 7, 3)),
}


class DownUnit(nn.Module):
    """Spatial down-sampling unit: two stride-2 branches on the full input, concatenated and
    shuffled, doubling the width (``out_channels`` in total)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        # Left branch: depthwise 3x3 (stride 2), then 1x1.
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # Right branch: 1x1, depthwise 3x3 (stride 2), 1x1.
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], dim=1), 2)


class BasicUnit(nn.Module):
    """Basic unit: the second half of the channels goes through 1x1, depthwise 3x3, 1x1; the first
    half passes unchanged; the halves are concatenated and shuffled."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def _split_and_branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The untouched half and the branch output before its final ReLU."""
        half = x.shape[1] // 2
        kept, branch = x[:, :half], x[:, half:]
        branch = F.relu(self.bn1(self.conv1(branch)))
        branch = self.bn3(self.conv3(self.bn2(self.conv2(branch))))
        return kept, branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, branch = self._split_and_branch(x)
        return channel_shuffle(torch.cat([kept, F.relu(branch)], dim=1), 2)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, pre-activation)``, both in the output's (shuffled) channel order.

        The kept half is itself a ReLU output (every unit's output is), so ``relu(preact)`` is
        exactly the output. The reference returns its pre-activation unshuffled, i.e. with channels
        that do not line up with the output's; we shuffle it like the output.
        """
        kept, branch = self._split_and_branch(x)
        out = channel_shuffle(torch.cat([kept, F.relu(branch)], dim=1), 2)
        pre = channel_shuffle(torch.cat([kept, branch], dim=1), 2)
        return out, pre


def _run_stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    *head, last = stage
    for unit in head:
        x = unit(x)
    return last.forward_with_preact(x)


class ShuffleNetV2(DistillModel):
    """ShuffleNet V2 for 32x32 inputs: 1x1 stem, three stages (a :class:`DownUnit` then
    :class:`BasicUnit` s), a 1x1 conv to ``out_channels[3]``, global average pooling, ``linear``.

    ``feats = [stem, stage1, stage2, stage3, pooled]``; ``feats[-2]`` is the third stage's output
    (before the final 1x1 conv, as in the reference) and ``feats[-1]`` pools the final conv's output.
    ``in_channels`` is the number of input image channels (see :class:`~kdzoo.models.base.DistillModel`).
    """

    classifier_name = "linear"

    def __init__(self, net_size: float = 1, num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = check_in_channels(in_channels)
        if net_size not in CONFIGS:
            raise ValueError(f"net_size must be one of {sorted(CONFIGS)}, got {net_size!r}")
        out_channels, num_blocks = CONFIGS[net_size]
        stem_channels = 24
        self.conv1 = nn.Conv2d(in_channels, stem_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        in_channels = stem_channels
        for index, (channels, blocks) in enumerate(zip(out_channels[:3], num_blocks), start=1):
            units: list[nn.Module] = [DownUnit(in_channels, channels)]
            units += [BasicUnit(channels) for _ in range(blocks)]
            self.add_module(f"layer{index}", nn.Sequential(*units))
            in_channels = channels
        self.conv2 = nn.Conv2d(in_channels, out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)
        # Weights keep PyTorch's default initialisation, as in the reference.

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> list[torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        feats = [x]
        for stage in self.stages:
            x, pre = _run_stage(stage, x)
            feats.append(pre if preact else x)
        x = F.relu(self.bn2(self.conv2(x)))
        # Adaptive pooling equals the reference's fixed 4x4 pooling at 32x32 and works at any size.
        feats.append(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return feats

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """``bn3`` of each stage's last unit: the end of the branch whose ReLU is the stage's last
        (the other half of the stage output passes through unchanged, so this batch norm covers
        half of the stage's channels).

        The reference raises ``NotImplementedError`` here (OFD never used ShuffleNets); this is our
        choice, one batch norm per stage.
        """
        return [stage[-1].last_bn for stage in self.stages]


@register_model
def ShuffleV2(num_classes: int = 100, **kwargs) -> ShuffleNetV2:
    """ShuffleNet V2 1x (Ma et al. 2018), CIFAR variant: 116/232/464 channels, 1024 before the
    classifier."""
    return ShuffleNetV2(net_size=1, num_classes=num_classes, **kwargs)
