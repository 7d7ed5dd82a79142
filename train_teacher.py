"""Train a teacher (or a vanilla student) with cross-entropy.

    python train_teacher.py --model resnet32x4 --data_folder ./data
    torchrun --nproc_per_node 4 train_teacher.py --model resnet32x4

Runs are saved in ``<save_folder>/<model>_vanilla[_trial_<t>]/`` so that
``train_student.py --path_t`` reads the teacher's architecture from the folder name.
"""
from __future__ import annotations

import argparse
from typing import Sequence

import torch.nn as nn

from kdzoo.dataset import DataError
from kdzoo.dataset.views import VIEW_HELP, InputView, view_arg
from kdzoo.helper.checkpoint import CheckpointError
from kdzoo.helper.distributed import init_distributed
from kdzoo.helper.options import add_training_args, check_device_options, parse_training_args, resolve_training_defaults
from kdzoo.helper.autotune import run_precision
from kdzoo.helper.options import apply_threads, given_flags
from kdzoo.helper.summary import log_summary
from kdzoo.helper.trainer import ClassificationTask, prepare_run, run_training
from kdzoo.models import model_dict


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train a model on CIFAR-100 or ImageNet with cross-entropy.")
    parser.add_argument("--model", default="resnet110", help=f"architecture: {', '.join(model_dict)}")
    parser.add_argument("-t", "--trial", default="0", help="the experiment id (part of the run folder name)")
    parser.add_argument("--input", type=view_arg, default="rgb", metavar="VIEW",
                        help=f"what the model sees of each image (default: rgb; others add _in:<view> to the run "
                             f"folder name and need the same view wherever the model is used). {VIEW_HELP}")
    add_training_args(parser)
    parser.set_defaults(save_folder="./save/models")
    return parser


def run_name(model: str, trial: str, view: str = "rgb") -> str:
    """``<model>_vanilla[_in:<view>][_trial_<t>]``: the reference's folder for rgb models."""
    name = f"{model}_vanilla" + (f"_in:{view}" if view != "rgb" else "")
    return name if str(trial) == "0" else f"{name}_trial_{trial}"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    opt = parse_training_args(parser, argv)
    apply_threads(opt.threads)
    if opt.model not in model_dict:
        parser.error(f"unknown --model {opt.model!r}; choose one of: {', '.join(model_dict)}")
    resolve_training_defaults(opt, opt.model)
    try:
        env = init_distributed(opt.device)
        check_device_options(opt, env.device.type, env.distributed)
        setup = prepare_run(opt, env, run_name(opt.model, opt.trial, opt.input))
    except (DataError, CheckpointError, ValueError) as err:
        parser.error(str(err))
    normalize = InputView(opt.input, setup.spec.mean, setup.spec.std)
    model: nn.Module = model_dict[opt.model](num_classes=setup.spec.num_classes, in_channels=normalize.channels)
    if opt.sync_bn and env.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    task = ClassificationTask(model.to(env.device))
    log = print if env.is_main else (lambda *_: None)
    precision = run_precision(opt, task, setup.train_loader, normalize, env.device, setup.resume_state, log)
    precision.prepare_network(model)
    log_summary(f"train_teacher.py: {setup.run_dir.name}",
                [("model", opt.model, ("model",)), ("input view", opt.input, ("input",))], opt, setup,
                precision, given_flags(parser, argv))
    return run_training(task, opt.model, opt, setup, normalize, precision)

if __name__ == "__main__":
    main()
