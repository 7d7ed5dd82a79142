"""Flags shared by ``train_teacher.py`` and ``train_student.py`` (reference names and defaults)."""
from __future__ import annotations

import argparse
import os

from .util import parse_decay_epochs, positive_float, positive_int

# The reference trains these with lr 0.01 instead of 0.05.
SMALL_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def add_training_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("training (reference flags)")
    g.add_argument("--print_freq", type=positive_int, default=100, help="print a progress line every N steps")
    g.add_argument("--tb_freq", type=int, default=500, help="accepted for reference scripts; logs are per epoch")
    g.add_argument("--save_freq", type=positive_int, default=40, help="also keep ckpt_epoch_<E>.pth every N epochs")
    g.add_argument("--batch_size", type=positive_int, default=64, help="global batch size (split over torchrun processes)")
    g.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader worker processes (default: 8, or fewer CPU cores)")
    g.add_argument("--epochs", type=positive_int, default=240)
    g.add_argument("--learning_rate", type=positive_float, default=None,
                   help="default 0.05, or 0.01 for MobileNetV2/ShuffleV1/ShuffleV2 as in the reference")
    g.add_argument("--lr_decay_epochs", type=parse_decay_epochs, default=[150, 180, 210],
                   help="epochs after which the lr is multiplied by --lr_decay_rate, e.g. 150,180,210")
    g.add_argument("--lr_decay_rate", type=float, default=0.1)
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--dataset", default="cifar100", choices=["cifar100", "imagenet"])

    g = parser.add_argument_group("this project's additions")
    g.add_argument("--data_folder", default="./data",
                   help="folder holding cifar-100-python/ (or an ImageNet root with train/ and val/)")
    g.add_argument("--save_folder", default=None, help="parent folder of the run folders")
    g.add_argument("--seed", type=int, default=None, help="seed everything (default: a random seed, recorded)")
    g.add_argument("--resume", default=None, metavar="PATH", help="continue the run that wrote this checkpoint")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--amp", action="store_true",
                   help="mixed precision: bfloat16 autocast (float16 + gradient scaling on GPUs without bf16)")
    g.add_argument("--channels_last", action="store_true", help="NHWC memory layout for convolutions")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the networks (state-dict keys unchanged; the first steps compile)")
    g.add_argument("--sync_bn", action="store_true", help="synchronise batch norm across torchrun processes (CUDA)")
    g.add_argument("--train_subset", type=positive_int, default=None, metavar="N", help="use the first N training images")
    g.add_argument("--test_subset", type=positive_int, default=None, metavar="N", help="use the first N test images")
    return parser


def check_device_options(opt: argparse.Namespace, device_type: str, distributed: bool) -> None:
    """Combinations that only fail once training starts, refused up front."""
    if opt.sync_bn and distributed and device_type != "cuda":
        raise ValueError("--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel); drop it on CPU")


def default_learning_rate(model_name: str) -> float:
    return 0.01 if model_name in SMALL_LR_MODELS else 0.05
