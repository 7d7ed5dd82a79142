"""transfer_student.py and dataset/transfer.py: linear probes of frozen students on STL-10,
Tiny-ImageNet, ImageFolder, CIFAR-10 and CIFAR-100 layouts generated on disk.

Generated images are solid class colours plus noise, so a probe on any backbone's pooled features
can separate them; every run is tiny (CPU, no workers, batch 16, a few dozen images).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

import transfer_student
from checks import assert_nested_equal
from kdzoo.dataset import DataError
from kdzoo.helper.checkpoint import CheckpointError, resolve_model_name
from kdzoo.dataset.transfer import (
    channel_stats,
    folder_samples,
    load_transfer_data,
    read_cifar10,
    read_stl10,
    read_val_annotations,
    spread_indices,
    transfer_splits,
)
from fakedata import write_fake_cifar
from kdzoo.helper.logger import read_metrics
from kdzoo.models import model_dict

# The CIFAR-100 normalisation the students are trained with, written out independently.
REF_MEAN = (0.5071, 0.4867, 0.4408)
REF_STD = (0.2675, 0.2565, 0.2761)

PALETTE = np.array([(220, 30, 30), (30, 200, 30), (30, 30, 220), (220, 220, 30), (30, 210, 210),
                    (210, 30, 210), (120, 120, 120), (250, 140, 20), (20, 90, 160), (160, 200, 120)], np.int16)
COMMON = ["--device", "cpu", "--num_workers", "0", "--batch_size", "16", "--print_freq", "1000", "--seed", "3"]


# ------------------------------------------------------------------------------------------ data writers

def colour_images(labels, side: int, seed: int, noise: int = 60) -> np.ndarray:
    """uint8 (N, 3, side, side): the class colour of each label plus uniform noise."""
    rng = np.random.default_rng(seed)
    base = PALETTE[np.asarray(labels) % len(PALETTE)][:, :, None, None]
    jitter = rng.integers(-noise // 2, noise // 2 + 1, (len(labels), 3, side, side))
    return np.clip(base + jitter, 0, 255).astype(np.uint8)


def authors_resize(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 of a (3, H, W) image through torchvision's ``Resize((size, size))`` on a PIL
    image, the RRD authors' transform."""
    pil = Image.fromarray(image.transpose(1, 2, 0))
    return np.asarray(torchvision.transforms.Resize((size, size))(pil))


def cycle(n: int, classes: int) -> list[int]:
    return [i % classes for i in range(n)]


def write_stl10(root: Path, train_labels, test_labels, seed: int = 0) -> dict[str, np.ndarray]:
    """STL-10's binary layout: images column-major in <split>_X.bin, labels 1..10 in <split>_y.bin."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for split, labels in (("train", train_labels), ("test", test_labels)):
        x = colour_images(labels, 96, seed + len(split))
        x[:, :, :10, :40] = 255  # a wide bright bar at the top-left: wrong orientation would show
        x.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
        (np.asarray(labels, np.uint8) + 1).tofile(folder / f"{split}_y.bin")
        images[split] = x
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    return images


def save_image(array: np.ndarray, path: Path, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.transpose(1, 2, 0))
    (image.convert("L") if mode == "L" else image).save(path, quality=95)


def write_tiny(root: Path, n_classes: int, per_class: int, val_labels: list[int], official: bool = True,
               seed: int = 0) -> list[str]:
    """Tiny-ImageNet 64x64 JPEGs: train/<wnid>/images/*.JPEG (+ boxes file), and val/ either official
    (images/ + val_annotations.txt) or one folder per class. Returns the wnids in class order."""
    wnids = [f"n{1000 + 7 * i:08d}" for i in range(n_classes)]
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    train = colour_images([c for c in range(n_classes) for _ in range(per_class)], 64, seed)
    for c, wnid in enumerate(wnids):
        for i in range(per_class):
            # Tiny-ImageNet holds some grayscale JPEGs: they must come out as 3 channels.
            mode = "L" if (c, i) == (0, 0) else "RGB"
            save_image(train[c * per_class + i], root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", mode)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    val = colour_images(val_labels, 64, seed + 1)
    lines = []
    for i, label in enumerate(val_labels):
        if official:
            save_image(val[i], root / "val" / "images" / f"val_{i}.JPEG")
            lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63")
        else:
            save_image(val[i], root / "val" / wnids[label] / f"val_{i}.JPEG")
    if official:
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids


def write_cifar10(root: Path, train_labels, test_labels, n_batches: int = 5, seed: int = 0,
                  images: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """CIFAR-10's python layout: data_batch_1..n, test_batch ('labels'), batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    if images is None:
        images = (colour_images(train_labels, 32, seed).reshape(len(train_labels), -1),
                  colour_images(test_labels, 32, seed + 1).reshape(len(test_labels), -1))
    train_x, test_x = images
    parts = np.array_split(np.arange(len(train_labels)), n_batches)
    for b, part in enumerate(parts, 1):
        entry = {"batch_label": f"batch {b}", "labels": [int(train_labels[i]) for i in part], "data": train_x[part]}
        with open(folder / f"data_batch_{b}", "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "test", "labels": [int(y) for y in test_labels], "data": test_x}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    return root


# ------------------------------------------------------------------------------------ source checkpoints

def calibrated(arch: str, seed: int) -> torch.nn.Module:
    """A randomly initialised network whose batch-norm statistics are those of random images, so
    its features have a trained network's scale."""
    torch.manual_seed(seed)
    model = model_dict[arch](num_classes=100)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))
    return model.eval()


def save_reference(path: Path, arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint in the reference format, {'model': state_dict} only."""
    weights = calibrated(arch, seed).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": weights}, path)
    return weights


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Source checkpoints: three in the reference format (architecture from the folder name, from
    the reference's student folder name, or nowhere), one in this project's format."""
    root = tmp_path_factory.mktemp("sources")
    paths = {
        "vgg8": root / "vgg8_vanilla" / "ckpt_epoch_240.pth",
        "ShuffleV1": root / "S:ShuffleV1_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0.0_1" / "ShuffleV1_last.pth",
        "MobileNetV2": root / "misc" / "student.pth",
    }
    for i, (arch, path) in enumerate(paths.items()):
        save_reference(path, arch, seed=i)
    # this project's format (train_teacher.py): records 'model_name' and 'opt'
    weights = calibrated("resnet8", 7).state_dict()
    project = root / "anywhere" / "resnet8_best.pth"
    project.parent.mkdir(parents=True)
    torch.save({"model": weights, "model_name": "resnet8", "opt": {"model": "resnet8", "dataset": "cifar100"},
                "epoch": 240}, project)
    paths["resnet8"] = project
    return paths


def run_main(argv: list[str]) -> tuple[dict, str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = transfer_student.main([*COMMON, *argv])
    return result, buf.getvalue()


def usage_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        transfer_student.main([*COMMON, *argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def classifier_keys(arch: str) -> set[str]:
    model = model_dict[arch]()
    return {k for k in model.state_dict() if k.startswith(model.classifier_name + ".")}


def assert_backbone(source: dict, probe: dict, arch: str, bn_adapt: bool) -> None:
    """Every backbone tensor bit-identical to the source, except batch-norm statistics with bn_adapt
    (which must then have moved)."""
    head = classifier_keys(arch)
    assert set(source) == set(probe)
    stats = [k for k in source if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats, "the architecture has batch norm"
    for key in source:
        if key in head:
            continue
        if bn_adapt and key in stats:
            continue
        assert torch.equal(source[key], probe[key]), f"{key} changed"
    moved = [k for k in stats if k.endswith("running_mean") and not torch.equal(source[k], probe[k])]
    if bn_adapt:
        assert len(moved) == len([k for k in stats if k.endswith("running_mean")]), "statistics did not adapt"
    else:
        assert not moved


# ------------------------------------------------------------------------------------------ data: units

def test_stl10_reader_matches_torchvision(tmp_path, monkeypatch):
    """Our reader and torchvision's parse the generated binary files identically. torchvision's md5
    check is patched here only (it needs the official files, unlabelled split included); everything
    after it is torchvision's own parsing."""
    train_labels, test_labels = cycle(12, 10), [3, 1, 4, 1, 5, 9, 2]
    written = write_stl10(tmp_path, train_labels, test_labels)
    monkeypatch.setattr(torchvision.datasets.STL10, "_check_integrity", lambda self: True)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        images, got = read_stl10(tmp_path, split)
        reference = torchvision.datasets.STL10(str(tmp_path), split=split)
        assert torch.equal(images, torch.from_numpy(reference.data))
        assert got.tolist() == reference.labels.tolist() == labels
        assert torch.equal(images, torch.from_numpy(written[split]))  # and both match what was written


def test_stl10_resized_like_pil(tmp_path):
    written = write_stl10(tmp_path, cycle(6, 10), cycle(4, 10))
    (train_x, train_y), (test_x, test_y), n_cls = load_transfer_data("stl10", tmp_path, image_size=32)
    assert n_cls == 10 and train_x.shape == (6, 3, 32, 32) and test_x.dtype == torch.uint8
    for got, raw in ((train_x, written["train"]), (test_x, written["test"])):
        for i in range(len(raw)):
            expected = authors_resize(raw[i], 32)
            assert np.array_equal(got[i].permute(1, 2, 0).numpy(), expected)


def test_stl10_missing_or_bad_files(tmp_path):
    with pytest.raises(DataError, match="--download") as err:
        read_stl10(tmp_path, "train")
    assert "stl10_binary" in str(err.value)
    write_stl10(tmp_path, cycle(4, 10), cycle(4, 10))
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([1, 2, 11, 3]))
    with pytest.raises(DataError, match="1..10"):
        read_stl10(tmp_path, "test")
    (tmp_path / "stl10_binary" / "train_X.bin").write_bytes(b"\0" * 1000)
    with pytest.raises(DataError, match="whole number"):
        read_stl10(tmp_path, "train")


@pytest.mark.parametrize("official", [True, False], ids=["val_annotations", "imagefolder-val"])
def test_tinyimagenet_val_labels(tmp_path, official):
    val_labels = [2, 0, 1, 1, 2, 0, 2]
    root = tmp_path / "tiny-imagenet-200"
    wnids = write_tiny(root, n_classes=3, per_class=2, val_labels=val_labels, official=official)
    classes, train, test = folder_samples(tmp_path)  # finds tiny-imagenet-200/ below data_folder
    assert classes == sorted(wnids)
    assert sorted(label for _, label in train) == [0, 0, 1, 1, 2, 2]
    for path, label in train:
        assert Path(path).parent.parent.name == wnids[label]  # train/<wnid>/images/<file>
    by_name = {Path(path).name: label for path, label in test}
    assert by_name == {f"val_{i}.JPEG": label for i, label in enumerate(val_labels)}
    (train_x, _), (test_x, test_y), n_cls = load_transfer_data("tinyimagenet", tmp_path, image_size=32)
    assert n_cls == 3 and train_x.shape == (6, 3, 32, 32) and test_x.shape == (7, 3, 32, 32)
    # each decoded image is near its class colour (JPEG and resizing only blur the noise)
    means = test_x.float().mean(dim=(2, 3))
    assert torch.allclose(means, torch.tensor(PALETTE[test_y.numpy()], dtype=torch.float), atol=12)


def test_val_annotations_errors(tmp_path):
    write_tiny(tmp_path, n_classes=2, per_class=1, val_labels=[0, 1])
    notes = tmp_path / "val" / "val_annotations.txt"
    mapping = {"n00001000": 0, "n00001007": 1}
    assert [label for _, label in read_val_annotations(tmp_path / "val", mapping)] == [0, 1]
    notes.write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="n99999999"):
        read_val_annotations(tmp_path / "val", mapping)
    notes.write_text("val_7.JPEG\tn00001000\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="val_7.JPEG"):
        read_val_annotations(tmp_path / "val", mapping)


def test_imagefolder_val_classes_must_exist_in_train(tmp_path):
    for split, names in (("train", ["cat", "dog"]), ("test", ["cat", "emu"])):
        for name in names:
            save_image(colour_images([0], 40, 0)[0], tmp_path / split / name / "a.png")
    with pytest.raises(DataError, match="emu"):
        folder_samples(tmp_path)
    (tmp_path / "test" / "emu" / "a.png").unlink()
    (tmp_path / "test" / "emu").rmdir()
    # val/ (here test/) may hold a subset of the classes; labels follow train/'s class order
    classes, _, test = folder_samples(tmp_path)
    assert classes == ["cat", "dog"] and [label for _, label in test] == [0]
    with pytest.raises(DataError, match="train/ and val/"):
        folder_samples(tmp_path / "test")


def test_cifar10_layout(tmp_path):
    train_labels, test_labels = cycle(23, 10), cycle(7, 10)[::-1]
    write_cifar10(tmp_path, train_labels, test_labels, n_batches=5)
    images, labels, n_cls = read_cifar10(tmp_path, train=True)
    assert n_cls == 10 and images.shape == (23, 3, 32, 32) and labels.tolist() == train_labels
    expected = colour_images(train_labels, 32, 0)
    assert torch.equal(images, torch.from_numpy(expected))  # batches concatenated in order
    images, labels, _ = read_cifar10(tmp_path / "cifar-10-batches-py", train=False)  # the folder itself works too
    assert labels.tolist() == test_labels
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        read_cifar10(tmp_path / "elsewhere", train=True)
    write_cifar10(tmp_path, [0, 10], [0], n_batches=1)
    with pytest.raises(DataError, match="labels must lie in"):
        read_cifar10(tmp_path, train=True)


def test_cifar_arrays_resized_and_normalised(tmp_path):
    write_cifar10(tmp_path, cycle(6, 10), cycle(3, 10))
    raw = colour_images(cycle(6, 10), 32, 0)
    train, test = transfer_splits("cifar10", tmp_path, image_size=20)
    for i in range(6):
        expected = authors_resize(raw[i], 20)
        assert np.array_equal(train.images[i].permute(1, 2, 0).numpy(), expected)
    assert train.num_classes == test.num_classes == 10 and test.images.shape == (3, 3, 20, 20)
    # no normalisation given: the training images' own statistics, for both splits
    x = train.images.numpy().astype(np.float64) / 255
    assert np.allclose(train.mean, x.mean(axis=(0, 2, 3))) and np.allclose(test.std, x.std(axis=(0, 2, 3)))
    train, _ = transfer_splits("cifar10", tmp_path, normalization=(REF_MEAN, REF_STD))
    assert (train.mean, train.std) == (REF_MEAN, REF_STD) and train.images.shape[-1] == 32


def test_subsets_spread_over_classes(tmp_path):
    assert spread_indices(10, None) is None and spread_indices(10, 20) is None
    assert spread_indices(10, 4).tolist() == [0, 2, 5, 7]
    write_tiny(tmp_path, n_classes=4, per_class=3, val_labels=[0, 1, 2, 3, 3])
    (_, train_y), (_, test_y), _ = load_transfer_data("imagefolder", tmp_path, train_limit=4, test_limit=2)
    assert sorted(train_y.tolist()) == [0, 1, 2, 3]
    assert len(test_y) == 2


def test_channel_stats_match_numpy():
    images = torch.randint(0, 256, (37, 3, 5, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(images, chunk=8)
    x = images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, x.mean(axis=(0, 2, 3))) and np.allclose(std, x.std(axis=(0, 2, 3)))


# ------------------------------------------------------------------------------------- the probe task

@pytest.mark.parametrize("arch", ["resnet8", "vgg8", "MobileNetV2"])  # fc, classifier, classifier.0
def test_probe_trains_only_the_new_classifier(arch):
    network = calibrated(arch, 0)
    original = copy.deepcopy(network)
    task = transfer_student.LinearProbeTask(network, 7)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        feats, _ = original(x, is_feat=True)
    trainable = [p for p in task.parameters() if p.requires_grad]
    assert [tuple(p.shape) for p in trainable] == [(7, feats[-1].shape[1]), (7,)]
    assert any(m is task.head for m in network.get_classifier().modules())
    assert not task.network.training  # frozen batch norm
    out = task(x, torch.tensor([0, 1, 2, 3]))
    expected = feats[-1] @ task.head.weight.T + task.head.bias
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert torch.allclose(out.loss, F.cross_entropy(expected, torch.tensor([0, 1, 2, 3])), atol=1e-5)
    out.loss.backward()
    assert all(p.grad is None for name, p in task.named_parameters() if not p.requires_grad)
    task.train()
    assert not task.network.training  # still, after train()
    # the checkpointed model is the architecture with 7 classes
    model_dict[arch](num_classes=7).load_state_dict(task.eval_model.state_dict(), strict=True)


def test_bn_adapt_uses_and_updates_batch_statistics():
    network = calibrated("resnet8", 0)
    original = copy.deepcopy(network)
    task = transfer_student.LinearProbeTask(network, 3, bn_adapt=True)
    assert task.network.training
    x = torch.randn(8, 3, 32, 32) * 3 + 1
    reference = calibrated("resnet8", 0)
    out = task(x, torch.zeros(8, dtype=torch.long))
    original.train()
    with torch.no_grad():
        feats, _ = original(x, is_feat=True)  # train mode: batch statistics, stats updated alike
    assert torch.allclose(out.logits, task.head(feats[-1]), atol=1e-5)
    assert torch.equal(network.bn1.running_mean, original.bn1.running_mean)
    assert not torch.equal(network.bn1.running_mean, reference.bn1.running_mean)


def test_architecture_from_flag_checkpoint_or_folder(tmp_path):
    def resolve(path, model_s, state):  # the architecture transfer_student.py probes
        return resolve_model_name(path, state, model_dict, model_s, "--model_s")

    anywhere = tmp_path / "x" / "a.pth"
    assert resolve(anywhere, "vgg8", {"model_name": "resnet8"}) == "vgg8"  # the flag wins
    assert resolve(anywhere, None, {"model_name": "resnet8", "opt": {"model_s": "vgg8"}}) == "resnet8"
    assert resolve(anywhere, None, {"opt": {"model_s": "wrn_16_2", "model_t": "wrn_40_2"}}) == "wrn_16_2"
    assert resolve(anywhere, None, {"opt": {"model": "resnet32x4"}}) == "resnet32x4"  # a teacher
    # the reference's last student checkpoint pickles an argparse.Namespace
    path = tmp_path / "ref" / "student.pth"
    path.parent.mkdir()
    torch.save({"opt": argparse.Namespace(model_s="ShuffleV2", model_t="resnet32x4"), "model": {}}, path)
    assert resolve(path, None, transfer_student.load_checkpoint(path)) == "ShuffleV2"
    assert resolve(tmp_path / "S:wrn_16_2_T:wrn_40_2_cifar100_crd_r:1_a:0_b:0.8_1" / "m.pth", None, {}) == "wrn_16_2"
    assert resolve(tmp_path / "wrn_40_2_vanilla" / "ckpt_epoch_240.pth", None, {}) == "wrn_40_2"
    with pytest.raises(CheckpointError, match="--model_s"):
        resolve(anywhere, None, {"model": {}})


def test_source_normalization_follows_the_training_dataset():
    norm = transfer_student.source_normalization
    assert norm({"opt": {"dataset": "cifar100"}}) == norm({}) == (REF_MEAN, REF_STD)
    assert norm({"opt": {"dataset": "imagenet"}}) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# --------------------------------------------------------------------------------------- end to end

def test_stl10_end_to_end_frozen(sources, tmp_path):
    """A project checkpoint (architecture recorded in it), STL-10 layout, batch norm frozen: the
    backbone is bit-identical after training and the probe separates the colours."""
    data = tmp_path / "data"
    write_stl10(data, cycle(80, 4), cycle(40, 4))
    save = tmp_path / "save"
    result, out = run_main(["--path_s", str(sources["resnet8"]), "--dataset", "stl10", "--data_folder", str(data),
                            "--save_folder", str(save), "--epochs", "3"])
    run_dir = save / "anywhere" / "resnet8_best_stl10"
    assert result["run_dir"] == str(run_dir)
    assert json.loads(out.strip().splitlines()[-1]) == result
    assert set(result) >= {"best_acc", "last_acc"} and result["best_acc"] >= result["last_acc"]
    assert result["last_acc"] >= 90, f"probe accuracy {result['last_acc']} on 4 colour classes (chance 25)"
    last = load(run_dir / "resnet8_last.pth")
    assert last["model_name"] == "resnet8" and last["opt"]["model_s"] == "resnet8"
    assert_backbone(load(sources["resnet8"])["model"], last["model"], "resnet8", bn_adapt=False)
    probe = model_dict["resnet8"](num_classes=10)  # STL-10 is 10-way, whatever the labels used
    probe.load_state_dict(last["model"], strict=True)  # the reference format, loadable as is
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2, 3]
    assert "probe: resnet8" in out and "batch norm frozen" in out


def test_tinyimagenet_end_to_end_bn_adapt(sources, tmp_path):
    """A reference checkpoint whose folder names the architecture (vgg8: classifier 'classifier'),
    Tiny-ImageNet's official layout, --bn_adapt: weights frozen, batch-norm statistics adapted."""
    data = tmp_path / "tiny"
    write_tiny(data, n_classes=3, per_class=8, val_labels=cycle(9, 3))
    result, _ = run_main(["--path_s", str(sources["vgg8"]), "--dataset", "tinyimagenet", "--data_folder", str(data),
                          "--save_folder", str(tmp_path / "save"), "--epochs", "1", "--bn_adapt"])
    run_dir = Path(result["run_dir"])
    assert run_dir == tmp_path / "save" / "vgg8_vanilla" / "ckpt_epoch_240_tinyimagenet_bn_adapt"
    last = load(run_dir / "vgg8_last.pth")
    assert last["model"]["classifier.weight"].shape == (3, 512)
    assert_backbone(load(sources["vgg8"])["model"], last["model"], "vgg8", bn_adapt=True)
    # resume must restore the adapted statistics: they are in the task state too
    assert torch.equal(last["task"]["network.block0.1.running_mean"], last["model"]["block0.1.running_mean"])


def test_cifar10_end_to_end_reference_student_folder(sources, tmp_path):
    """The reference's student folder name gives the architecture (ShuffleV1: classifier 'linear')."""
    data = write_cifar10(tmp_path / "c10", cycle(32, 10), cycle(16, 10))
    result, _ = run_main(["--path_s", str(sources["ShuffleV1"]), "--dataset", "cifar10", "--data_folder", str(data),
                          "--save_folder", str(tmp_path / "save"), "--epochs", "1", "--trial", "2"])
    run_dir = Path(result["run_dir"])
    assert run_dir.name == "ShuffleV1_last_cifar10_trial_2"
    last = load(run_dir / "ShuffleV1_last.pth")
    assert last["model"]["linear.weight"].shape[0] == 10
    assert_backbone(load(sources["ShuffleV1"])["model"], last["model"], "ShuffleV1", bn_adapt=False)


def test_imagefolder_end_to_end_model_s(sources, tmp_path, capsys):
    """An ImageFolder root with train/ and test/, MobileNetV2 named with --model_s (its folder names
    nothing), normalised with the target's own statistics."""
    data = tmp_path / "folder"
    for split, n in (("train", 4), ("test", 2)):
        for c, name in enumerate(["ant", "bee", "cow"]):
            for i, image in enumerate(colour_images([c] * n, 48, c)):
                save_image(image, data / split / name / f"{i}.png")
    argv = ["--path_s", str(sources["MobileNetV2"]), "--dataset", "imagefolder", "--data_folder", str(data),
            "--save_folder", str(tmp_path / "save"), "--epochs", "1", "--norm", "target"]
    err = usage_error(capsys, argv)
    assert "--model_s" in err and "misc" in err
    result, _ = run_main([*argv, "--model_s", "MobileNetV2"])
    last = load(Path(result["run_dir"]) / "MobileNetV2_last.pth")
    assert last["opt"]["learning_rate"] == 0.01  # the reference's rate for MobileNetV2
    assert last["model"]["classifier.0.weight"].shape[0] == 3  # the reference's keys, Sequential kept
    assert_backbone(load(sources["MobileNetV2"])["model"], last["model"], "MobileNetV2", bn_adapt=False)


def test_resume_with_bn_adapt_equals_an_uninterrupted_run(sources, tmp_path):
    data = write_cifar10(tmp_path / "c10", cycle(32, 10), cycle(16, 10))

    def argv(trial: str, epochs: int, *extra: str) -> list[str]:
        return ["--path_s", str(sources["resnet8"]), "--dataset", "cifar10", "--data_folder", str(data),
                "--save_folder", str(tmp_path / "save"), "--epochs", str(epochs), "--bn_adapt", "--trial", trial,
                "--lr_decay_epochs", "1", *extra]

    straight, _ = run_main(argv("1", 2))
    first, _ = run_main(argv("2", 1))
    resumed, _ = run_main(argv("2", 2, "--resume", str(Path(first["run_dir"]) / "resnet8_last.pth")))
    a = load(Path(straight["run_dir"]) / "resnet8_last.pth")
    b = load(Path(resumed["run_dir"]) / "resnet8_last.pth")
    assert_nested_equal(a["model"], b["model"])
    assert_nested_equal(a["task"], b["task"])
    assert straight["last_acc"] == resumed["last_acc"]


def test_cifar100_target_and_bad_inputs(sources, tmp_path, capsys):
    data = write_fake_cifar(tmp_path / "c100", n_train=16, n_test=8)
    result, _ = run_main(["--path_s", str(sources["resnet8"]), "--dataset", "cifar100", "--data_folder", str(data),
                          "--save_folder", str(tmp_path / "save"), "--epochs", "1"])
    assert load(Path(result["run_dir"]) / "resnet8_last.pth")["model"]["fc.weight"].shape == (100, 64)
    common = ["--dataset", "cifar100", "--data_folder", str(data), "--save_folder", str(tmp_path / "save2")]
    err = usage_error(capsys, ["--path_s", str(sources["vgg8"]), "--model_s", "resnet8", *common])
    assert "does not hold weights" in err
    err = usage_error(capsys, ["--path_s", str(tmp_path / "none.pth"), *common])
    assert "does not exist" in err
    err = usage_error(capsys, ["--path_s", str(sources["resnet8"]), "--dataset", "stl10", "--data_folder",
                               str(tmp_path / "empty"), "--save_folder", str(tmp_path / "save3")])
    assert "stl10_binary" in err and "--download" in err


# ------------------------------------------------------------------------------------- real data (slow)

@pytest.mark.slow
def test_real_cifar100_student_probed_on_a_cifar10_style_folder(shared_data, tmp_path):
    """A resnet8 trained for one epoch on 10k real CIFAR-100 images, probed on 10 CIFAR-100 classes
    written in CIFAR-10's python layout (500 train / 100 test images per class): well above the 10%
    of chance."""
    import train_teacher
    from kdzoo.dataset import read_cifar100

    save = tmp_path / "models"
    with contextlib.redirect_stdout(io.StringIO()):
        train_teacher.main(["--model", "resnet8", "--data_folder", str(shared_data), "--save_folder", str(save),
                            "--epochs", "1", "--train_subset", "10000", "--test_subset", "1000", "--device", "cpu",
                            "--num_workers", "0", "--seed", "0"])
    picked = [0, 8, 13, 22, 41, 48, 58, 69, 85, 90]  # ten fine classes of different super-classes
    splits = []
    for train in (True, False):
        images, labels = read_cifar100(shared_data, train)
        keep = torch.isin(labels, torch.tensor(picked))
        mapped = torch.tensor([picked.index(y) for y in labels[keep].tolist()])
        splits.append((images[keep].reshape(int(keep.sum()), -1).numpy(), mapped.tolist()))
    (train_x, train_y), (test_x, test_y) = splits
    assert len(train_y) == 5000 and len(test_y) == 1000
    data = write_cifar10(tmp_path / "c10", train_y, test_y, images=(train_x, test_x))
    result, _ = run_main(["--path_s", str(save / "resnet8_vanilla" / "resnet8_last.pth"), "--dataset", "cifar10",
                          "--data_folder", str(data), "--save_folder", str(tmp_path / "transfer"), "--epochs", "2",
                          "--batch_size", "64"])
    # Measured: 32.9 (frozen) / 33.8 (--bn_adapt); a random-init backbone gets 25.2.
    assert result["last_acc"] > 20, result
