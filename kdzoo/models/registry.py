"""Name -> constructor table for every backbone, in the spirit of timm's model registry."""
from __future__ import annotations

from typing import Callable, TypeVar

import torch.nn as nn

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)


class _ModelDict(dict):
    """A plain dict whose missing-key error names the key and every architecture that exists."""

    def __missing__(self, name: str) -> ModelFactory:
        raise KeyError(
            f"unknown architecture {name!r}; available architectures: {', '.join(sorted(self))}"
        )


model_dict: dict[str, ModelFactory] = _ModelDict()


def register_model(factory: F) -> F:
    """Add ``factory`` to :data:`model_dict` under its own ``__name__``."""
    if factory.__name__ in model_dict:
        raise ValueError(f"architecture {factory.__name__!r} is registered twice")
    model_dict[factory.__name__] = factory
    return factory


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build architecture ``name`` (its own default class count unless ``num_classes`` is given:
    100 for the CIFAR models, 1000 for the ImageNet ones); a ``KeyError`` names the architectures
    that exist."""
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return model_dict[name](**kwargs)
