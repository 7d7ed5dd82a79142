"""ImageNet ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) with the
feature contract of ``models/base.py``.

The layers are torchvision's own (:class:`torchvision.models.resnet.ResNet` is subclassed, not
rewritten), so state dicts are identical to torchvision's and its weight files load with
``strict=True`` (see :func:`load_torchvision_weights`).

Features: ``feats = [stem, layer1, layer2, layer3, layer4, pooled]`` where ``stem`` is the output
of conv1/bn1/ReLU *before* the max pooling (stride 2, 64 channels), as in the ImageNet ResNets of
the OFD and mdistiller code bases (the CRD code has no ImageNet backbone); ``feats[-2]`` is the
last convolutional map and ``feats[-1]`` the pooled vector fed to ``fc``.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ..helper.checkpoint import describe_mismatch, read_checkpoint_file
from .base import DistillModel, check_in_channels
from .registry import register_model

__all__ = [
    "ImageNetResNet",
    "imagenet_resnet18",
    "imagenet_resnet34",
    "imagenet_resnet50",
    "load_torchvision_weights",
]


def _block_pre_activation(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The residual sum that ``block``'s final ReLU receives, computed from the block's own modules
    exactly as torchvision's ``forward`` does (each batch norm runs once)."""
    if isinstance(block, BasicBlock):
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.bn2(block.conv2(out))
    elif isinstance(block, Bottleneck):
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        raise TypeError(f"unsupported residual block {type(block).__name__}")
    identity = x if block.downsample is None else block.downsample(x)
    return out + identity


def _last_bn(block: nn.Module) -> nn.BatchNorm2d:
    return block.bn3 if isinstance(block, Bottleneck) else block.bn2


class ImageNetResNet(DistillModel, ResNet):
    """torchvision's ResNet (same modules, same initialisation, same state dict) whose ``forward``
    follows the distillation contract: ``model(x)`` gives logits, ``model(x, is_feat=True,
    preact=False)`` gives ``(feats, logits)``.

    ``DistillModel`` comes first in the bases so that its ``forward`` replaces torchvision's.

    ``in_channels`` other than 3 replaces torchvision's 7x7 stride-2 ``conv1`` by one reading that
    many channels, initialised as torchvision initialises it (He normal, fan-out, ReLU gain). With
    the default 3 nothing is replaced, so modules, state dict and random draws are torchvision's.
    """

    classifier_name = "fc"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *args: Any,
        in_channels: int = 3,
        **kwargs: Any,
    ) -> None:
        # Keyword-only, so torchvision's positional arguments (num_classes, zero_init_residual, ...)
        # keep their places. Checked before anything is built, so a bad value costs no random draws.
        check_in_channels(in_channels)
        super().__init__(block, list(layers), *args, **kwargs)
        self.in_channels = in_channels
        if in_channels != 3:
            old = self.conv1
            self.conv1 = nn.Conv2d(
                in_channels,
                old.out_channels,
                kernel_size=old.kernel_size,
                stride=old.stride,
                padding=old.padding,
                bias=False,
            )
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(stem)
        feats = [stem]
        for stage in self.stages:
            *head, last = stage
            for block in head:
                x = block(x)
            # Running the last block by hand exposes its pre-ReLU sum without a second pass; out of
            # place so the pre-activation survives.
            pre = _block_pre_activation(last, x)
            x = F.relu(pre)
            feats.append(pre if preact else x)
        feats.append(torch.flatten(self.avgpool(x), 1))
        return feats

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The last batch norm of each stage's last block (``bn2`` of a basic block, ``bn3`` of a
        bottleneck): it feeds the residual sum that ends the stage. One per stage, four in all, as
        in the OFD authors' ImageNet ResNets."""
        return [_last_bn(stage[-1]) for stage in self.stages]


@register_model
def imagenet_resnet18(num_classes: int = 1000, **kwargs: Any) -> ImageNetResNet:
    """ResNet-18 for ImageNet (He et al. 2016); ``torchvision.models.resnet18`` state dict."""
    return ImageNetResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)


@register_model
def imagenet_resnet34(num_classes: int = 1000, **kwargs: Any) -> ImageNetResNet:
    """ResNet-34 for ImageNet (He et al. 2016); ``torchvision.models.resnet34`` state dict."""
    return ImageNetResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, **kwargs)


@register_model
def imagenet_resnet50(num_classes: int = 1000, **kwargs: Any) -> ImageNetResNet:
    """ResNet-50 for ImageNet (He et al. 2016); ``torchvision.models.resnet50`` state dict."""
    return ImageNetResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, **kwargs)


def load_torchvision_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a torchvision ``.pth`` state dict from ``path`` into ``model`` with ``strict=True``.

    Raises ``RuntimeError`` naming the file and listing the missing keys, unexpected keys and
    shape mismatches when the file does not fit the model (e.g. resnet18 weights into a ResNet-50,
    or a 1000-class ``fc`` into a 100-class model). Returns ``model``.

    Raises ``ValueError`` when the file's first convolution reads a different number of input
    channels than ``model`` (a torchvision file always reads 3: RGB weights cannot initialise a
    model built with ``in_channels=1`` or ``2``).
    """
    state = read_checkpoint_file(path)
    if not isinstance(state, Mapping):
        raise RuntimeError(f"{os.fspath(path)!s} does not hold a state dict (found {type(state).__name__})")
    file_conv1 = state.get("conv1.weight")
    model_conv1 = getattr(model, "conv1", None)
    if (
        isinstance(file_conv1, torch.Tensor)
        and file_conv1.dim() == 4
        and isinstance(model_conv1, nn.Conv2d)
        and file_conv1.shape[1] != model_conv1.in_channels
    ):
        raise ValueError(
            f"weights in {os.fspath(path)!s} have a first convolution (conv1) reading "
            f"{file_conv1.shape[1]} input channels, but the model was built with "
            f"in_channels={model_conv1.in_channels}; build it with in_channels={file_conv1.shape[1]} "
            "to load these weights"
        )
    problems = describe_mismatch(model.state_dict(), state)
    if problems:
        raise RuntimeError(
            f"weights in {os.fspath(path)!s} do not match {type(model).__name__}: " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)
    return model
