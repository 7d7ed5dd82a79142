"""scripts/plot_corr.py: class-logit correlation matrices against numpy, and an end-to-end run on
random-init checkpoints and synthetic CIFAR, its JSON recomputed here from the raw test pickle."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_script
from fakedata import read_fake_split, write_fake_cifar
from kdzoo.models import model_dict


pc = load_script("plot_corr")

# CIFAR-100 normalisation, written out here
MEAN = np.array([0.5071, 0.4867, 0.4408]).reshape(1, 3, 1, 1)
STD = np.array([0.2675, 0.2565, 0.2761]).reshape(1, 3, 1, 1)


def test_correlation_matches_numpy():
    rng = np.random.default_rng(0)
    # columns on very different scales and offsets: the correlation must not care
    logits = rng.normal(size=(50, 7)) * rng.uniform(0.01, 100, size=7) + rng.uniform(-50, 50, size=7)
    logits[:, 3] = 2 * logits[:, 0] + 0.1 * logits[:, 1]  # some real correlation
    got = pc.logit_correlation(torch.tensor(logits, dtype=torch.float64))
    assert got.shape == (7, 7) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), np.corrcoef(logits.T), rtol=0, atol=1e-12)
    # hand-worked: class 1 = -3 * class 0 + 5, class 2 = class 0 squared on a symmetric grid
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    got = pc.logit_correlation(torch.stack([x, -3 * x + 5, x ** 2], dim=1))
    np.testing.assert_allclose(got.numpy(), [[1, -1, 0], [-1, 1, 0], [0, 0, 1]], atol=1e-12)


def test_mean_abs_difference():
    a = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
    assert pc.mean_abs_difference(a, b) == pytest.approx((0 + 1 + 1 + 0) / 4)
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-1, 1, (100, 100)), rng.uniform(-1, 1, (100, 100))
    assert pc.mean_abs_difference(torch.tensor(x), torch.tensor(y)) == pytest.approx(np.abs(x - y).mean(), rel=1e-12)


def test_split_list():
    assert pc.split_list(["a,b", " c "]) == ["a", "b", "c"]
    assert pc.split_list(None) == []


def test_figure_panels_share_one_scale():
    diffs = [torch.tensor([[0.0, 0.2], [0.2, 0.0]]), torch.tensor([[0.0, 0.7], [0.4, 0.0]])]
    fig = pc.plot_differences(diffs, ["A", "B"])
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["A", "B"]
    for ax, diff in zip(panels, diffs):
        (image,) = ax.images
        np.testing.assert_allclose(np.asarray(image.get_array()), diff.numpy())
        assert image.get_clim() == pytest.approx((0.0, 0.7))
    assert len(fig.axes) == 3  # two panels and one colour bar


def _reference_logits(model: torch.nn.Module, data: Path, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the raw test pickle, normalised here by hand, in one batch."""
    raw, labels = read_fake_split(data, train=False)
    images = raw[:n].reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    images = (images - MEAN) / STD
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(images, dtype=torch.float32)).double().numpy()
    return logits, np.array(labels[:n])


def _save(path: Path, model: torch.nn.Module, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), **extra}, path)
    return path


def _png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert int.from_bytes(data[16:20], "big") > 300 and int.from_bytes(data[20:24], "big") > 200


@pytest.fixture()
def checkpoints(tmp_path: Path) -> dict:
    torch.manual_seed(0)
    nets = {"teacher": model_dict["resnet8"](num_classes=100), "a": model_dict["wrn_16_1"](num_classes=100),
            "b": model_dict["resnet8"](num_classes=100)}
    paths = {
        # architecture from the folder name, the reference layout
        "teacher": _save(tmp_path / "models" / "resnet8_vanilla" / "ckpt_epoch_240.pth", nets["teacher"]),
        # from the checkpoint's model_name (this project's checkpoints); the folder says nothing
        "a": _save(tmp_path / "runs" / "first_try" / "last.pth", nets["a"], model_name="wrn_16_1", epoch=1),
        # a student run folder of train_student.py / the reference
        "b": _save(tmp_path / "runs" / "S:resnet8_T:resnet8_cifar100_kd_r:0.1_a:0.9_b:0.0_1" / "resnet8_best.pth",
                   nets["b"]),
    }
    data = write_fake_cifar(tmp_path / "data", n_train=8, n_test=64)
    return {"nets": nets, "paths": paths, "data": data, "tmp": tmp_path}


def test_end_to_end_matches_recomputation(checkpoints, capsys):
    nets, paths, data, tmp = (checkpoints[k] for k in ("nets", "paths", "data", "tmp"))
    out = tmp / "figs" / "corr.png"
    pc.main(["--path_t", str(paths["teacher"]), "--path_s", str(paths["a"]), "--path_s", str(paths["b"]),
             "--labels", "A,B", "--data_folder", str(data), "--device", "cpu", "--batch_size", "16",
             "--output", str(out)])
    printed = capsys.readouterr().out
    _png_ok(out)
    saved = json.loads(out.with_suffix(".json").read_text())

    logits_t, labels = _reference_logits(nets["teacher"], data)
    corr_t = np.corrcoef(logits_t.T)
    assert saved["test_images"] == 64
    assert (saved["teacher"]["model"], saved["teacher"]["path"]) == ("resnet8", str(paths["teacher"]))
    np.testing.assert_allclose(saved["teacher"]["corr"], corr_t, atol=1e-4)
    assert saved["teacher"]["acc"] == pytest.approx(100 * np.mean(logits_t.argmax(1) == labels))
    assert [s["label"] for s in saved["students"]] == ["A", "B"]
    for student, key, arch in zip(saved["students"], ("a", "b"), ("wrn_16_1", "resnet8")):
        logits_s, _ = _reference_logits(nets[key], data)
        corr_s = np.corrcoef(logits_s.T)
        assert student["model"] == arch
        np.testing.assert_allclose(student["corr"], corr_s, atol=1e-4)
        np.testing.assert_allclose(student["abs_diff"], np.abs(corr_t - corr_s), atol=1e-4)
        assert student["mean_abs_diff"] == pytest.approx(np.abs(corr_t - corr_s).mean(), abs=1e-5)
        assert student["mean_abs_diff"] > 0.01  # two random networks: clearly different
        assert f"{student['label']}: {arch}" in printed and f"{student['mean_abs_diff']:.4f}" in printed


def test_subset_comma_lists_and_explicit_architectures(checkpoints):
    nets, paths, data, tmp = (checkpoints[k] for k in ("nets", "paths", "data", "tmp"))
    out = tmp / "sub.png"
    pc.main(["--path_t", str(paths["teacher"]), "--model_t", "resnet8",
             "--path_s", f"{paths['a']},{paths['b']}", "--model_s", "wrn_16_1,resnet8",
             "--data_folder", str(data), "--device", "cpu", "--test_subset", "32", "--output", str(out)])
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["test_images"] == 32
    corr_t = np.corrcoef(_reference_logits(nets["teacher"], data, 32)[0].T)
    corr_b = np.corrcoef(_reference_logits(nets["b"], data, 32)[0].T)
    # default labels: the method of a student run folder (kd with -a 0.9: KD), else the folder name
    assert [s["label"] for s in saved["students"]] == ["first_try", "KD"]
    assert saved["students"][1]["mean_abs_diff"] == pytest.approx(np.abs(corr_t - corr_b).mean(), abs=1e-5)
    _png_ok(out)


def test_bad_input_is_reported(checkpoints, capsys):
    paths, data, tmp = (checkpoints[k] for k in ("paths", "data", "tmp"))
    common = ["--path_t", str(paths["teacher"]), "--data_folder", str(data), "--device", "cpu",
              "--output", str(tmp / "x.png")]
    unnamed = _save(tmp / "misc" / "weights.pth", checkpoints["nets"]["b"])
    cases = [
        (["--path_s", str(unnamed)], "--model_s"),  # the architecture cannot be told
        (["--path_s", str(paths["a"]), "--model_s", "resnet8"], "does not hold weights"),
        (["--path_s", str(paths["a"]), "--model_s", "resnet9"], "unknown --model_s"),
        (["--path_s", f"{paths['a']},{paths['b']}", "--labels", "only_one"], "--labels"),
        (["--path_s", str(tmp / "missing.pth")], "does not exist"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit):
            pc.main(common + extra)
        assert message in capsys.readouterr().err, extra
    with pytest.raises(SystemExit):
        pc.main(common[:-1] + [str(tmp / "x.pdf"), "--path_s", str(paths["a"])])
    assert ".png" in capsys.readouterr().err
