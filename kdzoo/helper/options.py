"""Flags shared by ``train_teacher.py`` and ``train_student.py`` (reference names and defaults),
and the per-dataset training recipes they fall back on."""
from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .checkpoint import TRUST_FLAG
from .autotune import add_layout_args, parse_workers
from .util import parse_decay_epochs, positive_float, positive_int

# The reference trains these with lr 0.01 instead of 0.05.
SMALL_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


@dataclass(frozen=True)
class Recipe:
    """The schedule a dataset gets for every flag left out of the command line."""

    epochs: int
    batch_size: int
    lr_decay_epochs: tuple[int, ...]
    weight_decay: float
    image_size: int


RECIPES: dict[str, Recipe] = {
    # The reference's CIFAR-100 recipe (lr 0.05, or 0.01 for SMALL_LR_MODELS, at any batch size).
    "cifar100": Recipe(epochs=240, batch_size=64, lr_decay_epochs=(150, 180, 210), weight_decay=5e-4, image_size=32),
    # The CRD paper's ImageNet recipe (the standard ResNet schedule): lr 0.1 per 256 images.
    "imagenet": Recipe(epochs=100, batch_size=256, lr_decay_epochs=(30, 60, 90), weight_decay=1e-4, image_size=224),
}
IMAGENET_LR_PER_256 = 0.1

# Flags whose default depends on --dataset (and, for the learning rate, on the model and batch).
RECIPE_FLAGS = ("epochs", "batch_size", "learning_rate", "lr_decay_epochs", "weight_decay", "image_size")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` that shows every flag's default: appended as ``(default: ...)`` unless the help
    text already explains it (as it must for flags whose default is ``None``, i.e. computed), and
    that keeps the line breaks of a help text (one line per ``--distill`` method)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.required
                or action.default in (None, argparse.SUPPRESS)):
            return text
        return f"{text} (default: {_shown(action.default)})".strip()

    def _split_lines(self, text: str, width: int) -> list[str]:
        # A help text of several lines is a list: its wrapped lines hang under their first.
        indent = "    " if "\n" in text else ""
        return [line for part in text.splitlines()
                for line in (textwrap.wrap(part, width, subsequent_indent=indent) or [""])]


def _shown(default: Any) -> str:
    """A default as it is typed on the command line, escaped for argparse's %-formatting."""
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif isinstance(default, (list, tuple)):
        shown = ",".join(str(v) for v in default)
    else:
        shown = str(default)
    return shown.replace("%", "%%")


def add_training_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the shared flags. Their argparse defaults are the CIFAR-100 recipe, so a plain
    ``parse_args`` gives the reference's values; parse with :func:`parse_training_args` and finish
    with :func:`resolve_training_defaults` to get the recipe of ``--dataset``. The parser's
    ``--help`` shows every default (:class:`DefaultsHelpFormatter`)."""
    parser.formatter_class = DefaultsHelpFormatter
    cifar, imagenet = RECIPES["cifar100"], RECIPES["imagenet"]
    g = parser.add_argument_group("training (reference flags)")
    g.add_argument("--print_freq", type=positive_int, default=100, help="print a progress line every N steps")
    g.add_argument("--tb_freq", type=int, default=500, help="accepted for reference scripts; logs are per epoch")
    g.add_argument("--save_freq", type=positive_int, default=40, help="also keep ckpt_epoch_<E>.pth every N epochs")
    g.add_argument("--batch_size", type=positive_int, default=cifar.batch_size,
                   help=f"global batch size, split over torchrun processes (default {cifar.batch_size}; "
                        f"imagenet: {imagenet.batch_size})")
    g.add_argument("--num_workers", type=parse_workers, default="auto", metavar="auto|N",
                   help="DataLoader worker processes; auto (default): on CPU the cores the training threads "
                        "leave free (none when they use every core: batches then load in the main process), "
                        "on CUDA min(8, CPU cores)")
    g.add_argument("--epochs", type=positive_int, default=cifar.epochs,
                   help=f"default {cifar.epochs}; imagenet: {imagenet.epochs}")
    g.add_argument("--learning_rate", type=positive_float, default=None,
                   help="default 0.05, or 0.01 for MobileNetV2/ShuffleV1/ShuffleV2 as in the reference; "
                        f"imagenet: {IMAGENET_LR_PER_256} * batch_size / 256")
    g.add_argument("--lr_decay_epochs", type=parse_decay_epochs, default=list(cifar.lr_decay_epochs),
                   help="epochs after which the lr is multiplied by --lr_decay_rate (default 150,180,210; "
                        "imagenet: 30,60,90)")
    g.add_argument("--lr_decay_rate", type=float, default=0.1, help="learning-rate factor at each decay epoch")
    g.add_argument("--weight_decay", type=float, default=cifar.weight_decay,
                   help=f"default {cifar.weight_decay:g}; imagenet: {imagenet.weight_decay:g}")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--dataset", default="cifar100", choices=list(RECIPES),
                   help="the dataset, and the recipe of every schedule flag left out")

    g = parser.add_argument_group("this project's additions")
    g.add_argument("--data_folder", default="./data",
                   help="folder holding cifar-100-python/, or that folder itself (CIFAR-100 is downloaded "
                        "there when absent); for imagenet, the root holding train/ and val/")
    g.add_argument("--image_size", type=positive_int, default=None,
                   help=f"imagenet: side of the training crop and of the centre crop for testing "
                        f"(default {imagenet.image_size}); CIFAR-100 is always {cifar.image_size}")
    g.add_argument("--save_folder", default=None, help="parent folder of the run folders")
    g.add_argument("--seed", type=int, default=None, help="seed everything (default: a random seed, recorded)")
    g.add_argument("--resume", default=None, metavar="PATH",
                   help="continue the run that wrote this checkpoint (default: start a new run)")
    add_trust_checkpoint_arg(g)
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when available")
    g.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="torch threads per process (intra-op and inter-op pools); two runs sharing a machine "
                        "should split its cores (default: torch's choice, one per physical core)")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision: bfloat16 autocast (float16 + gradient scaling on GPUs without bf16)")
    add_layout_args(g)
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the networks (state-dict keys unchanged; the first steps compile)")
    g.add_argument("--sync_bn", action="store_true", help="synchronise batch norm across torchrun processes (CUDA)")
    g.add_argument("--train_subset", type=positive_int, default=None, metavar="N",
                   help="use N training images (CIFAR: the first N; ImageFolder: N evenly spaced, all classes; "
                        "default: all)")
    g.add_argument("--test_subset", type=positive_int, default=None, metavar="N",
                   help="use N test images (chosen as for --train_subset; default: all)")
    return parser


def add_trust_checkpoint_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The opt-in that widens the safe loader's allow-list, for every entry point that reads
    checkpoints (``helper/checkpoint.py``, ``read_checkpoint_file``)."""
    parser.add_argument(
        TRUST_FLAG, type=_names, default=(), metavar="MODULE.NAME[,...]",
        help="also allow these types or functions when loading checkpoints (the refusal message lists the ones a "
             "file needs); the file may call them, so name only what you trust (default: none)")


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected MODULE.NAME[,MODULE.NAME...], as the refusal message lists them")
    return names


def parse_training_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, except that the flags of :data:`RECIPE_FLAGS` the user left out
    come back as ``None`` (and a given value is kept even when it equals a default), ready for
    :func:`resolve_training_defaults`."""
    # argparse writes a default only into attributes the namespace does not have yet, so flags
    # pre-set to None stay None unless they appear on the command line.
    return parser.parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(RECIPE_FLAGS)))


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> frozenset[str]:
    """The destinations of the flags ``argv`` sets explicitly (``None``: ``sys.argv[1:]``, as
    ``parse_args``), for the start-up summary's given/default marks. Parses ``argv`` again with every
    destination pre-set to a marker, which argparse leaves alone unless a flag sets it."""
    unset = object()
    actions = [a for a in parser._actions if a.dest != argparse.SUPPRESS]
    # An appending flag (--path_t given once per teacher) copies what it finds, so it starts from None.
    markers = {a.dest: None if isinstance(a, argparse._AppendAction) else unset for a in actions}
    namespace = parser.parse_args(argv, namespace=argparse.Namespace(**markers))
    return frozenset(d for d, marker in markers.items() if getattr(namespace, d) is not marker)


def apply_threads(threads: int | None) -> None:
    """``--threads``: size this process's intra-op and inter-op thread pools (``None``: torch's
    choice). The inter-op pool can only be sized before its first use, so a second run in the same
    process keeps the size it has."""
    if threads is None:
        return
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass


def resolve_training_defaults(opt: argparse.Namespace, model_name: str) -> argparse.Namespace:
    """Fill every recipe flag that is ``None`` with the recipe of ``opt.dataset`` (see
    :data:`RECIPES`); flags given explicitly are never changed. The learning rate is resolved last,
    since on ImageNet it follows the (resolved) global batch: ``0.1 * batch_size / 256``."""
    if opt.dataset not in RECIPES:
        raise ValueError(f"unknown dataset {opt.dataset!r}: choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[opt.dataset]
    for flag in RECIPE_FLAGS:
        if flag != "learning_rate" and getattr(opt, flag, None) is None:
            value = getattr(recipe, flag)
            # lr_decay_epochs as a list, the type --lr_decay_epochs parses to
            setattr(opt, flag, list(value) if isinstance(value, tuple) else value)
    if opt.learning_rate is None:
        opt.learning_rate = default_learning_rate(model_name, opt.dataset, opt.batch_size)
    return opt


def default_learning_rate(model_name: str, dataset: str = "cifar100", batch_size: int | None = None) -> float:
    """The recipe's learning rate: CIFAR-100 0.05 (0.01 for MobileNetV2/ShuffleV1/ShuffleV2) at any
    batch size, as the reference; ImageNet 0.1 per 256 images of the global batch."""
    if dataset == "imagenet":
        batch = RECIPES["imagenet"].batch_size if batch_size is None else batch_size
        return IMAGENET_LR_PER_256 * batch / 256
    return 0.01 if model_name in SMALL_LR_MODELS else 0.05


def check_device_options(opt: argparse.Namespace, device_type: str, distributed: bool) -> None:
    """Combinations that only fail once training starts, refused up front."""
    if opt.sync_bn and distributed and device_type != "cuda":
        raise ValueError("--sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel); drop it on CPU")
