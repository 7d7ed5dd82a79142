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
from kdzoo.dataset.transforms import Normalize
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
    add_training_args(parser)
    parser.set_defaults(save_folder="./save/models")
    return parser


def run_name(model: str, trial: str) -> str:
    return f"{model}_vanilla" if str(trial) == "0" else f"{model}_vanilla_trial_{trial}"


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
        setup = prepare_run(opt, env, run_name(opt.model, opt.trial))
    except (DataError, CheckpointError, ValueError) as err:
        parser.error(str(err))
    model: nn.Module = model_dict[opt.model](num_classes=setup.spec.num_classes)
    if opt.sync_bn and env.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    normalize = Normalize(setup.spec.mean, setup.spec.std)
    task = ClassificationTask(model.to(env.device))
    log = print if env.is_main else (lambda *_: None)
    precision = run_precision(opt, task, setup.train_loader, normalize, env.device, setup.resume_state, log)
    precision.prepare_network(model)
    log_summary(f"train_teacher.py: {setup.run_dir.name}", [("model", opt.model, ("model",))], opt, setup,
                precision, given_flags(parser, argv))
    return run_training(task, opt.model, opt, setup, normalize, precision)

if __name__ == "__main__":
    main()
