"""Code ported from the reference (RepDistiller) runs unchanged on the reference-compatible data entry
points: ``get_cifar100_dataloaders``, ``get_cifar100_dataloaders_sample``, ``CIFAR100Instance`` and
``CIFAR100InstanceSample`` (the last two wrapped in a plain ``DataLoader`` with torch's default collate,
as the reference's loader functions do). Batches have the reference's tuple layout, float32 images
normalised with the exported constants, and the fast uint8 path is there only when asked for.

Expected pixels come from the raw pickle rows (tests/fakedata.py), not from the library.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from fakedata import read_fake_split, write_fake_cifar

import kdzoo.dataset as dataset
from kdzoo.dataset import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CIFAR100Instance,
    CIFAR100InstanceSample,
    Normalize,
    get_cifar100_dataloaders,
    get_cifar100_dataloaders_sample,
)

N_TRAIN, N_TEST, BATCH = 200, 40, 16


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fake_cifar(tmp_path_factory.mktemp("cifar"), n_train=N_TRAIN, n_test=N_TEST, seed=3)


@pytest.fixture(scope="module")
def raw(root):
    """split -> (uint8 images (N, 3, 32, 32), labels), decoded from the pickle rows by numpy."""
    out = {}
    for train in (True, False):
        data, labels = read_fake_split(root, train)
        out[train] = (torch.from_numpy(np.asarray(data).reshape(-1, 3, 32, 32).copy()), torch.tensor(labels))
    return out


def undo_normalisation(images: torch.Tensor) -> torch.Tensor:
    """The reference's ``Normalize`` inverted with the published constants, back to 0..255 pixels."""
    mean = torch.tensor([0.5071, 0.4867, 0.4408]).view(1, 3, 1, 1)
    std = torch.tensor([0.2675, 0.2565, 0.2761]).view(1, 3, 1, 1)
    return (images * std + mean) * 255


def crops_and_flips(image: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Every output of RandomCrop(32, padding) + RandomHorizontalFlip for one image, by slicing."""
    padded = torch.zeros(3, 32 + 2 * padding, 32 + 2 * padding, dtype=image.dtype)
    padded[:, padding:padding + 32, padding:padding + 32] = image
    out = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top:top + 32, left:left + 32]
            out += [crop, crop.flip(-1)]
    return torch.stack(out)


def check_images(images: torch.Tensor, index: torch.Tensor, raw_images: torch.Tensor, train: bool) -> None:
    assert images.dtype == torch.float32 and images.shape == (len(index), 3, 32, 32)
    pixels = undo_normalisation(images)
    assert (pixels - pixels.round()).abs().max() < 1e-3  # exactly (x / 255 - mean) / std of integer pixels
    pixels = pixels.round().clamp(0, 255).to(torch.uint8)
    for img, i in zip(pixels, index.tolist()):
        if train:  # augmented: one of the crops/flips of the raw image
            assert (crops_and_flips(raw_images[i]) == img).flatten(1).all(1).any()
        else:
            assert torch.equal(img, raw_images[i])


def train_vanilla(train_loader, model: nn.Module, criterion, optimizer) -> float:
    """One epoch written as RepDistiller's train_vanilla loop is: images straight into the model."""
    model.train()
    total = 0.0
    for input, target in train_loader:
        output = model(input)
        loss = criterion(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total


def validate(val_loader, model: nn.Module) -> int:
    model.eval()
    correct = 0
    with torch.no_grad():
        for input, target in val_loader:
            correct += int((model(input).argmax(1) == target).sum())
    return correct


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 100))


def test_constants_exported_from_dataset():
    assert (CIFAR100_MEAN, CIFAR100_STD) == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
    assert (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert {"CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD"} <= set(dataset.__all__)


def test_reference_training_loop_runs_on_get_cifar100_dataloaders(root, raw):
    train_loader, val_loader = get_cifar100_dataloaders(batch_size=BATCH, num_workers=0, data_folder=root)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    assert np.isfinite(train_vanilla(train_loader, model, nn.CrossEntropyLoss(), optimizer))
    assert 0 <= validate(val_loader, model) <= N_TEST

    images, target = next(iter(val_loader))  # test set: in order, half the batch, normalised only
    assert target.dtype == torch.int64 and torch.equal(target, raw[False][1][:BATCH // 2])
    check_images(images, torch.arange(BATCH // 2), raw[False][0], train=False)
    epochs = [torch.cat([t for _, t in train_loader]) for _ in range(2)]
    assert all(len(e) == N_TRAIN for e in epochs)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled every epoch without any set_epoch call


def test_instance_loaders_and_n_data(root, raw):
    train_loader, val_loader, n_data = get_cifar100_dataloaders(batch_size=BATCH, num_workers=0,
                                                                is_instance=True, data_folder=root)
    assert n_data == N_TRAIN
    model = tiny_model()
    criterion = nn.CrossEntropyLoss()
    for input, target, index in train_loader:  # the reference's train_distill unpacking
        loss = criterion(model(input), target)
        loss.backward()
        assert index.dtype == torch.int64 and torch.equal(target, raw[True][1][index])
        check_images(input, index, raw[True][0], train=True)
        break
    assert len(next(iter(val_loader))) == 2


@pytest.mark.parametrize("is_sample,mode", [(True, "exact"), (True, "relax"), (False, "exact")])
def test_sample_loaders(root, raw, is_sample, mode):
    k = 12
    train_loader, val_loader, n_data = get_cifar100_dataloaders_sample(
        batch_size=BATCH, num_workers=0, k=k, mode=mode, is_sample=is_sample, data_folder=root)
    assert n_data == N_TRAIN
    batch = next(iter(train_loader))
    labels = raw[True][1]
    if is_sample:
        input, target, index, contrast_idx = batch
        assert contrast_idx.dtype == torch.int64 and contrast_idx.shape == (BATCH, k + 1)
        assert (labels[contrast_idx[:, 0]] == target).all()
        if mode == "exact":
            assert torch.equal(contrast_idx[:, 0], index)
        assert (labels[contrast_idx[:, 1:]] != target.unsqueeze(1)).all()
    else:
        input, target, index = batch
    check_images(input, index, raw[True][0], train=True)
    output = tiny_model()(input)
    assert torch.isfinite(nn.CrossEntropyLoss()(output, target))
    assert len(next(iter(val_loader))) == 2


def test_reference_datasets_in_a_plain_dataloader(root, raw):
    """The reference wraps its datasets in ``DataLoader(..., shuffle=True)`` with the default collate."""
    ds = CIFAR100Instance(root=root, download=True, train=True)  # the reference's keywords
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0)
    input, target, index = next(iter(loader))
    assert target.shape == index.shape == (BATCH,)
    assert torch.equal(target, raw[True][1][index])
    check_images(input, index, raw[True][0], train=True)
    img, label, i = ds[7]  # one sample, as the reference's __getitem__
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and int(label) == int(raw[True][1][7]) and i == 7

    test_ds = CIFAR100Instance(root, train=False)
    input, target, index = next(iter(DataLoader(test_ds, batch_size=8, shuffle=False)))
    check_images(input, index, raw[False][0], train=False)

    sample = CIFAR100InstanceSample(root=root, train=True, k=5, mode="exact", is_sample=True, percent=1.0)
    input, target, index, contrast_idx = next(iter(DataLoader(sample, batch_size=BATCH, shuffle=True)))
    assert contrast_idx.shape == (BATCH, 6) and torch.equal(contrast_idx[:, 0], index)
    check_images(input, index, raw[True][0], train=True)

    with pytest.raises(ValueError, match="transform"):
        CIFAR100Instance(root=root, transform=lambda x: x)


def test_uint8_path_only_when_asked(root, raw):
    train_loader, val_loader = get_cifar100_dataloaders(batch_size=BATCH, num_workers=0, data_folder=root,
                                                        uint8=True)
    images, _ = next(iter(val_loader))
    assert images.dtype == torch.uint8 and torch.equal(images, raw[False][0][:BATCH // 2])
    # the device-side Normalize of the fast path gives what the default path returns
    float_images, _ = next(iter(get_cifar100_dataloaders(batch_size=BATCH, num_workers=0, data_folder=root)[1]))
    torch.testing.assert_close(Normalize(CIFAR100_MEAN, CIFAR100_STD)(images), float_images, atol=1e-5, rtol=0)
    assert CIFAR100Instance(root, uint8=True)[0][0].dtype == torch.uint8
    # feeding an already normalised batch to Normalize is refused with the fix named
    with pytest.raises(TypeError, match="uint8=True"):
        Normalize(CIFAR100_MEAN, CIFAR100_STD)(float_images)
