"""The data path: CIFAR-100 reading and validation, batched augmentation, the three views, contrastive
sampling, ImageFolder, and the (sharded) loaders.

Every check compares against an independent computation: the raw pickle rows, torchvision's functional
transforms applied image by image, or plain Python loops over the labels. Real-data checks are marked
``slow`` (pytest -m slow) and skip when the real CIFAR-100 (conftest.py) is absent.
"""
from __future__ import annotations

import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image

from fakedata import make_image_tree, read_fake_split, write_cifar_split, write_fake_cifar

from kdzoo.dataset import (
    CIFAR100Batched,
    CIFAR100Instance,
    CIFAR100InstanceSample,
    ContrastiveSampler,
    DataError,
    ImageFolderBatched,
    Normalize,
    ShardSampler,
    build_datasets,
    build_loaders,
    get_cifar100_dataloaders,
    get_cifar100_dataloaders_sample,
    imagenet_splits,
    random_crop_flip,
    read_cifar100,
)
from kdzoo.dataset.cifar100 import ensure_cifar100
from kdzoo.dataset.transforms import CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD, draw_crop_flip

# ----------------------------------------------------------------------------------------------------
# independent references
# ----------------------------------------------------------------------------------------------------


def tv_crop_flip(img: torch.Tensor, top: int, left: int, flip: int, padding: int) -> torch.Tensor:
    """torchvision's RandomCrop(padding) + RandomHorizontalFlip for explicit parameters, one image."""
    h, w = img.shape[-2:]
    out = TF.crop(TF.pad(img, [padding], fill=0), top, left, h, w)
    return TF.hflip(out) if flip else out


def crop_flip_candidates(img: torch.Tensor, padding: int) -> torch.Tensor:
    """Every image RandomCrop(padding) + flip can produce from ``img``: (2 * (2p+1)^2, C, H, W)."""
    side = 2 * padding + 1
    return torch.stack(
        [tv_crop_flip(img, t, l, f, padding) for t in range(side) for l in range(side) for f in (0, 1)]
    )


def is_crop_flip_of(out: torch.Tensor, img: torch.Tensor, padding: int = 4) -> bool:
    cands = crop_flip_candidates(img, padding)
    return bool((cands == out.unsqueeze(0)).flatten(1).all(1).any())


def raw_images(data: np.ndarray) -> torch.Tensor:
    """CIFAR rows (N, 3072) = R plane, G plane, B plane, each row-major 32x32, built pixel by pixel."""
    n = data.shape[0]
    out = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for c in range(3):
        for y in range(32):
            out[:, c, y, :] = data[:, c * 1024 + y * 32: c * 1024 + (y + 1) * 32]
    return torch.from_numpy(out)


def check_negatives(labels: torch.Tensor, index: torch.Tensor, sample_idx: torch.Tensor, k: int,
                    distinct: bool) -> None:
    """Plain-loop check of sample_idx rows: shape, range, other-class negatives, distinctness."""
    labels_l = labels.tolist()
    n = len(labels_l)
    assert sample_idx.shape == (index.numel(), k + 1)
    assert sample_idx.dtype == torch.long
    for row, i in zip(sample_idx.tolist(), index.tolist()):
        assert all(0 <= j < n for j in row)
        negs = row[1:]
        assert all(labels_l[j] != labels_l[i] for j in negs), (i, negs)
        if distinct:
            assert len(set(negs)) == k, (i, negs)


# ----------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("cifar"), n_train=256, n_test=64, seed=1)


@pytest.fixture(scope="module")
def fake_raw(fake_root):
    train_data, train_labels = read_fake_split(fake_root, True)
    test_data, test_labels = read_fake_split(fake_root, False)
    return {
        True: (raw_images(train_data), torch.tensor(train_labels)),
        False: (raw_images(test_data), torch.tensor(test_labels)),
    }


@pytest.fixture(scope="module")
def real_train(shared_data):
    return read_cifar100(shared_data, train=True)


TREE_CLASSES = ("ant", "bee", "cat")  # sorted: ImageFolder's class order


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    return make_image_tree(
        tmp_path_factory.mktemp("imagenet"),
        {"train": {c: 4 for c in TREE_CLASSES}, "val": {c: 2 for c in TREE_CLASSES}},
    )


# ----------------------------------------------------------------------------------------------------
# read_cifar100 on the real data
# ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_cifar100_shapes_dtypes_and_class_balance(shared_data, real_train):
    images, labels = real_train
    assert images.shape == (50000, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (50000,) and labels.dtype == torch.long
    counts = [0] * 100
    for y in labels.tolist():
        counts[y] += 1  # raises IndexError if a label is >= 100; negatives caught below
    assert int(labels.min()) == 0 and int(labels.max()) == 99
    assert counts == [500] * 100

    test_images, test_labels = read_cifar100(shared_data, train=False)
    assert test_images.shape == (10000, 3, 32, 32) and test_images.dtype == torch.uint8
    assert test_labels.shape == (10000,)
    assert torch.bincount(test_labels, minlength=100).tolist() == [100] * 100


@pytest.mark.slow
def test_real_cifar100_pixels_match_the_raw_pickle(shared_data, real_train):
    images, labels = real_train
    with open(shared_data / "cifar-100-python" / "train", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    assert labels.tolist() == list(entry["fine_labels"])
    rows = [0, 1, 777, 12345, 49999]
    assert torch.equal(images[rows], raw_images(entry["data"][rows]))
    # the whole array: a plain reshape of the rows
    assert torch.equal(images, torch.from_numpy(entry["data"].reshape(-1, 3, 32, 32)))


# ----------------------------------------------------------------------------------------------------
# read_cifar100 validation on bad folders
# ----------------------------------------------------------------------------------------------------


def test_fake_cifar_roundtrip(fake_root, fake_raw):
    for train in (True, False):
        images, labels = read_cifar100(fake_root, train)
        raw, raw_labels = fake_raw[train]
        assert torch.equal(images, raw) and torch.equal(labels, raw_labels)
    # default labels cycle through every class
    assert sorted(set(fake_raw[True][1].tolist())) == list(range(100))


def test_fake_cifar_custom_labels(tmp_path):
    root = write_fake_cifar(tmp_path, labels_train=[3, 3, 7, 9], n_test=5)
    images, labels = read_cifar100(root, True)
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [3, 3, 7, 9]


@pytest.mark.parametrize("present,missing", [(("test", "meta"), "train"), (("train", "meta"), "test")])
def test_missing_split_file_is_named(tmp_path, present, missing):
    write_fake_cifar(tmp_path, n_train=4, n_test=4)
    folder = tmp_path / "cifar-100-python"
    for name in ("train", "test", "meta"):
        if name not in present:
            (folder / name).unlink()
    with pytest.raises(DataError) as err:
        read_cifar100(tmp_path, train=False)
    msg = str(err.value)
    assert str(folder) in msg
    assert f"file(s) {missing}" in msg  # the missing file is the one listed


def _write_train(tmp_path: Path, data, labels) -> Path:
    write_fake_cifar(tmp_path, n_train=4, n_test=4)
    write_cifar_split(tmp_path / "cifar-100-python" / "train", data, labels)
    return tmp_path / "cifar-100-python" / "train"


@pytest.mark.parametrize(
    "data,labels,needle",
    [
        (np.zeros((4, 3071), np.uint8), [0, 1, 2, 3], "3072"),  # row too short
        (np.zeros((4, 3, 32, 32), np.uint8), [0, 1, 2, 3], "3072"),  # already reshaped
        (np.zeros((4, 3072), np.float32), [0, 1, 2, 3], "uint8"),  # wrong dtype
        (np.zeros((4, 3072), np.uint8), [0, 1, 2, 100], "100"),  # label too large
        (np.zeros((4, 3072), np.uint8), [0, -1, 2, 3], "-1"),  # negative label
        (np.zeros((4, 3072), np.uint8), [0, 1, 2], "4 images but 3 labels"),  # count mismatch
    ],
    ids=["short-row", "4d", "float", "label-100", "label-neg", "count"],
)
def test_bad_train_pickle_raises_data_error(tmp_path, data, labels, needle):
    path = _write_train(tmp_path, data, labels)
    with pytest.raises(DataError) as err:
        read_cifar100(tmp_path, train=True)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_empty_split_raises_data_error(tmp_path):
    """An empty train file must be a DataError, not a crash while formatting the message (regression:
    the range check's message once called labels.min() on an empty tensor)."""
    _write_train(tmp_path, np.zeros((0, 3072), np.uint8), [])
    with pytest.raises(DataError):
        read_cifar100(tmp_path, train=True)


@pytest.mark.parametrize(
    "content",
    [b"this is not a pickle", pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}), pickle.dumps([1, 2])],
    ids=["garbage", "no-labels", "not-a-dict"],
)
def test_unreadable_pickle_raises_data_error(tmp_path, content):
    write_fake_cifar(tmp_path, n_train=4, n_test=4)
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_cifar100(tmp_path, train=True)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "entry",
    [
        {"data": None, "fine_labels": [0, 1]},
        {"data": "not an array", "fine_labels": [0, 1]},
        {"data": np.zeros((2, 3072), np.uint8), "fine_labels": ["apple", "bee"]},
    ],
    ids=["data-none", "data-str", "labels-str"],
)
def test_malformed_pickle_entries_raise_data_error(tmp_path, entry):
    """A readable pickle whose entries are not arrays of numbers is still bad data: DataError.

    BUG (dataset/cifar100.py, read_cifar100): the torch.as_tensor conversions sit outside the try, so
    these raise a bare RuntimeError / TypeError / ValueError.
    """
    write_fake_cifar(tmp_path, n_train=4, n_test=4)
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(pickle.dumps(entry))
    with pytest.raises(DataError) as err:
        read_cifar100(tmp_path, train=True)
    assert str(path) in str(err.value)


class _RecordingCIFAR100:
    """Stands in for torchvision.datasets.CIFAR100; never touches the network."""

    calls: list = []

    def __init__(self, root, train=True, download=False, **kwargs):
        type(self).calls.append((root, train, download))
        self.after_call(Path(root))

    def after_call(self, root: Path) -> None:
        raise urllib.error.URLError("network is unreachable (test)")


def test_absent_folder_download_failure_says_where_to_put_files(tmp_path, monkeypatch):
    class Failing(_RecordingCIFAR100):
        calls = []

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", Failing)
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        read_cifar100(root, train=True)
    assert Failing.calls and Path(Failing.calls[0][0]) == root and Failing.calls[0][2] is True
    msg = str(err.value)
    assert str(root) in msg and "cifar-100-python" in msg and "URLError" in msg
    assert isinstance(err.value.__cause__, urllib.error.URLError)


class _PartialDownload(_RecordingCIFAR100):
    """Makes the data folder and writes part of the archive, then loses the network."""

    calls = []

    def after_call(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b partial")
        super().after_call(root)


def test_failed_download_removes_the_folders_it_made(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", _PartialDownload)
    with pytest.raises(DataError, match="downloading it failed"):
        read_cifar100(tmp_path / "runs" / "data", train=True)
    assert list(tmp_path.iterdir()) == [], "a failed download left files or folders behind"


def test_failed_download_keeps_what_the_folder_already_held(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", _PartialDownload)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        ensure_cifar100(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_cifar_folder_itself_is_accepted(tmp_path, monkeypatch):
    class Unused(_PartialDownload):
        calls = []

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", Unused)
    root = write_fake_cifar(tmp_path / "data", n_train=10, n_test=3, seed=5)
    folder = root / "cifar-100-python"
    assert ensure_cifar100(folder) == folder
    images, labels = read_cifar100(folder, train=False)
    assert images.shape == (3, 3, 32, 32) and not Unused.calls


def test_an_absent_cifar_folder_itself_is_downloaded_into_its_parent(tmp_path, monkeypatch):
    class Downloading(_RecordingCIFAR100):
        calls = []

        def after_call(self, root):
            write_fake_cifar(root, n_train=4, n_test=2)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", Downloading)
    folder = tmp_path / "data" / "cifar-100-python"
    assert ensure_cifar100(folder) == folder
    assert Path(Downloading.calls[0][0]) == tmp_path / "data"


def test_absent_folder_is_downloaded_then_read(tmp_path, monkeypatch):
    class Downloading(_RecordingCIFAR100):
        calls = []

        def after_call(self, root):
            write_fake_cifar(root, n_train=10, n_test=3, seed=5)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", Downloading)
    assert ensure_cifar100(tmp_path) == tmp_path / "cifar-100-python"
    assert len(Downloading.calls) == 1
    images, labels = read_cifar100(tmp_path, train=True)  # present now: no second download
    assert len(Downloading.calls) == 1
    assert images.shape == (10, 3, 32, 32) and labels.tolist() == list(range(10))


# ----------------------------------------------------------------------------------------------------
# augmentation and normalisation
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,padding", [((3, 32, 32), 4), ((3, 20, 28), 2), ((1, 9, 7), 3)])
def test_random_crop_flip_matches_torchvision_for_explicit_params(shape, padding):
    g = torch.Generator().manual_seed(0)
    side = 2 * padding + 1
    combos = [(t, l, f) for t in range(side) for l in range(side) for f in (0, 1)]
    n = len(combos)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    params = torch.tensor(combos, dtype=torch.long)
    before = images.clone()
    out = random_crop_flip(images, padding=padding, params=params)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(images, before)  # input untouched
    for i, (t, l, f) in enumerate(combos):
        assert torch.equal(out[i], tv_crop_flip(images[i], t, l, f, padding)), (t, l, f)


def test_random_crop_flip_default_randomness_draws_valid_varied_crops():
    torch.manual_seed(123)
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(images, padding=4)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for i in range(len(images)):
        assert is_crop_flip_of(out[i], images[i], 4)
    # the same image, cropped many times, comes out in many different ways
    same = images[:1].expand(64, -1, -1, -1).contiguous()
    outs = random_crop_flip(same, padding=4)
    assert len({o.numpy().tobytes() for o in outs}) > 20


def test_draw_crop_flip_covers_the_parameter_range():
    params = draw_crop_flip(20000, padding=4, generator=torch.Generator().manual_seed(0))
    assert params.shape == (20000, 3) and params.dtype == torch.long
    for col, hi in ((0, 9), (1, 9), (2, 2)):
        counts = torch.bincount(params[:, col], minlength=hi)
        assert counts.numel() == hi  # nothing out of range
        expected = 20000 / hi
        assert ((counts - expected).abs() < 0.1 * expected).all(), counts


@pytest.mark.parametrize("mean,std", [(CIFAR100_MEAN, CIFAR100_STD), (IMAGENET_MEAN, IMAGENET_STD)])
def test_normalize_matches_definition_and_torchvision(mean, std):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 7, 9), dtype=torch.uint8)
    x[0, :, 0, 0] = 0
    x[0, :, 0, 1] = 255
    out = Normalize(mean, std)(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    expected = (x.double() / 255 - m.double()) / s.double()
    assert torch.allclose(out.double(), expected, atol=1e-5)
    tv = torchvision.transforms.Normalize(mean, std)(x.float() / 255)
    assert torch.allclose(out, tv, atol=1e-5)
    assert x.dtype == torch.uint8  # input not converted in place


# ----------------------------------------------------------------------------------------------------
# CIFAR100Batched: epoch-fixed augmentation, test split, views
# ----------------------------------------------------------------------------------------------------


def test_set_epoch_batches_do_not_depend_on_batch_split_or_global_rng(fake_root):
    ds = CIFAR100Batched(fake_root, train=True, uint8=True)
    ds.set_epoch(3, seed=7)
    torch.manual_seed(0)
    whole = ds.batch(list(range(10)))
    torch.manual_seed(99)
    halves = [ds.batch(list(range(5))), ds.batch(list(range(5, 10)))]
    assert torch.equal(whole[0], torch.cat([h[0] for h in halves]))
    assert torch.equal(whole[1], torch.cat([h[1] for h in halves]))
    # reversed order gives the reversed batch; a fresh dataset with the same (seed, epoch) agrees
    rev = ds.batch(list(range(9, -1, -1)))
    assert torch.equal(rev[0], whole[0].flip(0))
    other = CIFAR100Batched(fake_root, train=True, uint8=True)
    other.set_epoch(3, seed=7)
    assert torch.equal(other.batch(list(range(10)))[0], whole[0])


def test_set_epoch_changes_augmentation_and_crops_are_valid(fake_root, fake_raw):
    raw, raw_labels = fake_raw[True]
    ds = CIFAR100Batched(fake_root, train=True, uint8=True)
    idx = list(range(0, 256, 8))  # 32 images
    batches = {}
    for seed, epoch in ((0, 0), (0, 1), (1, 0)):
        ds.set_epoch(epoch, seed=seed)
        images, labels = ds.batch(idx)
        assert images.dtype == torch.uint8 and images.shape == (32, 3, 32, 32)
        assert torch.equal(labels, raw_labels[idx])
        batches[seed, epoch] = images
    assert not torch.equal(batches[0, 0], batches[0, 1])
    assert not torch.equal(batches[0, 0], batches[1, 0])
    # per image, each augmented version is one of torchvision's crop+flip outputs of the raw image
    for j, i in enumerate(idx[:12]):
        for key in batches:
            assert is_crop_flip_of(batches[key][j], raw[i], 4)
    # and the epoch-fixed augmentation actually augments (not all images equal their raw source)
    assert not torch.equal(batches[0, 0], raw[idx])


def test_test_split_is_not_augmented(fake_root, fake_raw):
    raw, raw_labels = fake_raw[False]
    ds = CIFAR100Batched(fake_root, train=False, uint8=True)
    assert len(ds) == 64
    for epoch in (None, 0, 5):
        if epoch is not None:
            ds.set_epoch(epoch, seed=3)
        images, labels = ds.batch(list(range(64)))
        assert torch.equal(images, raw) and torch.equal(labels, raw_labels)


def test_limit_keeps_the_first_images(fake_root, fake_raw):
    raw, raw_labels = fake_raw[False]
    ds = CIFAR100Batched(fake_root, train=False, limit=10, uint8=True)
    assert len(ds) == 10
    images, labels = ds.batch(list(range(10)))
    assert torch.equal(images, raw[:10]) and torch.equal(labels, raw_labels[:10])


@pytest.mark.parametrize("view,length", [("plain", 2), ("instance", 3), ("sample", 4)])
def test_views_tuple_layout_and_single_item(fake_root, fake_raw, view, length):
    raw_labels = fake_raw[True][1]
    k = 16
    ds = CIFAR100Batched(fake_root, train=True, view=view, k=k, uint8=True)
    ds.set_epoch(0, seed=0)
    idx = [5, 0, 200, 37, 37, 255]
    batch = ds.batch(idx)
    assert isinstance(batch, tuple) and len(batch) == length
    images, targets = batch[:2]
    assert images.dtype == torch.uint8 and images.shape == (6, 3, 32, 32)
    assert targets.dtype == torch.long and targets.tolist() == raw_labels[idx].tolist()
    if length >= 3:
        assert batch[2].dtype == torch.long and batch[2].tolist() == idx
    if length == 4:
        sample_idx = batch[3]
        assert sample_idx[:, 0].tolist() == idx  # mode='exact'
        check_negatives(raw_labels, torch.tensor(idx), sample_idx, k, distinct=True)
    # __getitem__ is the single-row version of __getitems__
    for i in (0, 37, 255):
        torch.manual_seed(i)
        single = ds[i]
        torch.manual_seed(i)
        rows = ds.batch([i])
        assert len(single) == length
        for s, r in zip(single, rows):
            assert torch.equal(s, r[0])
        assert single[0].shape == (3, 32, 32) and single[1].ndim == 0


def test_reference_named_constructors(fake_root):
    assert CIFAR100Instance(fake_root).view == "instance"
    sample = CIFAR100InstanceSample(fake_root, k=8, mode="relax")
    assert sample.view == "sample" and sample.contrastive.k == 8 and sample.contrastive.mode == "relax"
    assert len(sample[3]) == 4 and sample[3][3].shape == (9,)
    assert CIFAR100InstanceSample(fake_root, is_sample=False).view == "instance"
    with pytest.raises(ValueError, match="view"):
        CIFAR100Batched(fake_root, view="pairs", uint8=True)


# ----------------------------------------------------------------------------------------------------
# ContrastiveSampler
# ----------------------------------------------------------------------------------------------------


def _labels_of_sizes(sizes, seed=0) -> torch.Tensor:
    labels = torch.cat([torch.full((s,), c, dtype=torch.long) for c, s in enumerate(sizes)])
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))]


def test_exact_mode_positive_is_the_index():
    torch.manual_seed(0)
    labels = _labels_of_sizes([6, 6, 6, 6])
    s = ContrastiveSampler(labels, k=5, mode="exact")
    index = torch.tensor([3, 0, 23, 11, 11])
    out = s.sample(index, labels[index])
    assert out[:, 0].tolist() == index.tolist()
    check_negatives(labels, index, out, 5, distinct=True)


def test_relax_mode_positive_is_same_class_and_varies():
    torch.manual_seed(0)
    labels = _labels_of_sizes([1, 5, 30])
    s = ContrastiveSampler(labels, k=4, mode="relax")
    index = torch.arange(labels.numel()).repeat(20)
    out = s.sample(index, labels[index])
    pos = out[:, 0]
    assert (labels[pos] == labels[index]).all()
    singleton = int((labels == 0).nonzero())
    assert (pos[index == singleton] == singleton).all()  # a class of one: the positive is itself
    for c in (1, 2):
        members = (labels == c).nonzero().flatten().tolist()
        anchor = torch.full((400,), members[0])  # one anchor, drawn many times
        seen = set(s.sample(anchor, labels[anchor])[:, 0].tolist())
        assert seen == set(members)  # every member of the class shows up as its positive
    check_negatives(labels, index, out, 4, distinct=True)


@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_uneven_classes_reference_failure_case(mode):
    """Classes of 1, 5 and 200 samples: the reference turns the ragged per-class lists into an array
    (fails on modern numpy) and sizes the percent subset from class 0 only."""
    torch.manual_seed(1)
    labels = _labels_of_sizes([1, 5, 200])
    index = torch.arange(labels.numel())
    # K = 6 = the pool of the big class exactly: distinct rows, and the big class gets all of its pool
    s = ContrastiveSampler(labels, k=6, mode=mode)
    out = s.sample(index, labels[index])
    check_negatives(labels, index, out, 6, distinct=True)
    others = set((labels != 2).nonzero().flatten().tolist())
    for row in out[labels == 2].tolist():
        assert set(row[1:]) == others
    if mode == "exact":
        assert torch.equal(out[:, 0], index)
    else:
        assert (labels[out[:, 0]] == labels).all()
    # percent with the singleton as class 0: the subset must fit every class's pool
    sp = ContrastiveSampler(labels, k=2, mode=mode, percent=0.5)
    rows = index.repeat(10)
    out = sp.sample(rows, labels[rows])
    check_negatives(labels, rows, out, 2, distinct=True)
    for c in range(3):
        seen = set(out[labels[rows] == c, 1:].flatten().tolist())
        assert len(seen) <= 3  # int(min pool 6 * 0.5)


def test_k_above_pool_falls_back_to_replacement_without_same_class():
    torch.manual_seed(2)
    labels = _labels_of_sizes([1, 5, 200])
    s = ContrastiveSampler(labels, k=50, mode="exact")  # the big class has only 6 negatives
    index = torch.arange(labels.numel())
    out = s.sample(index, labels[index])
    check_negatives(labels, index, out, 50, distinct=False)
    others = set((labels != 2).nonzero().flatten().tolist())
    big = out[labels == 2, 1:]
    assert set(big.flatten().tolist()) == others  # all six used, with repeats
    # small classes: 50 of a pool of 201/205 are distinct, as the reference decides per sample
    small = labels != 2
    check_negatives(labels, index[small], out[small], 50, distinct=True)


def test_imagenet_sized_pool_draws_distinct_negatives():
    """K = 16,384 of a pool of 1.2 million (ImageNet's size) is drawn without replacement too."""
    torch.manual_seed(3)
    labels = torch.arange(1_200_000) % 2
    s = ContrastiveSampler(labels, k=16384)
    index = torch.tensor([0, 1, 2, 3])
    out = s.sample(index, labels[index])
    assert out.shape == (4, 16385)
    for row, i in zip(out, index.tolist()):
        negatives = row[1:]
        assert negatives.unique().numel() == 16384
        assert (labels[negatives] != labels[i]).all()


def test_draws_follow_torch_seed():
    labels = _labels_of_sizes([20, 20, 20])
    s = ContrastiveSampler(labels, k=8, mode="relax")
    index = torch.arange(60)
    draws = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        draws.append(s.sample(index, labels[index]))
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


def test_mixed_batch_masks_pools_of_different_sizes():
    """One batch holding a class whose pool is exactly K and classes with larger pools."""
    torch.manual_seed(4)
    labels = torch.tensor([2, 0, 1, 2, 2, 1, 0, 2, 1, 2])  # sizes 2, 3, 5 -> pools 8, 7, 5
    s = ContrastiveSampler(labels, k=5)
    index = torch.arange(10).repeat(50)
    out = s.sample(index, labels[index])
    check_negatives(labels, index, out, 5, distinct=True)
    pool2 = {j for j in range(10) if labels[j] != 2}
    for row in out[labels[index] == 2].tolist():
        assert set(row[1:]) == pool2


def test_empty_classes_in_the_label_range():
    torch.manual_seed(5)
    labels = torch.tensor([4, 0, 4, 0, 4, 9])  # classes 1-3 and 5-8 have no samples
    s = ContrastiveSampler(labels, k=3)
    index = torch.arange(6).repeat(30)
    out = s.sample(index, labels[index])
    check_negatives(labels, index, out, 3, distinct=True)
    # class 4 (indices 0, 2, 4) has exactly 3 negatives: every row holds all of them
    for row in out[labels[index] == 4].tolist():
        assert set(row[1:]) == {1, 3, 5}
    # class 0 (indices 1, 3) draws 3 of its 4 negatives; over the rows all 4 appear
    assert set(out[labels[index] == 0, 1:].flatten().tolist()) == {0, 2, 4, 5}


def test_percent_restricts_the_pool_to_a_fixed_subset():
    torch.manual_seed(6)
    labels = _labels_of_sizes([25, 25, 25, 25])
    s = ContrastiveSampler(labels, k=5, percent=0.2)
    size = int(75 * 0.2)
    unions = []
    for call in range(2):
        torch.manual_seed(100 + call)  # a different global stream per call: the subset must not move
        index = torch.arange(100).repeat(40)
        out = s.sample(index, labels[index])
        check_negatives(labels, index, out, 5, distinct=True)
        per_class = []
        for c in range(4):
            seen = set(out[labels[index] == c, 1:].flatten().tolist())
            assert len(seen) == size, (c, len(seen))
            per_class.append(seen)
        unions.append(per_class)
    assert unions[0] == unions[1]


def test_negative_and_positive_frequencies_are_uniform():
    torch.manual_seed(7)
    labels = torch.tensor([2, 0, 1, 2, 2, 1, 0, 2, 1, 2])  # class 0 = {1, 6}, class 2 has 5 members
    rows = 20000
    anchor = torch.full((rows,), 1)

    def freq(sampler):
        out = sampler.sample(anchor, labels[anchor])
        return out, torch.bincount(out[:, 1:].flatten(), minlength=10).double()

    pool = [j for j in range(10) if labels[j] != 0]
    for k, tol in ((3, 0.05), (20, 0.02)):  # without replacement (k <= 8), then with
        _, counts = freq(ContrastiveSampler(labels, k=k))
        expected = rows * k / len(pool)
        assert counts[1] == 0 and counts[6] == 0
        f = counts[pool]
        assert ((f - expected).abs() < tol * expected).all(), (k, f)
        chi2 = float(((f - expected) ** 2 / expected).sum())
        assert chi2 < 40, (k, chi2)  # 7 degrees of freedom

    anchor = torch.full((rows,), 0)  # class 2: relax positives spread over its 5 members
    out = ContrastiveSampler(labels, k=2, mode="relax").sample(anchor, labels[anchor])
    counts = torch.bincount(out[:, 0], minlength=10).double()
    members = [j for j in range(10) if labels[j] == 2]
    assert counts.sum() == counts[members].sum()
    assert ((counts[members] - rows / 5).abs() < 0.08 * rows / 5).all(), counts


@pytest.mark.parametrize(
    "kwargs,labels,match",
    [
        (dict(k=4, mode="nearest"), [0, 1, 0, 1], "mode"),
        (dict(k=0), [0, 1, 0, 1], "k"),
        (dict(k=-3), [0, 1, 0, 1], "k"),
        (dict(k=1, percent=0.0), [0, 1, 0, 1], "percent"),
        (dict(k=1, percent=1.5), [0, 1, 0, 1], "percent"),
        (dict(k=1, percent=0.4), [0, 1, 0, 1], "percent"),  # int(2 * 0.4) = 0 negatives left
        (dict(k=1), [3, 3, 3, 3], "two classes"),
        (dict(k=1), [0], "two classes"),
    ],
)
def test_contrastive_sampler_errors(kwargs, labels, match):
    with pytest.raises(ValueError, match=match):
        ContrastiveSampler(torch.tensor(labels), **kwargs)


# ----------------------------------------------------------------------------------------------------
# ImageFolder / ImageNet
# ----------------------------------------------------------------------------------------------------


def test_imagenet_splits_shapes_labels_and_eval_transform(image_tree):
    train, val = imagenet_splits(image_tree, image_size=32, uint8=True)
    assert len(train) == 12 and len(val) == 6
    assert train.classes == list(TREE_CLASSES) and train.num_classes == 3
    images, labels = train.batch(list(range(12)))
    assert images.dtype == torch.uint8 and images.shape == (12, 3, 32, 32)
    assert labels.tolist() == [i // 4 for i in range(12)]  # sorted classes, 4 images each
    vimages, vlabels = val.batch([5, 0, 3])
    assert vimages.shape == (3, 3, 32, 32) and vlabels.tolist() == [2, 0, 1]
    # the eval transform: resize the short side to 32 * 256 / 224 -> 36, centre crop 32
    for row, i in enumerate([5, 0, 3]):
        cls, n = TREE_CLASSES[i // 2], i % 2
        pil = Image.open(image_tree / "val" / cls / f"img{n}.png").convert("RGB")
        expected = TF.pil_to_tensor(TF.center_crop(TF.resize(pil, 36), 32))
        assert torch.equal(vimages[row], expected)
    assert isinstance(train, ImageFolderBatched)


def test_imagenet_sample_view(image_tree):
    torch.manual_seed(0)
    train, val = imagenet_splits(image_tree, image_size=32, view="sample", k=4)
    batch = train.batch([0, 5, 11, 7])
    assert len(batch) == 4
    images, targets, index, sample_idx = batch
    assert images.shape == (4, 3, 32, 32) and index.tolist() == [0, 5, 11, 7]
    assert sample_idx[:, 0].tolist() == [0, 5, 11, 7]
    check_negatives(train.labels, index, sample_idx, 4, distinct=True)
    assert len(val.batch([0, 1])) == 2  # the view applies to the training split only
    single = train[3]
    assert len(single) == 4 and single[0].shape == (3, 32, 32) and single[3].shape == (5,)


@pytest.mark.parametrize("present,missing", [(("train",), "val"), (("val",), "train"), ((), "train")])
def test_imagenet_missing_split_is_named(tmp_path, present, missing):
    make_image_tree(tmp_path, {s: {"a": 1, "b": 1} for s in present}, sizes=((8, 8),))
    with pytest.raises(DataError) as err:
        imagenet_splits(tmp_path, image_size=8)
    assert f"'{missing}'" in str(err.value) and str(tmp_path) in str(err.value)


@pytest.mark.parametrize("val_classes", [("a", "b", "d"), ("a", "b")])
def test_imagenet_class_mismatch(tmp_path, val_classes):
    make_image_tree(
        tmp_path, {"train": {c: 1 for c in ("a", "b", "c")}, "val": {c: 1 for c in val_classes}}, sizes=((8, 8),)
    )
    with pytest.raises(DataError) as err:
        imagenet_splits(tmp_path, image_size=8)
    assert str(tmp_path) in str(err.value)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderBatched(tmp_path / "absent")
    make_image_tree(tmp_path, {"train": {"a": 1}}, sizes=((8, 8),))
    (tmp_path / "train" / "empty_class").mkdir()
    with pytest.raises(DataError):
        ImageFolderBatched(tmp_path / "train")


# ----------------------------------------------------------------------------------------------------
# loaders
# ----------------------------------------------------------------------------------------------------


def test_batch_size_must_divide_over_ranks(fake_root):
    train = CIFAR100Batched(fake_root, train=True, uint8=True)
    test = CIFAR100Batched(fake_root, train=False, uint8=True)
    with pytest.raises(ValueError, match="divisible"):
        build_loaders(train, test, batch_size=10, num_workers=0, world_size=4, rank=0)


@pytest.mark.parametrize("size,world", [(10, 1), (10, 3), (7, 2), (64, 4), (2, 5)])
def test_shard_sampler_covers_every_index_once(size, world):
    shards = [list(ShardSampler(size, r, world)) for r in range(world)]
    for r, shard in enumerate(shards):
        assert len(ShardSampler(size, r, world)) == len(shard)
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(size))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


@pytest.mark.parametrize("view,length", [("plain", 2), ("instance", 3), ("sample", 4)])
def test_loader_yields_dataset_batches_for_each_view(fake_root, view, length):
    train = CIFAR100Batched(fake_root, train=True, view=view, k=8, uint8=True)
    test = CIFAR100Batched(fake_root, train=False, uint8=True)
    train_loader, test_loader, spec = build_loaders(train, test, batch_size=32, num_workers=0, seed=4)
    assert (spec.num_classes, spec.n_data, spec.mean, spec.std) == (100, 256, CIFAR100_MEAN, CIFAR100_STD)
    train_loader.sampler.set_epoch(2)
    train.set_epoch(2, seed=4)
    order = list(train_loader.sampler)
    assert sorted(order) == list(range(256))
    n_batches = 0
    for b, batch in enumerate(train_loader):
        assert isinstance(batch, tuple) and len(batch) == length
        idx = order[b * 32:(b + 1) * 32]
        torch.manual_seed(b)
        expected = train.batch(idx)
        for got, exp in zip(batch[:3], expected[:3]):  # sample_idx is random: checked below
            assert torch.equal(got, exp)
        if length == 4:
            check_negatives(train.labels, torch.tensor(idx), batch[3], 8, distinct=True)
        n_batches += 1
    assert n_batches == 8
    test_batches = list(test_loader)
    assert [len(t[0]) for t in test_batches] == [32, 32]
    assert torch.equal(torch.cat([t[0] for t in test_batches]), test.images)


def test_two_ranks_split_the_global_batch(fake_root, fake_raw):
    train = CIFAR100Batched(fake_root, train=True, view="instance", uint8=True)
    test = CIFAR100Batched(fake_root, train=False, view="instance", uint8=True)
    train.set_epoch(1, seed=5)

    def first_batches(rank, world, epoch):
        tl, vl, _ = build_loaders(train, test, batch_size=16, num_workers=0, seed=5, rank=rank, world_size=world)
        tl.sampler.set_epoch(epoch)
        return next(iter(tl)), list(tl), list(vl)

    for epoch in (0, 1):
        single, single_all, _ = first_batches(0, 1, epoch)
        r0, r0_all, v0 = first_batches(0, 2, epoch)
        r1, r1_all, v1 = first_batches(1, 2, epoch)
        assert len(single[2]) == 16 and len(r0[2]) == 8 and len(r1[2]) == 8
        assert set(r0[2].tolist()) | set(r1[2].tolist()) == set(single[2].tolist())
        assert not set(r0[2].tolist()) & set(r1[2].tolist())
        # the same index gives the same augmented image on every rank
        by_index = dict(zip(single[2].tolist(), single[0]))
        for images, _, index in (r0, r1):
            for img, i in zip(images, index.tolist()):
                assert torch.equal(img, by_index[i])
        # whole epoch: the two ranks together see every training index once
        seen = [i for b in r0_all + r1_all for i in b[2].tolist()]
        assert sorted(seen) == list(range(256))
        # evaluation: every test image exactly once across ranks, unaugmented
        test_seen = [i for b in v0 + v1 for i in b[2].tolist()]
        assert sorted(test_seen) == list(range(64))
        raw = fake_raw[False][0]
        for b in v0 + v1:
            assert torch.equal(b[0], raw[b[2]])
    # the epoch changes the order
    assert first_batches(0, 1, 0)[0][2].tolist() != first_batches(0, 1, 1)[0][2].tolist()


def test_worker_processes_give_the_same_batches(fake_root):
    train = CIFAR100Batched(fake_root, train=True, view="instance", uint8=True)
    test = CIFAR100Batched(fake_root, train=False, uint8=True)
    train.set_epoch(0, seed=0)
    results = []
    for workers in (0, 2):
        tl, _, _ = build_loaders(train, test, batch_size=64, num_workers=workers, seed=0)
        tl.sampler.set_epoch(0)
        results.append(list(tl))
    assert len(results[0]) == len(results[1]) == 4
    for a, b in zip(*results):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


def test_build_datasets(fake_root, image_tree):
    train, test = build_datasets("cifar100", fake_root, view="sample", k=4, mode="relax", train_limit=50,
                                 test_limit=20)
    assert (len(train), len(test), train.view, test.view) == (50, 20, "sample", "plain")
    assert train.contrastive.mode == "relax" and test.train is False
    itrain, ival = build_datasets("imagenet", image_tree, view="instance")
    assert (len(itrain), len(ival), itrain.view, ival.view) == (12, 6, "instance", "plain")
    _, _, spec = build_loaders(itrain, ival, batch_size=4, num_workers=0)
    assert (spec.num_classes, spec.n_data, spec.mean, spec.std) == (3, 12, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_datasets("mnist", fake_root)


# ----------------------------------------------------------------------------------------------------
# reference-compatible loader functions on the real data
# ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_get_cifar100_dataloaders_real(shared_data, real_train):
    raw_images_all, raw_labels = real_train
    train_loader, test_loader = get_cifar100_dataloaders(batch_size=8, num_workers=0, data_folder=shared_data)
    images, targets = next(iter(train_loader))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32  # normalised, as the reference
    assert targets.shape == (8,) and 0 <= int(targets.min()) and int(targets.max()) < 100
    timages, ttargets = next(iter(test_loader))
    assert timages.shape == (4, 3, 32, 32) and len(test_loader.dataset) == 10000  # half batch, as the reference

    loaders = get_cifar100_dataloaders(batch_size=8, num_workers=0, is_instance=True, data_folder=shared_data,
                                       uint8=True)
    assert len(loaders) == 3 and loaders[2] == 50000
    images, targets, index = next(iter(loaders[0]))
    assert images.dtype == torch.uint8 and torch.equal(targets, raw_labels[index])
    for img, i in zip(images, index.tolist()):
        assert is_crop_flip_of(img, raw_images_all[i], 4)


@pytest.mark.slow
def test_get_cifar100_dataloaders_sample_real(shared_data, real_train):
    _, raw_labels = real_train
    torch.manual_seed(0)
    train_loader, test_loader, n_data = get_cifar100_dataloaders_sample(
        batch_size=8, num_workers=0, k=64, mode="relax", percent=0.5, data_folder=shared_data,
    )
    assert n_data == 50000
    images, targets, index, sample_idx = next(iter(train_loader))
    assert images.shape == (8, 3, 32, 32) and sample_idx.shape == (8, 65)
    assert torch.equal(targets, raw_labels[index])
    assert (raw_labels[sample_idx[:, 0]] == targets).all()  # relax: a same-class positive
    assert (raw_labels[sample_idx[:, 1:]] != targets.unsqueeze(1)).all()
    assert all(len(set(r)) == 64 for r in sample_idx[:, 1:].tolist())
    assert len(next(iter(test_loader))) == 2
