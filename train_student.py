"""Distil a teacher into a student with any method of the published tables.

    python train_student.py --path_t save/models/resnet32x4_vanilla/ckpt_epoch_240.pth \
        --model_s resnet8x4 --distill kd -r 0.1 -a 0.9 -b 0 --trial 1
    torchrun --nproc_per_node 8 train_student.py --dataset imagenet --data_folder /data/imagenet \
        --path_t resnet34-b627a593.pth --model_s imagenet_resnet18 --distill crd

``-r/-a/-b`` default to the method's paper weights (``distiller_zoo/registry.py``), the schedule
to the recipe of ``--dataset`` (``helper/options.py``).
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

import torch
import torch.nn as nn

from kdzoo.dataset import DataError
from kdzoo.dataset.transforms import Normalize
from kdzoo.crd import WCORD_DEFAULTS
from kdzoo.distiller_zoo.registry import METHODS
from kdzoo.helper.autotune import run_precision
from kdzoo.helper.checkpoint import CheckpointError, load_model_weights, load_weights_file, resolve_model_name
from kdzoo.helper.distill import DistillTask, build_term, fold_teacher_batchnorm, run_init_stage
from kdzoo.helper.distributed import init_distributed
from kdzoo.helper.loops import evaluate
from kdzoo.helper.options import add_training_args, check_device_options, parse_training_args, resolve_training_defaults
from kdzoo.helper.options import apply_threads, given_flags
from kdzoo.helper.summary import distillation_rows, log_summary
from kdzoo.helper.trainer import prepare_run, run_training
from kdzoo.models import model_dict


def distill_help(default: str) -> str:
    """One line per method of the registry: its paper, and the weights -r/-a/-b default to."""
    width = max(map(len, METHODS))
    lines = [f"the method (default: {default}); -r/-a/-b default to its paper weights, and the log names "
             "the loss terms cls, div (KD) and kd (the method's):"]
    for name, m in METHODS.items():
        init = ", init stage" if m.init is not None else ""
        lines.append(f"{name:<{width}}  {m.paper} (-r {m.weights[0]:g} -a {m.weights[1]:g} -b {m.weights[2]:g}{init})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Distil a teacher into a student.")
    g = parser.add_argument_group("distillation (reference flags)")
    g.add_argument("--path_t", required=True,
                   help="teacher weights: a checkpoint ({'model': state_dict, ...}) or a torchvision weight file")
    g.add_argument("--model_s", default="resnet8", help=f"student architecture: {', '.join(model_dict)}")
    g.add_argument("--distill", default="kd", choices=list(METHODS), metavar="METHOD", help=distill_help("kd"))
    g.add_argument("-t", "--trial", default="1", help="the experiment id")
    g.add_argument("-r", "--gamma", type=float, default=None, help="weight of the cross-entropy (default: paper)")
    g.add_argument("-a", "--alpha", type=float, default=None, help="weight of the KD term (default: paper)")
    g.add_argument("-b", "--beta", type=float, default=None, help="weight of the method's term (default: paper)")
    g.add_argument("--kd_T", type=float, default=None,
                   help="temperature of the KD term and of the logit methods' terms (default: paper, 4; "
                        "DKD/DIST on ImageNet: 1)")
    g.add_argument("--init_epochs", type=int, default=30, help="init-stage epochs of abound, factor and fsp")
    g.add_argument("--warmup_epochs", type=int, default=None,
                   help="epochs over which the method's term ramps up linearly, beta * min(1, epoch / N); 0: none "
                        "(default: the authors' value, e.g. dkd and reviewkd 20 on CIFAR-100, 1 on ImageNet; others 0)")
    g.add_argument("--hint_layer", type=int, default=2, choices=[0, 1, 2, 3, 4], help="feature used by FitNet")
    g.add_argument("--feat_dim", type=int, default=128, help="embedding size of CC (and the contrastive methods)")
    g.add_argument("--mode", default="exact", choices=["exact", "relax"], help="contrastive positive sampling")
    g.add_argument("--nce_k", type=int, default=16384, help="negatives per anchor (contrastive methods)")
    g.add_argument("--nce_t", type=float, default=0.07, help="temperature (contrastive methods)")
    g.add_argument("--nce_m", type=float, default=0.5, help="memory momentum (contrastive methods)")
    g.add_argument("--model_t", default=None,
                   help="teacher architecture (default: the one --path_t records, else its folder, "
                        "<model>_vanilla/, or a torchvision file name, resnet34-<hash>.pth -> imagenet_resnet34)")

    g = parser.add_argument_group("contrastive methods (this project's additions)")
    g.add_argument("--crd_memory", default="bank", choices=["bank", "queue"],
                   help="CRD/WCoRD negatives: the paper's per-sample memory bank, or a FIFO queue for huge datasets")
    g.add_argument("--nce_t_s", type=float, default=None, help="RRD student temperature (default 0.04; 2025: 0.1)")
    g.add_argument("--nce_t_t", type=float, default=None, help="RRD teacher temperature (default 0.10; 2025: 0.02)")
    g.add_argument("--rrd_variant", default="2024", choices=["2024", "2025"],
                   help="RRD: the published form (2024) or the authors' 2025 code (enqueue first)")
    g.add_argument("--critic", default=WCORD_DEFAULTS["critic"], choices=["spectral", "gp", "none"],
                   help="WCoRD: how the critic is kept 1-Lipschitz")
    g.add_argument("--gp_weight", type=float, default=WCORD_DEFAULTS["gp_weight"], help="WCoRD gradient-penalty weight")
    g.add_argument("--ot_eps", type=float, default=WCORD_DEFAULTS["ot_eps"], help="WCoRD Sinkhorn entropy")
    g.add_argument("--ot_iters", type=int, default=WCORD_DEFAULTS["ot_iters"], help="WCoRD Sinkhorn iterations")
    g.add_argument("--fold_teacher_bn", action=argparse.BooleanOptionalAction, default=True,
                   help="fold the frozen teacher's batch norms into its convolutions (same outputs up to "
                        "float rounding, fewer layers); --no-fold_teacher_bn runs it as trained")
    g.add_argument("--lambda_local", type=float, default=WCORD_DEFAULTS["lambda_local"],
                   help="WCoRD weight of the local (optimal-transport) term")
    g = parser.add_argument_group("logit methods (this project's additions; default: the authors' values)")
    g.add_argument("--logit_stand", action="store_true",
                   help="z-score each sample's logits before the temperature in the KD term and in dkd/dist "
                        "(Sun et al. 2024); the run folder name gets _ls")
    g.add_argument("--dkd_alpha", type=float, default=None, help="DKD weight of TCKD inside its term (default 1)")
    g.add_argument("--dkd_beta", type=float, default=None,
                   help="DKD weight of NCKD inside its term (default: the authors' value for the pair, else 8)")
    g.add_argument("--dist_beta", type=float, default=None, help="DIST weight of the inter-class relation (default 1)")
    g.add_argument("--dist_gamma", type=float, default=None, help="DIST weight of the intra-class relation (default 1)")
    add_training_args(parser)
    parser.set_defaults(save_folder="./save/student_model")
    return parser


def run_name(opt: argparse.Namespace) -> str:
    """The reference's student folder name (``collect_results.py`` parses it); ``_ls`` after the
    weights marks logit standardisation, so such runs never pool with plain ones."""
    logit_stand = "_ls" if opt.logit_stand else ""
    return (f"S:{opt.model_s}_T:{opt.model_t}_{opt.dataset}_{opt.distill}_"
            f"r:{opt.gamma}_a:{opt.alpha}_b:{opt.beta}{logit_stand}_{opt.trial}")


def read_teacher_file(parser: argparse.ArgumentParser, opt: argparse.Namespace) -> dict[str, Any]:
    """The contents of ``--path_t``, read once and safely (``helper/checkpoint.py``)."""
    try:
        return load_weights_file(opt.path_t, trust=opt.trust_checkpoint)
    except CheckpointError as err:
        parser.error(f"--path_t: {err}")


def resolve_options(parser: argparse.ArgumentParser, opt: argparse.Namespace, require_teacher_file: bool = True,
                    teacher_state: dict[str, Any] | None = None) -> argparse.Namespace:
    """Fill in the teacher name, paper weights and the dataset's recipe (``helper/options.py``);
    refuse impossible flags. The teacher is ``--model_t``, else the architecture its checkpoint
    (``teacher_state``, read here when not given) records, else its folder's name.
    ``require_teacher_file=False`` serves tools that build the networks without loading weights."""
    if opt.model_s not in model_dict:
        parser.error(f"unknown --model_s {opt.model_s!r}; choose one of: {', '.join(model_dict)}")
    if require_teacher_file and teacher_state is None:
        teacher_state = read_teacher_file(parser, opt)
    try:
        opt.model_t = resolve_model_name(opt.path_t, teacher_state or {}, model_dict, opt.model_t, "--model_t")
    except CheckpointError as err:
        parser.error(str(err))
    # Flags left out take the paper's value for this teacher/student pair (weights, temperature, options).
    method = METHODS[opt.distill]
    for flag, value in method.paper_settings(opt.model_t, opt.model_s).items():
        if getattr(opt, flag, None) is None:
            setattr(opt, flag, value)
    if opt.warmup_epochs is None:
        opt.warmup_epochs = method.warmup_epochs(opt.dataset)
    if opt.warmup_epochs < 0:
        parser.error(f"--warmup_epochs is a number of epochs >= 0, not {opt.warmup_epochs}")
    return resolve_training_defaults(opt, opt.model_s)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    opt = parse_training_args(parser, argv)
    teacher_state = read_teacher_file(parser, opt)
    opt = resolve_options(parser, opt, teacher_state=teacher_state)
    apply_threads(opt.threads)
    method = METHODS[opt.distill]
    try:
        env = init_distributed(opt.device)
        log = print if env.is_main else (lambda *_: None)
        check_device_options(opt, env.device.type, env.distributed)
        setup = prepare_run(opt, env, run_name(opt), view=method.data_view(opt), k=opt.nce_k, mode=opt.mode)
        n_cls = setup.spec.num_classes
        teacher = model_dict[opt.model_t](num_classes=n_cls)
        load_model_weights(teacher, opt.path_t, name=opt.model_t, state=teacher_state, flag="--model_t")
        del teacher_state  # the teacher holds its own copy of the weights
        student = model_dict[opt.model_s](num_classes=n_cls)
        sample = torch.zeros(2, *setup.train_loader.dataset[0][0].shape)
        # Built from the teacher as trained: OFD reads the batch norms that folding removes.
        term = build_term(method, student, teacher, sample, opt, setup.spec.n_data)
        if opt.fold_teacher_bn:
            probe = torch.randn(sample.shape, generator=torch.Generator().manual_seed(0))  # leaves the seeded RNG alone
            teacher = fold_teacher_batchnorm(teacher, probe, log)
    except (DataError, CheckpointError, ValueError) as err:
        parser.error(str(err))
    if opt.sync_bn and env.distributed:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    normalize = Normalize(setup.spec.mean, setup.spec.std).to(env.device)
    teacher.to(env.device)
    task = DistillTask(student, teacher, method, term, opt.gamma, opt.alpha, opt.beta, opt.kd_T,
                       logit_stand=opt.logit_stand, warmup_epochs=opt.warmup_epochs).to(env.device)
    precision = run_precision(opt, task, setup.train_loader, normalize, env.device, setup.resume_state, log)
    precision.prepare_network(teacher)
    precision.prepare_network(student)
    precision.prepare_module(task)
    log_summary(f"train_student.py: {setup.run_dir.name}",
                distillation_rows(opt, method, main_term=term is not None and method.main_stage_term,
                                  resumed=setup.resume_state is not None),
                opt, setup, precision, given_flags(parser, argv))
    teacher_eval = evaluate(teacher, setup.test_loader, normalize, env.device, precision)
    log(f"teacher {opt.model_t} ({opt.path_t}): test acc@1 {teacher_eval['acc']:.2f} acc@5 {teacher_eval['acc_top5']:.2f}")
    if method.init is not None:
        if setup.resume_state is None:
            run_init_stage(task, method, setup.train_loader, normalize, opt, env, setup.seed, log, precision)
        elif method.init.finish is not None:
            method.init.finish(task.term)  # the resumed state already holds the init stage's result
    return run_training(task, opt.model_s, opt, setup, normalize, precision)

if __name__ == "__main__":
    main()
