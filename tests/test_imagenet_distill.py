"""ImageNet distillation: ``train_student.py --dataset imagenet`` end to end on a tiny generated
ImageFolder tree (CPU, 32x32 crops), teachers given as torchvision weight files or as project
checkpoints, the dataset recipes of ``helper/options.py``, clear errors for wrong weight files,
every registry row on the ImageNet ResNets, and (``slow``) CRD's memories under two processes.

Expected values are written out by hand (the recipes, the learning-rate scaling, feature shapes)
or computed independently (teachers are torchvision's own ``resnet18`` with a classifier that
always answers one class, so their test accuracy follows from the label counts alone).
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision

import train_student
import train_teacher
from ddp_launch import ROOT, run_script_on_ranks
from kdzoo.dataset import ImageFolderBatched, build_datasets
from kdzoo.distiller_zoo.registry import METHODS, BuildContext
from fakedata import make_image_tree
from kdzoo.helper.checkpoint import CheckpointError, load_checkpoint, model_name_from_path
from kdzoo.helper.distill import probe_shapes
from kdzoo.helper.logger import read_metrics
from kdzoo.helper.options import parse_training_args, resolve_training_defaults
from kdzoo.models import model_dict

SIZE, BATCH, K = 32, 6, 4
CLASSES = ("ant", "bee", "cat")  # ImageFolder's (sorted) class order
TRAIN_PER_CLASS = 4
VAL_COUNTS = {"ant": 1, "bee": 2, "cat": 3}  # unequal, so a constant answer has a telling accuracy
LR = 0.1 * BATCH / 256  # the ImageNet rule at the test's global batch

# The contrastive memories each method keeps in the task state, and their shapes here.
N_TRAIN = TRAIN_PER_CLASS * len(CLASSES)
MEMORIES = {
    ("crd", "bank"): {"term.loss.contrast.memory_v1": (N_TRAIN, 128), "term.loss.contrast.memory_v2": (N_TRAIN, 128)},
    ("crd", "queue"): {"term.loss.contrast.queue": (K, 128)},
    ("rrd", None): {"term.loss.queue": (K, 128)},
    ("wcord", None): {"term.loss.contrast.memory_v1": (N_TRAIN, 128), "term.loss.contrast.memory_v2": (N_TRAIN, 128)},
}


# --------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_image_tree(
        tmp_path_factory.mktemp("imagenet"),
        {"train": {c: TRAIN_PER_CLASS for c in CLASSES}, "val": VAL_COUNTS}, sizes=((40, 36), (36, 44)),
    )


def constant_teacher(answer: int, num_classes: int = len(CLASSES)) -> dict[str, torch.Tensor]:
    """State dict of torchvision's resnet18 whose classifier always answers ``answer``: its test
    accuracy is the share of that class in the test set, whatever the images."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(answer), num_classes) * 10.0)
    return model.state_dict()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """The same architecture in both formats, answering different classes (so each file's own
    weights must have been loaded to print its accuracy)."""
    root = tmp_path_factory.mktemp("teachers")
    bare = root / "hub" / "resnet18-5c1a7e2f.pth"  # torchvision's <arch>-<hash>.pth naming
    bare.parent.mkdir()
    torch.save(constant_teacher(answer=2), bare)
    ckpt = root / "imagenet_resnet18_vanilla" / "ckpt_epoch_100.pth"  # the reference's folder naming
    ckpt.parent.mkdir()
    torch.save({"model": constant_teacher(answer=1), "epoch": 100, "accuracy": 0.0}, ckpt)
    return {"torchvision": bare, "checkpoint": ckpt}


def val_share(cls: str) -> float:
    return 100.0 * VAL_COUNTS[cls] / sum(VAL_COUNTS.values())


def distill(tree: Path, save: Path, path_t: Path, *flags: str) -> tuple[dict, str]:
    argv = ["--dataset", "imagenet", "--data_folder", str(tree), "--path_t", str(path_t),
            "--model_s", "imagenet_resnet18", "--image_size", str(SIZE), "--batch_size", str(BATCH),
            "--epochs", "1", "--nce_k", str(K), "--device", "cpu", "--num_workers", "0",
            "--save_folder", str(save), "--seed", "0", "--print_freq", "1000", *flags]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = train_student.main(argv)
    return result, out.getvalue()


def usage_error(capsys, main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------------ recipes (options)

IMAGENET = dict(epochs=100, batch_size=256, learning_rate=0.1, lr_decay_epochs=[30, 60, 90], weight_decay=1e-4,
                image_size=224)
CIFAR = dict(epochs=240, batch_size=64, learning_rate=0.05, lr_decay_epochs=[150, 180, 210], weight_decay=5e-4,
             image_size=32)


@pytest.mark.parametrize("flags, expected", [
    ([], CIFAR),
    (["--model_s", "MobileNetV2"], {**CIFAR, "learning_rate": 0.01}),
    (["--dataset", "imagenet"], IMAGENET),
    # the lr follows the global batch: 0.1 per 256 images
    (["--dataset", "imagenet", "--batch_size", "512"], {**IMAGENET, "batch_size": 512, "learning_rate": 0.2}),
    (["--dataset", "imagenet", "--batch_size", "64"], {**IMAGENET, "batch_size": 64, "learning_rate": 0.025}),
    # explicit flags win, even where they equal the other dataset's defaults
    (["--dataset", "imagenet", "--epochs", "240", "--lr_decay_epochs", "150,180,210", "--weight_decay", "5e-4",
      "--batch_size", "64", "--learning_rate", "0.3", "--image_size", "160"],
     dict(CIFAR, learning_rate=0.3, image_size=160)),
    (["--epochs", "100", "--batch_size", "256", "--weight_decay", "1e-4"],
     dict(CIFAR, epochs=100, batch_size=256, weight_decay=1e-4)),  # CIFAR: lr 0.05 at any batch
    (["--batch_size", "512", "--dataset", "imagenet", "--learning_rate", "0.05"],
     {**IMAGENET, "batch_size": 512, "learning_rate": 0.05}),
])
def test_student_recipe_defaults(flags, expected):
    parser = train_student.build_parser()
    argv = ["--path_t", "hub/resnet34-b627a593.pth", "--model_s", "imagenet_resnet18", *flags]
    opt = train_student.resolve_options(parser, parse_training_args(parser, argv),
                                        require_teacher_file=False)
    got = {key: getattr(opt, key) for key in expected}
    assert got.pop("lr_decay_epochs") == expected["lr_decay_epochs"]
    assert got == pytest.approx({k: v for k, v in expected.items() if k != "lr_decay_epochs"}, rel=1e-12)
    assert opt.model_t == "imagenet_resnet34"  # read from torchvision's file name


def test_plain_parse_keeps_the_reference_defaults():
    """Tools that only parse (scripts/collect_results.py reads commands this way) see the
    reference's CIFAR values, as before the recipes existed."""
    opt = train_teacher.build_parser().parse_args([])
    assert (opt.epochs, opt.batch_size, opt.lr_decay_epochs, opt.weight_decay) == (240, 64, [150, 180, 210], 5e-4)
    assert opt.learning_rate is None and opt.image_size is None


@pytest.mark.parametrize("flags, epochs, lr, decay, wd, size", [
    ([], 100, 0.1 * 256 / 256, [30, 60, 90], 1e-4, 224),
    (["--batch_size", "8", "--image_size", "48"], 100, 0.1 * 8 / 256, [30, 60, 90], 1e-4, 48),
    (["--epochs", "3", "--lr_decay_epochs", "2", "--weight_decay", "0", "--learning_rate", "0.5"], 3, 0.5, [2], 0.0,
     224),
])
def test_teacher_recipe_reaches_the_training_driver(flags, epochs, lr, decay, wd, size, tree, tmp_path, monkeypatch):
    """train_teacher.py on ImageFolder data hands the recipe to ``fit`` (replaced: no training) and
    builds its loaders at the recipe's image size."""
    seen = {}

    def fake_fit(task, model_name, schedule, env, train_loader, test_loader, *args, **kwargs):
        seen.update(schedule=schedule, train=train_loader.dataset[0][0].shape, test=test_loader.dataset[0][0].shape,
                    classes=task.model.fc.out_features)
        return {}

    import kdzoo.helper.trainer

    monkeypatch.setattr(kdzoo.helper.trainer, "fit", fake_fit)
    train_teacher.main(["--model", "imagenet_resnet18", "--dataset", "imagenet", "--data_folder", str(tree),
                        "--save_folder", str(tmp_path), "--device", "cpu", "--num_workers", "0", *flags])
    s = seen["schedule"]
    assert (s.epochs, s.lr_decay_epochs, s.lr_decay_rate, s.momentum) == (epochs, decay, 0.1, 0.9)
    assert s.learning_rate == pytest.approx(lr, rel=1e-12) and s.weight_decay == pytest.approx(wd, rel=1e-12)
    assert seen["train"] == seen["test"] == (3, size, size)
    assert seen["classes"] == len(CLASSES)


def test_image_size_is_refused_for_cifar(capsys, tmp_path):
    err = usage_error(capsys, train_teacher.main, ["--model", "resnet8", "--dataset", "cifar100", "--image_size", "64",
                                                   "--data_folder", str(tmp_path), "--save_folder", str(tmp_path),
                                                   "--device", "cpu"])
    assert "--image_size" in err and "32x32" in err


# ----------------------------------------------------------------------------- ImageFolder subsets

def test_subset_of_an_image_folder_is_evenly_spaced(tree):
    files = sorted((tree / "train").glob("*/*.png"))  # ImageFolder's order: class, then file name
    assert len(files) == 12
    subset = ImageFolderBatched(tree / "train", train=False, image_size=SIZE, limit=6)
    assert [Path(p) for p, _ in subset.folder.samples] == files[0:12:2]
    assert subset.labels.tolist() == [0, 0, 1, 1, 2, 2] and len(subset) == 6
    images, labels = subset.batch([0, 5])
    assert images.shape == (2, 3, SIZE, SIZE) and labels.tolist() == [0, 2]
    train, test = build_datasets("imagenet", tree, train_limit=3, test_limit=2, image_size=SIZE)
    assert train.labels.tolist() == [0, 1, 2]  # positions 0, 4, 8
    assert test.labels.tolist() == [0, 2]  # positions 0, 3 of (ant, bee, bee, cat, cat, cat)
    assert len(build_datasets("imagenet", tree, train_limit=100)[0]) == 12


# ------------------------------------------------------------------------------- teacher weight files

@pytest.mark.parametrize("path, name", [
    ("hub/checkpoints/resnet34-b627a593.pth", "imagenet_resnet34"),
    ("resnet18-f37072fd.pth", "imagenet_resnet18"),
    ("weights/resnet50-0676ba61.pth", "imagenet_resnet50"),
    ("weights/resnet50-11ad3fa6.pth", "imagenet_resnet50"),
    ("save/models/imagenet_resnet34_vanilla/ckpt_epoch_100.pth", "imagenet_resnet34"),
    ("resnet56_vanilla/resnet56-0123abcd.pth", "resnet56"),  # no imagenet_resnet56: the folder decides
])
def test_model_name_from_torchvision_file_names(path, name):
    assert model_name_from_path(path, model_dict) == name


@pytest.mark.parametrize("path", ["weights/resnet34.pth", "weights/wide_resnet50_2-95faca4d.pth",
                                  "weights/resnet34-b627.pth"])
def test_unknown_weight_file_names(path):
    with pytest.raises(CheckpointError, match="resnet34-b627a593.pth"):
        model_name_from_path(path, model_dict)


@pytest.mark.parametrize("fmt, answer", [("torchvision", "cat"), ("checkpoint", "bee")])
def test_kd_with_either_teacher_format(fmt, answer, tree, teachers, tmp_path):
    result, out = distill(tree, tmp_path, teachers[fmt], "--distill", "kd")
    # the teacher's architecture comes from the file name / folder, its weights from the file
    assert f"teacher imagenet_resnet18 ({teachers[fmt]}): test acc@1 {val_share(answer):.2f} acc@5 100.00" in out
    run_dir = Path(result["run_dir"])
    assert run_dir.name == "S:imagenet_resnet18_T:imagenet_resnet18_imagenet_kd_r:0.1_a:0.9_b:0.0_1"
    state = load_checkpoint(run_dir / "imagenet_resnet18_last.pth")
    opt = state["opt"]
    assert (opt["dataset"], opt["image_size"], opt["epochs"], opt["batch_size"]) == ("imagenet", SIZE, 1, BATCH)
    assert (opt["lr_decay_epochs"], opt["weight_decay"]) == ([30, 60, 90], 1e-4)
    assert opt["learning_rate"] == pytest.approx(LR, rel=1e-12)
    [row] = read_metrics(run_dir)
    assert row["lr"] == pytest.approx(LR, rel=1e-12) and math.isfinite(row["train_loss"])
    # the student's weights are torchvision's layout
    torchvision.models.resnet18(weights=None, num_classes=len(CLASSES)).load_state_dict(state["model"], strict=True)


# Each run costs ~5 s here (ResNet-18 init and checkpoints dominate): CRD's two memories run by
# default, the other methods with -m slow (their terms run by default in the registry tests below).
@pytest.mark.parametrize("distill_flags", [
    ("crd", "bank"), ("crd", "queue"),
    *[pytest.param(m, marks=pytest.mark.slow) for m in [("attention",), ("similarity",), ("correlation",), ("rrd",),
                                                          ("wcord",)]],
], ids="-".join)
def test_methods_end_to_end(distill_flags, tree, teachers, tmp_path):
    method, *memory = distill_flags
    flags = ["--distill", method] + (["--crd_memory", memory[0]] if memory else [])
    result, out = distill(tree, tmp_path, teachers["torchvision"], *flags)
    assert json.loads(out.strip().splitlines()[-1]) == result
    run_dir = Path(result["run_dir"])
    assert f"_imagenet_{method}_" in run_dir.name
    [row] = read_metrics(run_dir)
    assert math.isfinite(row["train_kd"]) and math.isfinite(row["train_loss"])
    task = load_checkpoint(run_dir / "imagenet_resnet18_last.pth")["task"]
    for key, shape in MEMORIES.get((method, memory[0] if memory else None), {}).items():
        assert tuple(task[key].shape) == shape, key


@pytest.mark.parametrize("case", ["other_arch", "other_classes", "no_weights", "truncated", "unnamed"])
def test_wrong_teacher_file_is_a_clear_error(case, tree, tmp_path, capsys):
    if case == "other_arch":  # resnet18 weights under a resnet34 file name
        path = tmp_path / "resnet34-0123abcd.pth"
        torch.save(constant_teacher(0), path)
        expected = ["imagenet_resnet34", "missing key(s): layer1.2.conv1.weight", "--model_t"]  # resnet34's third block
    elif case == "other_classes":  # the published 1000-class file on a 3-class tree
        path = tmp_path / "resnet18-0123abcd.pth"
        torch.save(constant_teacher(0, num_classes=1000), path)
        expected = ["imagenet_resnet18", "classifier", "1000 outputs", "3 classes"]
    elif case == "no_weights":
        path = tmp_path / "resnet18-0123abcd.pth"
        torch.save({"state_dict": constant_teacher(0), "epoch": 3}, path)
        expected = ["holds no model weights", "state_dict", "torchvision"]
    elif case == "truncated":
        path = tmp_path / "resnet18-0123abcd.pth"
        torch.save(constant_teacher(0), path)
        path.write_bytes(path.read_bytes()[:1000])
        expected = ["cannot read", "truncated"]
    else:
        path = tmp_path / "weights" / "teacher.pth"
        path.parent.mkdir()
        torch.save(constant_teacher(0), path)
        expected = ["cannot tell the architecture", "resnet34-b627a593.pth", "--model_t"]
    err = usage_error(capsys, train_student.main, [
        "--dataset", "imagenet", "--data_folder", str(tree), "--path_t", str(path), "--model_s", "imagenet_resnet18",
        "--image_size", str(SIZE), "--device", "cpu", "--num_workers", "0", "--save_folder", str(tmp_path / "s")])
    assert str(path) in err
    for text in expected:
        assert text in err, (text, err)


# ------------------------------------------------------------------------- registry rows at ImageNet scale

@functools.lru_cache(maxsize=None)
def meta_model(arch: str) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no time spent initialising weights
        return model_dict[arch]()


def feature_shapes(arch: str, size: int) -> list[tuple[int, ...]]:
    with torch.no_grad():
        feats, _ = meta_model(arch)(torch.empty(2, 3, size, size, device="meta"), is_feat=True)
    return [tuple(f.shape) for f in feats]


def resnet_shapes(size: int, expansion: int) -> list[tuple[int, ...]]:
    """By hand: stem stride 2, max pool stride 2, stages at strides 4, 8, 16, 32."""
    e, s = expansion, size
    return [(2, 64, s // 2, s // 2), (2, 64 * e, s // 4, s // 4), (2, 128 * e, s // 8, s // 8),
            (2, 256 * e, s // 16, s // 16), (2, 512 * e, s // 32, s // 32), (2, 512 * e)]


@pytest.mark.parametrize("size", [224, SIZE])
def test_feature_shapes(size):
    assert feature_shapes("imagenet_resnet18", size) == resnet_shapes(size, 1)
    assert feature_shapes("imagenet_resnet34", size) == resnet_shapes(size, 1)
    assert feature_shapes("imagenet_resnet50", size) == resnet_shapes(size, 4)


# ResNet-50's 4x wider maps make FT's paraphraser take ~5 s to initialise on a CPU: -m slow.
TEACHERS = ["imagenet_resnet34", pytest.param("imagenet_resnet50", marks=pytest.mark.slow)]


def method_options(name: str) -> object:
    parser = train_student.build_parser()
    argv = ["--path_t", "x.pth", "--model_t", "imagenet_resnet34", "--model_s", "imagenet_resnet18",
            "--distill", name, "--dataset", "imagenet", "--nce_k", str(K)]
    return train_student.resolve_options(parser, parser.parse_args(argv), require_teacher_file=False)


# FSP and KD-SVD need identical channel lists: ResNet-50's stages are 4x wider than ResNet-18's.
SAME_CHANNELS_ONLY = {"fsp": r"\[64, 64, 128, 256, 512\].*\[64, 256, 512, 1024, 2048\]",
                      "kdsvd": r"\[64, 128, 256, 512\].*\[256, 512, 1024, 2048\]"}


def expect_build(name: str, teacher: str) -> bool:
    return not (name in SAME_CHANNELS_ONLY and teacher == "imagenet_resnet50")


@pytest.mark.parametrize("teacher", TEACHERS)
def test_every_registry_row_builds_at_224(teacher):
    shapes_s = [torch.Size(s) for s in resnet_shapes(224, 1)]
    shapes_t = [torch.Size(s) for s in resnet_shapes(224, 4 if teacher.endswith("50") else 1)]
    network = model_dict[teacher](num_classes=10)  # OFD reads the teacher's batch norms
    for name, method in METHODS.items():
        ctx = BuildContext(shapes_s, shapes_t, method_options(name), N_TRAIN, network)
        if expect_build(name, teacher):
            method.build(ctx)
        else:
            with pytest.raises(ValueError, match=SAME_CHANNELS_ONLY[name]):
                method.build(ctx)


@pytest.mark.parametrize("teacher", TEACHERS)
def test_every_registry_row_runs_on_small_images(teacher):
    """Each term on real features of both networks at 64x64 (2x2 last maps): a finite loss with a
    non-zero gradient on the student's features."""
    torch.manual_seed(0)
    student, teach = model_dict["imagenet_resnet18"](num_classes=3), model_dict[teacher](num_classes=3).eval()
    images = torch.randn(4, 3, 64, 64)
    index = torch.arange(4)
    sample_idx = torch.stack([torch.roll(torch.arange(N_TRAIN), -i)[: K + 1] for i in range(4)])
    shapes, feats_s, feats_t = {}, {}, {}
    for preact in (False, True):
        shapes[preact] = probe_shapes(student, images[:2], preact), probe_shapes(teach, images[:2], preact)
        feats_s[preact] = student(images, is_feat=True, preact=preact)[0]
        with torch.no_grad():
            feats_t[preact] = teach(images, is_feat=True, preact=preact)[0]
    for name, method in METHODS.items():
        if not expect_build(name, teacher):
            continue
        opt = method_options(name)
        preact_t = method.teacher_reads_preact
        term = method.build(BuildContext(shapes[method.preact][0], shapes[preact_t][1], opt, N_TRAIN, teach))
        if term is None:
            continue
        extras = {"plain": [], "instance": [index], "sample": [index, sample_idx]}[method.data_view(opt)]
        if method.logits:
            # a logit term reads the logits (computed from the pooled features here) and the targets
            feat_s, feat_t = feats_s[method.preact], feats_t[preact_t]
            out = term(student.fc(feat_s[-1]), teach.fc(feat_t[-1]), torch.tensor([0, 1, 2, 0]))
        else:
            out = term(feats_s[method.preact], feats_t[preact_t], *extras)
        loss = sum(out.values()) if isinstance(out, dict) else out
        assert torch.isfinite(loss), name
        grads = torch.autograd.grad(loss, feats_s[method.preact], allow_unused=True, retain_graph=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_factor_transfer_refuses_one_by_one_maps(tree, teachers, tmp_path, capsys):
    """At 32x32 the ResNets' last maps are 1x1, where FT's normalised map is the constant 1."""
    err = usage_error(capsys, train_student.main, [
        "--dataset", "imagenet", "--data_folder", str(tree), "--path_t", str(teachers["torchvision"]),
        "--model_s", "imagenet_resnet18", "--distill", "factor", "--image_size", "32", "--device", "cpu",
        "--num_workers", "0", "--save_folder", str(tmp_path)])
    assert "1x1" in err and "--image_size 64" in err


# --------------------------------------------------------------------------- scripts/run_imagenet_distill.sh

# (--distill, -r, -a, -b) of the table's rows KD, AT, SP, CC, CRD, CRD+KD: the CRD paper's weights;
# then DKD and DIST at their authors' weights
PAPER_ROWS = [("kd", 0.1, 0.9, 0.0), ("attention", 1.0, 0.0, 1000.0), ("similarity", 1.0, 0.0, 3000.0),
              ("correlation", 1.0, 0.0, 0.02), ("crd", 1.0, 0.0, 0.8), ("crd", 1.0, 1.0, 0.8),
              ("dkd", 1.0, 0.0, 1.0), ("dist", 1.0, 0.0, 2.0)]
ROWS_PER_TRIAL = 1 + len(PAPER_ROWS)  # the vanilla student, then the distillations


@pytest.mark.parametrize("memory", [None, "queue"])
def test_script_prints_the_table_row_by_row(memory):
    env = {**os.environ, "PRINT_ONLY": "1", "DATA_FOLDER": "/data/image net", "TEACHER": "/w/resnet34-b627a593.pth",
           "LAUNCHER": "torchrun --nproc_per_node 8", "TRIALS": "2", "DISTILL_ARGS": "--nce_k 4096"}
    if memory:
        env["CRD_MEMORY"] = memory
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_imagenet_distill.sh"), "--seed", "0"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    commands = [shlex.split(line) for line in proc.stdout.splitlines()]
    assert len(commands) == 2 * ROWS_PER_TRIAL
    for trial in (1, 2):
        block = commands[ROWS_PER_TRIAL * (trial - 1): ROWS_PER_TRIAL * trial]
        assert all(cmd[:3] == ["torchrun", "--nproc_per_node", "8"] for cmd in block)
        assert block[0][3] == "train_teacher.py" and all(cmd[3] == "train_student.py" for cmd in block[1:])
        parser = train_teacher.build_parser()
        vanilla = resolve_training_defaults(parse_training_args(parser, block[0][4:]), "imagenet_resnet18")
        assert (vanilla.model, vanilla.dataset, vanilla.data_folder, vanilla.trial, vanilla.seed) == (
            "imagenet_resnet18", "imagenet", "/data/image net", str(trial - 1), 0)
        assert (vanilla.epochs, vanilla.batch_size, vanilla.learning_rate) == (100, 256, 0.1)
        rows = []
        for cmd in block[1:]:
            parser = train_student.build_parser()
            o = train_student.resolve_options(parser, parse_training_args(parser, cmd[4:]), require_teacher_file=False)
            rows.append((o.distill, o.gamma, o.alpha, o.beta))
            assert (o.path_t, o.model_t, o.model_s) == ("/w/resnet34-b627a593.pth", "imagenet_resnet34",
                                                        "imagenet_resnet18")
            assert (o.dataset, o.data_folder, o.trial, o.seed, o.nce_k) == (
                "imagenet", "/data/image net", str(trial), 0, 4096)
            assert (o.epochs, o.batch_size, o.learning_rate, o.lr_decay_epochs) == (100, 256, 0.1, [30, 60, 90])
            if o.distill == "crd":
                assert o.crd_memory == (memory or "bank")
            # the authors' ImageNet settings of the logit methods
            assert o.kd_T == (1.0 if o.distill in ("dkd", "dist") else 4.0)
            if o.distill == "dkd":
                assert (o.dkd_beta, o.warmup_epochs) == (0.5, 1)
        assert rows == PAPER_ROWS


# ------------------------------------------------------------------------------------- two processes

# Each rank runs train_student.main with run_training wrapped to keep the task's state before and
# after training (OUT and ARGV are prepended).
DDP_SCRIPT = """
import os
import torch
import train_student

rank = int(os.environ["RANK"])
original = train_student.run_training

def run_and_keep_state(task, *args, **kwargs):
    before = {key: value.clone() for key, value in task.state_dict().items()}
    result = original(task, *args, **kwargs)
    torch.save({"before": before, "after": task.state_dict()}, f"{OUT}/rank{rank}.pt")
    return result

train_student.run_training = run_and_keep_state
train_student.main(ARGV)
print("ok", rank)
"""


@pytest.mark.slow
@pytest.mark.parametrize("memory", ["bank", "queue"])
def test_crd_memories_stay_identical_on_two_processes(memory, tree, teachers, tmp_path):
    """torchrun-style, 2 gloo ranks on the ImageFolder tree, global batch 8 (4 + 4), 2 epochs: every
    rank ends with the same student, heads and memory, the memory has been written to, and rank 0's
    checkpoint holds exactly that state."""
    argv = ["--dataset", "imagenet", "--data_folder", str(tree), "--path_t", str(teachers["torchvision"]),
            "--model_s", "imagenet_resnet18", "--distill", "crd", "--crd_memory", memory, "--image_size", str(SIZE),
            "--batch_size", "8", "--epochs", "2", "--nce_k", str(K), "--device", "cpu", "--num_workers", "0",
            "--save_folder", str(tmp_path / "save"), "--seed", "3", "--print_freq", "1000"]
    script = f"OUT = {str(tmp_path)!r}\nARGV = {argv!r}\n" + DDP_SCRIPT
    results = run_script_on_ranks(script, tmp_path, timeout=170)
    assert '"best_acc"' in results[0]["out"] and '"best_acc"' not in results[1]["out"]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    keys = MEMORIES[("crd", memory)]
    after0, after1 = ranks[0]["after"], ranks[1]["after"]
    assert set(after0) == set(after1) and set(keys) <= set(after0)
    for key in after0:
        assert torch.equal(after0[key], after1[key]), f"{key} differs between the ranks"
    for key in keys:
        assert not torch.equal(after0[key], ranks[0]["before"][key]), f"{key} was never written"
    if memory == "bank":
        # 12 images, 2 epochs: every row of both banks was updated, so none keeps its initial value
        changed = (after0[next(iter(keys))] != ranks[0]["before"][next(iter(keys))]).any(dim=1)
        assert changed.all()
    run_dir = next((tmp_path / "save").iterdir())
    saved = load_checkpoint(run_dir / "imagenet_resnet18_last.pth")["task"]
    for key in after0:
        assert torch.equal(saved[key], after0[key]), key
