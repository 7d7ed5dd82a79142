"""The feature contract shared by every backbone.

``model(x)`` returns logits. ``model(x, is_feat=True)`` returns ``(feats, logits)`` with
``feats = [stem, stage_1, ..., stage_N, pooled]``: ``feats[-2]`` is the last convolutional map,
``feats[-1]`` the pooled vector fed to the classifier. ``preact=True`` replaces each stage output
by its value before the stage's final ReLU (used by AB); it is read off the same forward pass, so
no batch norm runs twice. A stage without a final ReLU reports the same tensor either way.

Every registered factory accepts ``in_channels`` (default 3): the number of channels of the input
image, e.g. 1 for grayscale or the CIELAB L channel, 2 for the ab channels. Only the first
convolution changes; the built model records the value as its ``in_channels`` attribute.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
    """A block whose output is ``relu(pre_activation(x))``; the stage runner uses ``pre_activation``
    to expose the value before that ReLU without computing anything twice."""

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement pre_activation")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place: nothing else holds the pre-activation of a block that is not a stage's last,
        # and a fresh output per block costs a resnet8 step measurable time on one thread.
        return F.relu(self.pre_activation(x), inplace=True)


def run_stage(stage: Sequence[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the blocks of ``stage``; return ``(output, output before the last block's ReLU)``.

    The last block must be a :class:`PreActBlock`.
    """
    *head, last = stage
    for block in head:
        x = block(x)
    pre = last.pre_activation(x)
    return F.relu(pre), pre


def check_in_channels(in_channels: object) -> int:
    """Return ``in_channels`` if it is a positive ``int``, else raise ``ValueError`` naming it.

    ``bool`` is refused although it subclasses ``int``: ``in_channels=True`` is a mistake, not 1.
    """
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    return in_channels


class DistillModel(nn.Module):
    """Base class of every backbone: implements ``forward`` from :meth:`forward_features`.

    Subclasses implement ``forward_features(x, preact) -> list[Tensor]`` (ending with the pooled
    vector), set ``classifier_name`` to the attribute holding the classifier (the reference names
    differ: ``fc``, ``linear``, ``classifier``) and implement :meth:`get_bn_before_relu`.

    Part of the contract: ``in_channels`` is the number of input image channels the first
    convolution reads (3 for RGB, the default; 1 for grayscale or CIELAB L; 2 for CIELAB ab).
    Every constructor takes it as a keyword, validates it with :func:`check_in_channels` and sets
    the attribute, so code loading a checkpoint or choosing a data view can compare the channel
    count it is about to feed with the one the model was built for. With the default 3 the modules,
    state dict and initialisation (random draws included) are exactly those of the reference.
    """

    classifier_name: str = "fc"
    # Overwritten by each constructor; the class value covers models built before the argument existed.
    in_channels: int = 3

    def forward_features(self, x: torch.Tensor, preact: bool = False) -> list[torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    def get_classifier(self) -> nn.Module:
        """The final linear layer (named as in the reference, so state dicts stay compatible)."""
        return getattr(self, self.classifier_name)

    def forward(self, x: torch.Tensor, is_feat: bool = False, preact: bool = False):
        feats = self.forward_features(x, preact=preact)
        logits = self.get_classifier()(feats[-1])
        return (feats, logits) if is_feat else logits

    def get_feat_modules(self) -> nn.ModuleList:
        """Every module that produces the features, i.e. all but the classifier (the reference's
        two-stage methods train exactly these during their init stage)."""
        return nn.ModuleList(
            module for name, module in self.named_children() if name != self.classifier_name
        )

    def get_bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """The batch norm that ends each stage, right before its final ReLU."""
        raise NotImplementedError  # pragma: no cover - abstract
