#!/usr/bin/env python3
"""How far a student's class-logit correlations are from its teacher's (the CRD paper's figure).

    python scripts/plot_corr.py --path_t save/models/wrn_40_2_vanilla/ckpt_epoch_240.pth \\
        --path_s save/models/wrn_40_1_vanilla/wrn_40_1_last.pth \\
        --path_s "save/student_model/S:wrn_40_1_T:wrn_40_2_cifar100_kd_r:0.1_a:0.9_b:0.0_1/wrn_40_1_last.pth" \\
        --path_s "save/student_model/S:wrn_40_1_T:wrn_40_2_cifar100_crd_r:1.0_a:0.0_b:0.8_1/wrn_40_1_last.pth" \\
        --labels "Student,KD,CRD" --output corr.png

For the teacher and each student, the logits of the CIFAR-100 test images give a 100 x 100 matrix of
correlations between class logits (Pearson, across images). One heat-map panel per student shows
``|corr_teacher - corr_student|`` on a colour scale shared by all panels; the title and the output
give its mean over all 100 x 100 entries. ``<output>.json`` holds the matrices and the means.

A checkpoint's architecture comes from ``--model_t``/``--model_s``, else from the checkpoint's
``model_name`` (written by this project), else from its folder name (``<model>_vanilla/...`` or
``S:<student>_T:<teacher>_.../``, the reference layouts).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from collect_results import PlotError, method_label, new_figure, parse_run_name  # noqa: E402
from kdzoo.dataset import CIFAR100Batched, DataError, Normalize  # noqa: E402
from kdzoo.dataset.base import collate_batch  # noqa: E402
from kdzoo.helper.checkpoint import (  # noqa: E402
    CheckpointError,
    load_model_weights,
    load_weights_file,
    resolve_model_name,
)
from kdzoo.helper.distributed import resolve_device  # noqa: E402
from kdzoo.helper.options import add_trust_checkpoint_arg  # noqa: E402
from kdzoo.models import model_dict  # noqa: E402


def logit_correlation(logits: torch.Tensor) -> torch.Tensor:
    """``(C, C)`` Pearson correlations between the columns (class logits) of ``(N, C)`` logits, in
    float64 (``numpy.corrcoef(logits.T)``); a class whose logit never varies gives NaN, as there."""
    x = logits.double()
    x = x - x.mean(dim=0)
    cov = x.T @ x
    std = cov.diagonal().sqrt()
    return cov / (std[:, None] * std[None, :])


def mean_abs_difference(corr_t: torch.Tensor, corr_s: torch.Tensor) -> float:
    """Mean of ``|corr_t - corr_s|`` over all entries (the diagonal, 0, included)."""
    return (corr_t - corr_s).abs().mean().item()


@torch.inference_mode()
def compute_logits(model: nn.Module, loader: Iterable, normalize: nn.Module,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, targets)`` of ``model`` in eval mode over ``loader``, on the CPU."""
    model.eval()
    logits, targets = [], []
    for images, labels in loader:
        logits.append(model(normalize(images.to(device))).float().cpu())
        targets.append(labels)
    return torch.cat(logits), torch.cat(targets)


def load_network(path: str | Path, explicit: str | None, flag: str, num_classes: int, device: torch.device,
                 trust: Sequence[str] = ()) -> tuple[str, nn.Module]:
    """The architecture of checkpoint ``path`` (``explicit``, else the one it records, else its
    folder's) and that network with the checkpoint's weights."""
    state = load_weights_file(path, trust=trust)
    arch = resolve_model_name(path, state, model_dict, explicit, flag)
    model = model_dict[arch](num_classes=num_classes)
    load_model_weights(model, path, name=arch, state=state, flag=flag)
    return arch, model.to(device)


def plot_differences(diffs: Sequence[torch.Tensor], titles: Sequence[str], suptitle: str | None = None):
    """One heat-map panel of ``|corr_T - corr_S|`` per student, one colour scale and colour bar."""
    vmax = max(float(d.nan_to_num().max()) for d in diffs) or 1.0
    fig = new_figure(3.6 * len(diffs) + 1.2, 4.2)
    axes = fig.subplots(1, len(diffs), squeeze=False)[0]
    for ax, diff, title in zip(axes, diffs, titles):
        image = ax.imshow(diff.numpy(), cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set(title=title, xlabel="class", ylabel="class")
    fig.colorbar(image, ax=list(axes), label="|corr teacher − corr student|", shrink=0.9)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def default_label(path: str | Path) -> str:
    """A panel title from the checkpoint's folder: the method's table label for a student run folder
    (``S:..._kd_r:0.1_a:0.9_...`` -> ``KD``), else the folder's name."""
    folder = Path(path).resolve().parent.name
    fields = parse_run_name(folder)
    return method_label(fields["distill"], fields["alpha"]) if fields else folder


def split_list(values: Sequence[str] | None) -> list[str]:
    """Repeated flags and comma lists alike: ``--x a,b --x c`` -> ``[a, b, c]``."""
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Heat maps of |teacher - student| class-logit correlations on the CIFAR-100 test set.")
    parser.add_argument("--path_t", required=True, help="teacher checkpoint ({'model': state_dict, ...})")
    parser.add_argument("--path_s", action="append", required=True,
                        help="student checkpoint; repeat the flag or give a comma list for several panels")
    parser.add_argument("--labels", action="append", default=None,
                        help="panel titles, one per student (repeat or comma list; default: the method of a "
                             "train_student.py run folder, else the folder name)")
    parser.add_argument("--model_t", default=None, help="teacher architecture (default: from the checkpoint)")
    parser.add_argument("--model_s", action="append", default=None,
                        help="student architecture(s): one for all, or one per student (default: from the checkpoints)")
    parser.add_argument("--data_folder", default="./data", help="folder with cifar-100-python/")
    parser.add_argument("--test_subset", type=int, default=None, help="use the first N test images")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--output", default="corr.png", help="PNG to write; the data go to the same name .json")
    add_trust_checkpoint_arg(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    opt = parser.parse_args(argv)
    paths_s = split_list(opt.path_s)
    labels = split_list(opt.labels) or [default_label(p) for p in paths_s]
    models_s = split_list(opt.model_s) or [None]
    if len(models_s) == 1:
        models_s = models_s * len(paths_s)
    if len(labels) != len(paths_s) or len(models_s) != len(paths_s):
        parser.error(f"{len(paths_s)} students (--path_s) need as many --labels (got {len(labels)}) and one "
                     f"--model_s or as many (got {len(models_s)})")
    if opt.test_subset is not None and opt.test_subset < 2:
        parser.error("--test_subset must be at least 2 (a correlation needs two images)")
    output = Path(opt.output)
    if output.suffix.lower() != ".png":
        parser.error(f"--output {output} must end in .png")
    try:
        device = resolve_device(opt.device)
        test = CIFAR100Batched(opt.data_folder, train=False, limit=opt.test_subset, uint8=True)
        arch_t, teacher = load_network(opt.path_t, opt.model_t, "--model_t", test.num_classes, device,
                                       opt.trust_checkpoint)
        archs_s, students = zip(*(load_network(p, m, "--model_s", test.num_classes, device, opt.trust_checkpoint)
                                  for p, m in zip(paths_s, models_s)))
    except (DataError, CheckpointError, ValueError) as err:
        parser.error(str(err))
    loader = DataLoader(test, batch_size=opt.batch_size, collate_fn=collate_batch)
    normalize = Normalize(test.mean, test.std).to(device)

    def evaluate(model: nn.Module) -> tuple[torch.Tensor, float]:
        logits, targets = compute_logits(model, loader, normalize, device)
        return logit_correlation(logits), 100.0 * (logits.argmax(dim=1) == targets).double().mean().item()

    corr_t, acc_t = evaluate(teacher)
    print(f"teacher {arch_t} ({opt.path_t}): test acc@1 {acc_t:.2f} on {len(test)} images")
    result = {"test_images": len(test),
              "teacher": {"path": str(opt.path_t), "model": arch_t, "acc": acc_t, "corr": corr_t.tolist()},
              "students": []}
    diffs, titles = [], []
    for label, path, arch, student in zip(labels, paths_s, archs_s, students):
        corr_s, acc_s = evaluate(student)
        diff = (corr_t - corr_s).abs()
        mean = mean_abs_difference(corr_t, corr_s)
        print(f"{label}: {arch} ({path}): test acc@1 {acc_s:.2f}, mean |corr_T - corr_S| {mean:.4f}")
        result["students"].append({"label": label, "path": str(path), "model": arch, "acc": acc_s,
                                   "mean_abs_diff": mean, "corr": corr_s.tolist(), "abs_diff": diff.tolist()})
        diffs.append(diff)
        titles.append(f"{label}\nmean |Δcorr| = {mean:.4f}")
    try:
        fig = plot_differences(diffs, titles, f"class-logit correlations: difference to the teacher {arch_t} "
                                              f"({len(test)} CIFAR-100 test images)")
    except PlotError as err:
        parser.error(str(err))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=150)
    json_path = output.with_suffix(".json")
    json_path.write_text(json.dumps(result))
    print(f"wrote {output} and {json_path}")
    return result


if __name__ == "__main__":
    main()
