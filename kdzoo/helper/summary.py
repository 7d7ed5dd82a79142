"""The block a run prints before its first step: every resolved setting, marked as given on the
command line or filled in by a default, so that a log says what ran and how long it will take."""
from __future__ import annotations

from typing import Any, Collection, Sequence

import torch

from .autotune import WorkersChoice
from .precision import Precision, cpu_has_fast_bfloat16
from .util import as_list, per_teacher

# A summary row: label, value, and the flag destinations that set the value (empty: no mark).
Row = tuple[str, str, tuple[str, ...]]


def _mark(flags: Sequence[str], given: Collection[str]) -> str:
    if not flags:
        return ""
    named = [f for f in flags if f in given]
    if not named:
        return "  (default)"
    if len(named) == len(flags):
        return "  (given)"
    return f"  (given: {', '.join('--' + f for f in named)})"


def format_summary(title: str, rows: Sequence[Row], given: Collection[str]) -> str:
    """``title`` then one aligned line per row: ``label  value  (given|default)``."""
    width = max(len(label) for label, _, _ in rows)
    lines = [f"  {label:<{width}}  {value}{_mark(flags, given)}" for label, value, flags in rows]
    return "\n".join([title, *lines])


def _precision_text(precision: Precision) -> str:
    if precision.amp:
        text = f"{str(precision.amp_dtype).removeprefix('torch.')} autocast"
        if precision.device.type == "cpu" and not cpu_has_fast_bfloat16():
            text += " (emulated on this CPU: slower than fp32)"
    else:
        text = "fp32"
    return ", ".join([text] + [name for name, on in (("channels_last", precision.channels_last),
                                                     ("compiled", precision.compile)) if on])


def _workers_text(opt: Any) -> str:
    choice = (getattr(opt, "autotune", None) or {}).get("num_workers")
    return WorkersChoice(**choice).describe() if choice else f"{opt.num_workers} DataLoader workers"


def training_rows(opt: Any, setup: Any, precision: Precision) -> list[Row]:
    """The shared flags as resolved for this run (``setup``: :class:`helper.trainer.RunSetup`)."""
    env, loader = setup.env, setup.train_loader
    if setup.resume_state is not None:
        seed, seed_flags = f"{setup.seed} (the resumed run's)", ()
    elif opt.seed is None:
        seed, seed_flags = f"{setup.seed} (default: drawn at random, recorded in the checkpoints)", ()
    else:
        seed, seed_flags = str(setup.seed), ("seed",)
    processes = f", {env.world_size} processes" if env.distributed else ""
    return [
        ("run folder", f"{setup.run_dir}" + (" (resumed)" if setup.resume_state is not None else ""), ()),
        ("data", f"{opt.dataset} in {opt.data_folder}: {len(loader.dataset)} training / "
                 f"{len(setup.test_loader.dataset)} test images",
         ("dataset", "data_folder", "train_subset", "test_subset")),
        ("batch", f"{opt.batch_size} images, {len(loader)} steps per epoch{processes}", ("batch_size",)),
        ("epochs", str(opt.epochs), ("epochs",)),
        ("learning rate", f"{opt.learning_rate:g}", ("learning_rate",)),
        ("lr schedule", f"x{opt.lr_decay_rate:g} after epochs {','.join(map(str, opt.lr_decay_epochs))}",
         ("lr_decay_epochs", "lr_decay_rate")),
        ("weight decay", f"{opt.weight_decay:g}, momentum {opt.momentum:g}", ("weight_decay", "momentum")),
        ("seed", seed, seed_flags),
        ("device", f"{env.device}{processes}", ("device",)),
        ("threads", f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op "
                    f"per process", ("threads",)),
        ("data loading", _workers_text(opt), ("num_workers",)),
        ("precision", _precision_text(precision), ("amp", "channels_last", "compile")),
    ]


def distillation_rows(opt: Any, method: Any, main_term: bool, resumed: bool,
                      trains_classifier: bool = True) -> list[Row]:
    """The networks and their input views, the method (a row of ``distiller_zoo/registry.py``), the
    loss with the names the logs give its terms, and the init stage. ``main_term``: the method adds
    a term to the distillation loss (KD alone has none; AB and FSP use theirs in the init stage
    only); ``trains_classifier=False``: label-free distillation (``-r 0 -a 0``)."""
    paths, names = as_list(opt.path_t), as_list(opt.model_t)
    views_t = per_teacher(getattr(opt, "input_t", None) or "rgb", len(paths))
    loss = f"{opt.gamma:g} * cls + {opt.alpha:g} * div"
    names_text = "cls: cross-entropy, div: KD term at the temperature below"
    if main_term:
        summed = f", summed over the {len(paths)} teachers" if len(paths) > 1 else ""
        loss += f" + {opt.beta:g} * kd"
        names_text += f", kd: {method.name}'s term{summed}"
    if len(paths) == 1:
        teacher_rows: list[Row] = [("teacher", f"{names[0]} from {paths[0]}", ("model_t",))]
    else:
        teacher_rows = [(f"teacher {i + 1}/{len(paths)}", f"{name} from {path}", ("model_t",))
                        for i, (name, path) in enumerate(zip(names, paths))]
        teacher_rows.append(("KD target", "the mean of the teachers' softened probabilities", ()))
    rows: list[Row] = [
        *teacher_rows,
        ("student", opt.model_s, ("model_s",)),
        ("input views", f"student {getattr(opt, 'input_s', 'rgb')}, teacher{'s' if len(paths) > 1 else ''} "
                        f"{', '.join(views_t)}", ("input_s", "input_t")),
        ("method", f"{method.name}: {method.paper}", ("distill",)),
        ("loss", f"{loss}  ({names_text}; default weights: the paper's)", ("gamma", "alpha", "beta")),
        ("KD temperature", f"{opt.kd_T:g}", ("kd_T",)),
    ]
    if not trains_classifier:
        rows.append(("classifier", "not trained (-r 0 -a 0: label-free distillation); its test accuracy is chance "
                                   "level: judge the student with a linear probe, transfer_student.py", ("gamma", "alpha")))
    if method.init is not None:
        stage = ("done before the checkpoint (resumed run)" if resumed
                 else f"{opt.init_epochs} epochs of {method.name}'s term first, then the {opt.epochs} "
                      f"distillation epochs")
        rows.append(("init stage", stage, ("init_epochs",)))
    return rows


def log_summary(title: str, rows: Sequence[Row], opt: Any, setup: Any, precision: Precision,
                given: Collection[str]) -> None:
    """Print (on rank 0) ``title``, ``rows`` and the shared flags' rows (:func:`training_rows`)."""
    if setup.env.is_main:
        print(format_summary(title, [*rows, *training_rows(opt, setup, precision)], given), flush=True)
