"""Linear-probe transfer of a distilled student: freeze it and train a new linear classifier on its
pooled features for another dataset (the transferability experiment of the CRD and RRD papers).

    python transfer_student.py --dataset stl10 --data_folder ./data \
        --path_s "save/student_model/S:resnet8x4_T:resnet32x4_cifar100_crd_r:1.0_a:0.0_b:0.8_1/resnet8x4_last.pth"

Runs are saved in ``<save_folder>/<student's run folder>/<checkpoint>_<dataset>[_bn_adapt][_trial_<t>]/``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdzoo.dataset import DataError, build_loaders
from kdzoo.dataset.transfer import TRANSFER_DATASETS, transfer_splits
from kdzoo.dataset.transforms import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD
from kdzoo.dataset.views import VIEW_HELP, InputView, view_arg, view_channels
from kdzoo.helper.checkpoint import (
    CheckpointError,
    check_input_view,
    load_checkpoint,
    load_model_weights,
    resolve_model_name,
    saved_options,
)
from kdzoo.helper.distributed import DistEnv, init_distributed
from kdzoo.helper.loops import StepOutput
from kdzoo.helper.options import add_training_args, check_device_options, default_learning_rate
from kdzoo.helper.autotune import choose_workers, run_precision
from kdzoo.helper.options import apply_threads, given_flags
from kdzoo.helper.summary import log_summary
from kdzoo.helper.trainer import RunSetup, load_resume_state, new_seed, open_run_dir, prepare_run_dir, run_training
from kdzoo.helper.util import parse_decay_epochs, positive_int, seed_everything
from kdzoo.models import model_dict

def _linear_path(network: nn.Module) -> str:
    """Where the classifier's linear layer sits in ``network`` (``fc``, ``linear``, ``classifier``,
    ``classifier.0`` for MobileNetV2, ...); the classifier must be that single linear layer, possibly
    inside parameter-free wrappers."""
    classifier = network.get_classifier()
    prefix = next(name for name, m in network.named_modules() if m is classifier)
    linears = [name for name, m in classifier.named_modules() if isinstance(m, nn.Linear)]
    if len(linears) == 1:
        n_linear = sum(p.numel() for p in classifier.get_submodule(linears[0]).parameters())
        if n_linear == sum(p.numel() for p in classifier.parameters()):
            return ".".join(part for part in (prefix, linears[0]) if part)
    raise ValueError(
        f"the classifier of {type(network).__name__} ({type(classifier).__name__}) is not a single linear layer: "
        "a linear probe replaces exactly that layer"
    )


class LinearProbeTask(nn.Module):
    """A frozen network whose classifier's linear layer is replaced by a new
    ``nn.Linear(feat_dim, num_classes)``, the only trained part (initialised N(0, 0.01), bias 0, as
    in the RRD authors' transfer script); it reads the pooled features ``feats[-1]``.

    The backbone runs without gradients. By default it stays in eval mode, so its batch-norm
    statistics are frozen too; with ``bn_adapt`` it runs in train mode during training (batch norm
    normalises with batch statistics and updates its running statistics on the new data, its
    weights still frozen), as the RRD authors' script does, and in eval mode for evaluation.

    ``eval_model`` is the network itself, so checkpoints hold the student's architecture with
    ``num_classes`` outputs: ``model_dict[arch](num_classes=n).load_state_dict(ckpt['model'])``.
    """

    def __init__(self, network: nn.Module, num_classes: int, bn_adapt: bool = False) -> None:
        super().__init__()
        self._head_path = _linear_path(network)
        old = network.get_submodule(self._head_path)
        network.requires_grad_(False)
        head = nn.Linear(old.in_features, num_classes)
        nn.init.normal_(head.weight, mean=0.0, std=0.01)
        nn.init.zeros_(head.bias)
        parent, _, attr = self._head_path.rpartition(".")
        setattr(network.get_submodule(parent), attr, head)
        self.network = network
        self.bn_adapt = bn_adapt
        self.train()

    @property
    def head(self) -> nn.Linear:
        return self.network.get_submodule(self._head_path)

    @property
    def eval_model(self) -> nn.Module:
        return self.network

    def train(self, mode: bool = True) -> "LinearProbeTask":
        super().train(mode)
        if not self.bn_adapt:
            self.network.eval()  # frozen batch-norm statistics: the backbone never leaves eval mode
        return self

    def forward(self, images: torch.Tensor, targets: torch.Tensor, *unused: torch.Tensor) -> StepOutput:
        with torch.no_grad():
            feats, _ = self.network(images, is_feat=True)
        # The whole classifier module (any parameter-free wrapper included), as model(x) applies it.
        logits = self.network.get_classifier()(feats[-1])
        loss = F.cross_entropy(logits, targets)
        return StepOutput(loss, logits, {"cls": loss})


def source_normalization(state: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation the student was trained with: ImageNet's for ImageNet runs, else CIFAR-100's."""
    if saved_options(state).get("dataset") == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return CIFAR100_MEAN, CIFAR100_STD


def load_backbone(path: str | Path, arch: str, state: dict[str, Any], view: str = "rgb") -> nn.Module:
    """``arch`` built for input ``view`` with the checkpoint's own classifier size, its weights
    loaded strictly; a checkpoint trained on another view is refused."""
    check_input_view(state, path, view, "--input")
    channels = view_channels(view)
    network = model_dict[arch](in_channels=channels)
    key = _linear_path(network) + ".weight"
    weights = state["model"]
    weight = weights.get(key, weights.get("module." + key))
    if weight is not None and weight.shape[0] != network.state_dict()[key].shape[0]:
        network = model_dict[arch](num_classes=weight.shape[0], in_channels=channels)
    load_model_weights(network, path, name=arch, state=state, flag="--model_s")
    return network


def run_name(opt: argparse.Namespace) -> str:
    """``<student's run folder>/<checkpoint>_<dataset>[_bn_adapt][_trial_<t>]``: every probe of a
    student sits next to the others."""
    path = Path(opt.path_s).resolve()
    name = f"{path.stem}_{opt.dataset}" + ("_bn_adapt" if opt.bn_adapt else "")
    if str(opt.trial) != "0":
        name += f"_trial_{opt.trial}"
    return f"{path.parent.name or 'root'}/{name}"


def prepare_transfer_run(opt: argparse.Namespace, env: DistEnv,
                         normalization: tuple[tuple[float, ...], tuple[float, ...]] | None) -> RunSetup:
    """Seed, run folder, resume state and loaders, as ``helper.trainer.prepare_run`` does for the
    training datasets."""
    resume_state = load_resume_state(opt)
    seed = resume_state["seed"] if resume_state else (opt.seed if opt.seed is not None else new_seed())
    seed_everything(seed)
    run_dir = prepare_run_dir(opt.save_folder, run_name(opt), opt.resume)
    choose_workers(opt, env.device, resume_state)
    train_set, test_set = transfer_splits(
        opt.dataset, opt.data_folder, opt.image_size, normalization, opt.train_subset, opt.test_subset,
        num_workers=opt.num_workers, download=opt.download, uint8=True,
    )
    open_run_dir(run_dir, env, resumed=resume_state is not None)
    train_loader, test_loader, spec = build_loaders(
        train_set, test_set, opt.batch_size, opt.num_workers, seed=seed, rank=env.rank,
        world_size=env.world_size, pin_memory=env.device.type == "cuda",
    )
    return RunSetup(env, seed, run_dir, resume_state, train_loader, test_loader, spec)


def build_parser() -> argparse.ArgumentParser:
    # "resolve": --dataset, --data_folder, --image_size, --epochs and --lr_decay_epochs replace the
    # training flags' versions.
    parser = argparse.ArgumentParser(
        description="Linear-probe transfer: freeze a student and train a linear classifier on its pooled features.",
        conflict_handler="resolve",
    )
    add_training_args(parser)
    g = parser.add_argument_group("transfer")
    g.add_argument("--path_s", required=True, help="student checkpoint ({'model': state_dict, ...})")
    g.add_argument("--model_s", default=None,
                   help="student architecture (default: recorded in the checkpoint, or read from its folder name)")
    g.add_argument("--dataset", default="stl10", choices=TRANSFER_DATASETS, help="the target dataset")
    g.add_argument("--data_folder", default="./data",
                   help="stl10: holds stl10_binary/; tinyimagenet/imagefolder: holds train/ and val/ (or test/), or "
                        "tiny-imagenet-200/; cifar10: holds cifar-10-batches-py/; cifar100: holds cifar-100-python/")
    g.add_argument("--image_size", type=positive_int, default=32, help="images are resized to this side")
    g.add_argument("--bn_adapt", action="store_true",
                   help="update the backbone's batch-norm statistics on the new data (its weights stay frozen)")
    g.add_argument("--norm", default="source", choices=["source", "target"],
                   help="normalise with the student's training statistics (CIFAR-100's, or ImageNet's for ImageNet "
                        "students) or with the target training images' own per-channel statistics")
    g.add_argument("--input", type=view_arg, default="rgb", metavar="VIEW",
                   help=f"what the student sees of each image: the view it was trained on (default: rgb; the "
                        f"checkpoint records it). {VIEW_HELP}")
    g.add_argument("--download", action="store_true", help="download STL-10 or CIFAR-10 through torchvision if absent")
    g.add_argument("-t", "--trial", default="0", help="the experiment id (part of the run folder name)")
    # The linear-probe recipe (README, "Transfer: linear probes"): these replace the training defaults.
    g.add_argument("--epochs", type=positive_int, default=100, help="default 100")
    g.add_argument("--lr_decay_epochs", type=parse_decay_epochs, default=[30, 60, 90],
                   help="epochs after which the lr is multiplied by --lr_decay_rate (default 30,60,90)")
    parser.set_defaults(save_folder="./save/transfer")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    opt = parser.parse_args(argv)
    apply_threads(opt.threads)
    try:
        state = load_checkpoint(opt.path_s, trust=opt.trust_checkpoint)
        opt.model_s = resolve_model_name(opt.path_s, state, model_dict, opt.model_s, "--model_s")
    except CheckpointError as err:
        parser.error(str(err))
    if opt.learning_rate is None:
        opt.learning_rate = default_learning_rate(opt.model_s)
    normalization = source_normalization(state) if opt.norm == "source" else None
    try:
        env = init_distributed(opt.device)
        check_device_options(opt, env.device.type, env.distributed)
        # Weights first: a wrong architecture fails before the data is decoded.
        network = load_backbone(opt.path_s, opt.model_s, state, opt.input)
        setup = prepare_transfer_run(opt, env, normalization)
    except (DataError, CheckpointError, ValueError) as err:
        parser.error(str(err))
    if opt.sync_bn and env.distributed:
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    n_cls = setup.spec.num_classes
    task = LinearProbeTask(network, n_cls, bn_adapt=opt.bn_adapt)
    if env.is_main:
        print(f"probe: {opt.model_s} from {opt.path_s}, features {task.head.in_features} -> {n_cls} classes of "
              f"{opt.dataset} ({len(setup.train_loader.dataset)} train / {len(setup.test_loader.dataset)} test "
              f"images at {opt.image_size}x{opt.image_size}, input view {opt.input}); backbone frozen, batch norm "
              f"{'adapting' if opt.bn_adapt else 'frozen'}")
    normalize = InputView(opt.input, setup.spec.mean, setup.spec.std)
    log = print if env.is_main else (lambda *_: None)
    task.to(env.device)
    precision = run_precision(opt, task, setup.train_loader, normalize, env.device, setup.resume_state, log)
    precision.prepare_network(network)
    log_summary(f"transfer_student.py: {setup.run_dir.name}",
                [("backbone", f"{opt.model_s} from {opt.path_s}", ("model_s",))], opt, setup, precision,
                given_flags(parser, argv))
    return run_training(task, opt.model_s, opt, setup, normalize, precision)


if __name__ == "__main__":
    main()
