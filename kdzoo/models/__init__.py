"""Backbones with the reference feature contract (see ``models/base.py``).

``model_dict[name](num_classes=100)`` builds any architecture by name, as in the reference code;
``in_channels=1`` (or 2) builds it for single-channel (two-channel) images.
"""
from . import (  # noqa: F401  (importing registers the architectures)
    ShuffleNetv1,
    ShuffleNetv2,
    imagenet_resnet,
    mobilenetv2,
    resnet,
    resnetv2,
    vgg,
    wrn,
)
from .base import DistillModel, PreActBlock, check_in_channels, run_stage
from .registry import create_model, model_dict, register_model

__all__ = ["DistillModel", "PreActBlock", "check_in_channels", "run_stage", "create_model", "model_dict", "register_model"]
