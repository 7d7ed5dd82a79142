"""CIFAR-100 and ImageNet with the reference's three training views, loaded a batch at a time.

Images come out normalised (float32, ``(x / 255 - mean) / std`` with the constants exported here),
as the reference returns them; ``uint8=True`` keeps them uint8 for normalisation on the device."""
from .base import VIEWS, DataError, ViewDataset
from .cifar100 import CIFAR100Batched, CIFAR100Instance, CIFAR100InstanceSample, read_cifar100
from .imagenet import ImageFolderBatched, imagenet_splits
from .loader import (
    DataSpec,
    ShardSampler,
    build_datasets,
    build_loaders,
    get_cifar100_dataloaders,
    get_cifar100_dataloaders_sample,
)
from .sampling import ContrastiveSampler
from .transforms import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD, Normalize, random_crop_flip

__all__ = [
    "VIEWS", "DataError", "ViewDataset", "CIFAR100Batched", "CIFAR100Instance", "CIFAR100InstanceSample",
    "read_cifar100", "ImageFolderBatched", "imagenet_splits", "DataSpec", "ShardSampler", "build_datasets",
    "build_loaders", "get_cifar100_dataloaders", "get_cifar100_dataloaders_sample", "ContrastiveSampler",
    "Normalize", "random_crop_flip", "CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD",
]
