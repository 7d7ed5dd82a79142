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
import json
from typing import Any, Sequence

import torch
import torch.nn as nn

from kdzoo.dataset import DataError
from kdzoo.dataset.views import VIEW_HELP, InputView, InputViews, view_arg, view_channels
from kdzoo.crd import WCORD_DEFAULTS
from kdzoo.distiller_zoo.registry import METHODS
from kdzoo.helper.autotune import run_precision
from kdzoo.helper.checkpoint import (
    CheckpointError,
    atomic_write,
    check_input_view,
    load_model_weights,
    load_weights_file,
    resolve_model_name,
)
from kdzoo.helper.distill import (
    DistillTask,
    TeacherEnsemble,
    build_term,
    finish_init_stage,
    fold_teacher_batchnorm,
    run_init_stage,
)
from kdzoo.helper.distributed import init_distributed
from kdzoo.helper.loops import evaluate
from kdzoo.helper.options import add_training_args, check_device_options, parse_training_args, resolve_training_defaults
from kdzoo.helper.options import apply_threads, given_flags
from kdzoo.helper.summary import distillation_rows, log_summary
from kdzoo.helper.trainer import prepare_run, run_training
from kdzoo.helper.util import as_list, per_teacher
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
    g.add_argument("--path_t", required=True, action="append",
                   help="teacher weights: a checkpoint ({'model': state_dict, ...}) or a torchvision weight file; "
                        "give it several times to distil an ensemble (one method term per teacher, summed; KD reads "
                        "the mean of the teachers' softened probabilities)")
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
    g.add_argument("--model_t", default=None, action="append",
                   help="teacher architecture, once per --path_t in the same order (default: the one each --path_t "
                        "records, else its folder, <model>_vanilla/, or a torchvision file name, "
                        "resnet34-<hash>.pth -> imagenet_resnet34)")

    g = parser.add_argument_group("input views (this project's additions: cross-modal and privileged information)")
    g.add_argument("--input_s", type=view_arg, default="rgb", metavar="VIEW",
                   help=f"what the student sees of each image (default: rgb). {VIEW_HELP}")
    g.add_argument("--input_t", type=view_arg, default=None, action="append", metavar="VIEW",
                   help="what the teacher sees: once for every teacher, or once per --path_t (default: rgb); it must "
                        "be the view the teacher was trained on (its checkpoint records it)")

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
    weights marks logit standardisation, so such runs never pool with plain ones. Several teachers
    are named ``T:<t1>+<t2>+...``; input views other than rgb add ``_in:<teachers' views>-<student's>``."""
    logit_stand = "_ls" if opt.logit_stand else ""
    views_t = as_list(opt.input_t)
    views = "" if set(views_t) == {opt.input_s} == {"rgb"} else f"_in:{'+'.join(views_t)}-{opt.input_s}"
    return (f"S:{opt.model_s}_T:{'+'.join(as_list(opt.model_t))}_{opt.dataset}_{opt.distill}_"
            f"r:{opt.gamma}_a:{opt.alpha}_b:{opt.beta}{logit_stand}{views}_{opt.trial}")


def read_teacher_files(parser: argparse.ArgumentParser, opt: argparse.Namespace) -> list[dict[str, Any]]:
    """The contents of every ``--path_t``, read once and safely (``helper/checkpoint.py``)."""
    states = []
    for path in as_list(opt.path_t):
        try:
            states.append(load_weights_file(path, trust=opt.trust_checkpoint))
        except CheckpointError as err:
            parser.error(f"--path_t: {err}")
    return states


def _per_teacher(parser: argparse.ArgumentParser, flag: str, values: list[Any] | None, n: int,
                 default: Any) -> list[Any]:
    """A flag given once per teacher, or once for all of them, or not at all (``default``)."""
    if not values:
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        parser.error(f"{flag} is given {len(values)} times for {n} --path_t: give it once per teacher, in the "
                     "same order, once for all of them, or leave it out")
    return values


def _collapse(values: list[Any]) -> Any:
    """One teacher's options stay single values, so its folder, checkpoints and records are exactly
    a single-teacher run's; several teachers keep lists."""
    return values[0] if len(values) == 1 else values


def resolve_options(parser: argparse.ArgumentParser, opt: argparse.Namespace, require_teacher_file: bool = True,
                    teacher_states: list[dict[str, Any]] | None = None) -> argparse.Namespace:
    """Fill in the teachers' names and views, paper weights and the dataset's recipe
    (``helper/options.py``); refuse impossible flags. A teacher is its ``--model_t``, else the
    architecture its checkpoint (``teacher_states``, read here when not given) records, else its
    folder's name. ``require_teacher_file=False`` serves tools that build the networks without
    loading weights. With one teacher ``path_t``, ``model_t`` and ``input_t`` are single values,
    with several, lists in the teachers' order (``helper.util.as_list`` reads either)."""
    if opt.model_s not in model_dict:
        parser.error(f"unknown --model_s {opt.model_s!r}; choose one of: {', '.join(model_dict)}")
    paths = as_list(opt.path_t)
    if require_teacher_file and teacher_states is None:
        teacher_states = read_teacher_files(parser, opt)
    states = teacher_states or [{}] * len(paths)
    names = _per_teacher(parser, "--model_t", as_list(opt.model_t) if opt.model_t else None, len(paths), None)
    views = _per_teacher(parser, "--input_t", as_list(opt.input_t) if opt.input_t else None, len(paths), "rgb")
    try:
        names = [resolve_model_name(path, state, model_dict, name, "--model_t")
                 for path, state, name in zip(paths, states, names)]
        if require_teacher_file:
            for path, state, view in zip(paths, states, views):
                check_input_view(state, path, view, "--input_t")
    except CheckpointError as err:
        parser.error(str(err))
    opt.path_t, opt.model_t = _collapse(paths), _collapse(names)
    opt.input_t = views[0] if len(set(views)) == 1 else views
    # Flags left out take the paper's value for this teacher/student pair (weights, temperature,
    # options); with several teachers, for the first teacher's pair.
    method = METHODS[opt.distill]
    for flag, value in method.paper_settings(names[0], opt.model_s).items():
        if getattr(opt, flag, None) is None:
            setattr(opt, flag, value)
    if opt.warmup_epochs is None:
        opt.warmup_epochs = method.warmup_epochs(opt.dataset)
    if opt.warmup_epochs < 0:
        parser.error(f"--warmup_epochs is a number of epochs >= 0, not {opt.warmup_epochs}")
    if not opt.gamma and not opt.alpha and not (method.has_main_term and opt.beta):
        parser.error(f"-r 0 -a 0 leaves nothing to learn from with --distill {opt.distill} -b {opt.beta:g}: label-free "
                     "distillation needs a method with a main-stage term and -b > 0 (e.g. --distill crd -b 0.8)")
    return resolve_training_defaults(opt, opt.model_s)


def build_teachers(opt: argparse.Namespace, states: list[dict[str, Any]], n_cls: int) -> list[nn.Module]:
    """Every teacher with its weights, in ``--path_t`` order (each reads its own input view)."""
    teachers = []
    for path, name, view, state in zip(as_list(opt.path_t), as_list(opt.model_t), teacher_views(opt), states):
        teacher = model_dict[name](num_classes=n_cls, in_channels=view_channels(view))
        load_model_weights(teacher, path, name=name, state=state, flag="--model_t")
        teachers.append(teacher)
    return teachers


def teacher_views(opt: argparse.Namespace) -> list[str]:
    """The input view of each teacher, in ``--path_t`` order."""
    return per_teacher(opt.input_t, len(as_list(opt.path_t)))


def evaluate_teachers(opt: argparse.Namespace, teachers: list[nn.Module], views_t: list[InputView], setup: Any,
                      precision: Any, log: Any) -> dict[str, Any]:
    """Each teacher's test accuracy on its own view and, with several, the ensemble's (the mean of
    their probabilities, as the KD term reads them at T = 1); printed, and written to
    ``teachers.json`` in the run folder."""
    device = setup.env.device
    record: dict[str, Any] = {"teachers": [], "ensemble": None}
    paths, names = as_list(opt.path_t), as_list(opt.model_t)
    for i, (teacher, view, path, name) in enumerate(zip(teachers, views_t, paths, names)):
        result = evaluate(teacher, setup.test_loader, view, device, precision)
        which = f"teacher {i + 1}/{len(teachers)} {name}" if len(teachers) > 1 else f"teacher {name}"
        seen = f" on {view.view}" if view.view != "rgb" else ""
        log(f"{which} ({path}){seen}: test acc@1 {result['acc']:.2f} acc@5 {result['acc_top5']:.2f}")
        record["teachers"].append({"path": str(path), "model": name, "input": view.view, "acc": result["acc"],
                                   "acc_top5": result["acc_top5"]})
    if len(teachers) > 1:
        result = evaluate(TeacherEnsemble(teachers), setup.test_loader, InputViews(views_t), device, precision)
        log(f"ensemble of the {len(teachers)} teachers (mean of their probabilities): test acc@1 {result['acc']:.2f} "
            f"acc@5 {result['acc_top5']:.2f}")
        record["ensemble"] = {"acc": result["acc"], "acc_top5": result["acc_top5"]}
    if setup.env.is_main:
        atomic_write(setup.run_dir / "teachers.json", lambda f: f.write(json.dumps(record, indent=1).encode()))
    return record


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    opt = parse_training_args(parser, argv)
    teacher_states = read_teacher_files(parser, opt)
    opt = resolve_options(parser, opt, teacher_states=teacher_states)
    apply_threads(opt.threads)
    method = METHODS[opt.distill]
    try:
        env = init_distributed(opt.device)
        log = print if env.is_main else (lambda *_: None)
        check_device_options(opt, env.device.type, env.distributed)
        setup = prepare_run(opt, env, run_name(opt), view=method.data_view(opt), k=opt.nce_k, mode=opt.mode)
        n_cls = setup.spec.num_classes
        view_s = InputView(opt.input_s, setup.spec.mean, setup.spec.std)
        views_t = [InputView(v, setup.spec.mean, setup.spec.std) for v in teacher_views(opt)]
        teachers = build_teachers(opt, teacher_states, n_cls)
        del teacher_states  # the teachers hold their own copies of the weights
        student = model_dict[opt.model_s](num_classes=n_cls, in_channels=view_s.channels)
        side = setup.train_loader.dataset[0][0].shape[1:]
        sample = torch.zeros(2, view_s.channels, *side)
        terms = []
        for i, (teacher, view) in enumerate(zip(teachers, views_t)):
            teacher_sample = torch.zeros(2, view.channels, *side)
            # Built from the teacher as trained: OFD reads the batch norms that folding removes.
            terms.append(build_term(method, student, teacher, sample, opt, setup.spec.n_data, teacher_sample))
            if opt.fold_teacher_bn:
                probe = torch.randn(teacher_sample.shape, generator=torch.Generator().manual_seed(0))  # leaves the seeded RNG alone
                teachers[i] = fold_teacher_batchnorm(teacher, probe, log)
    except (DataError, CheckpointError, ValueError) as err:
        parser.error(str(err))
    if opt.sync_bn and env.distributed:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    # One view for every network: the plain batch; otherwise one input per network, each view computed once.
    same_view = all(v.view == view_s.view for v in views_t)
    inputs = view_s if same_view else InputViews([view_s, *views_t])
    inputs.to(env.device)
    for teacher in teachers:
        teacher.to(env.device)
    task = DistillTask(student, teachers, method, terms, opt.gamma, opt.alpha, opt.beta, opt.kd_T,
                       logit_stand=opt.logit_stand, warmup_epochs=opt.warmup_epochs).to(env.device)
    precision = run_precision(opt, task, setup.train_loader, inputs, env.device, setup.resume_state, log)
    for network in (*teachers, student):
        precision.prepare_network(network)
    precision.prepare_module(task)
    log_summary(f"train_student.py: {setup.run_dir.name}",
                distillation_rows(opt, method, main_term=task.use_term, resumed=setup.resume_state is not None,
                                  trains_classifier=task.trains_classifier),
                opt, setup, precision, given_flags(parser, argv))
    evaluate_teachers(opt, teachers, [v.to(env.device) for v in views_t], setup, precision, log)
    if method.init is not None:
        if setup.resume_state is None:
            run_init_stage(task, method, setup.train_loader, inputs, opt, env, setup.seed, log, precision)
        else:
            finish_init_stage(task, method)  # the resumed state already holds the init stage's result
    result = run_training(task, opt.model_s, opt, setup, inputs, precision, eval_input=view_s)
    if not task.trains_classifier:
        log(f"the classifier of {opt.model_s} was not trained (-r 0 -a 0): its test accuracy is chance level. Judge "
            f"the features with a linear probe: python transfer_student.py --dataset {opt.dataset} --input "
            f"{opt.input_s} --path_s {result['run_dir']}/{opt.model_s}_last.pth")
    return result


if __name__ == "__main__":
    main()
