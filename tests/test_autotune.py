"""The automatic exact-fp32 choices (``kdzoo/helper/autotune.py``): the memory layout is measured
by default, either layout can be forced, the choice is logged and stored in the checkpoint, and the
chosen layout computes the same losses as NCHW up to fp32 rounding."""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pytest
import torch

import train_student
from fakedata import write_fake_cifar
from kdzoo.helper.autotune import AUTO, LayoutChoice, measure_layouts, parse_layout
from kdzoo.helper.checkpoint import load_checkpoint
from kdzoo.helper.logger import read_metrics
from kdzoo.helper.options import add_training_args
from kdzoo.models import model_dict


def save_teacher(folder: Path, arch: str = "resnet8") -> Path:
    torch.manual_seed(0)
    path = folder / f"{arch}_vanilla" / "ckpt_epoch_240.pth"
    path.parent.mkdir(parents=True)
    torch.save({"model": model_dict[arch](num_classes=100).state_dict(), "epoch": 240}, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("autotune")
    return write_fake_cifar(root / "data", n_train=32, n_test=16), save_teacher(root / "teachers")


def run(setup, save: Path, *flags: str, distill: str = "kd") -> dict:
    data, teacher = setup
    torch.manual_seed(0)
    result = train_student.main([
        "--path_t", str(teacher), "--model_s", "resnet8", "--distill", distill, "--data_folder", str(data),
        "--save_folder", str(save), "--device", "cpu", "--num_workers", "0", "--batch_size", "16",
        "--epochs", "1", "--seed", "3", "--print_freq", "1000", *flags,
    ])
    return load_checkpoint(Path(result["run_dir"]) / "resnet8_last.pth")


def parse(*argv: str) -> argparse.Namespace:
    return add_training_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_layout_flag_defaults_to_auto_and_either_layout_can_be_forced():
    assert parse().channels_last == AUTO
    assert parse("--channels_last").channels_last is True
    assert parse("--no-channels_last").channels_last is False
    assert parse("--channels_last", "off").channels_last is False
    assert parse("--channels_last", "on").channels_last is True
    with pytest.raises(argparse.ArgumentTypeError, match="auto, on or off"):
        parse_layout("sideways")


def fake_timer(seconds_per_step: dict[bool, float]):
    """A clock that advances by the layout's step time whenever a step of that layout runs."""
    now = [0.0]

    def make_step(channels_last: bool):
        def step():
            now[0] += seconds_per_step[channels_last]
        return step

    return make_step, lambda: now[0]


@pytest.mark.parametrize("nchw_s, cl_s, expected", [(0.100, 0.080, True), (0.080, 0.100, False),
                                                    (0.100, 0.099, False)])  # within the margin: NCHW
def test_the_faster_layout_is_chosen(nchw_s, cl_s, expected):
    make_step, timer = fake_timer({False: nchw_s, True: cl_s})
    choice = measure_layouts(make_step, torch.device("cpu"), timer=timer)
    assert choice.channels_last is expected and choice.how == "measured"
    assert choice.ms_per_step == pytest.approx({"nchw": 1000 * nchw_s, "channels_last": 1000 * cl_s})
    assert choice.seconds > 0  # the time spent choosing is reported


def test_measurement_leaves_the_random_state_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    draws = itertools.count()

    def make_step(channels_last: bool):
        return lambda: (next(draws), torch.rand(5))

    measure_layouts(make_step, torch.device("cpu"))
    assert next(draws) > 0 and torch.equal(torch.rand(3), expected)


def test_short_runs_keep_nchw_unmeasured(setup, tmp_path, capsys):
    state = run(setup, tmp_path / "short")  # 2 steps
    assert state["opt"]["channels_last"] is False
    assert state["opt"]["autotune"]["channels_last"]["ms_per_step"] == {}
    assert "memory layout nchw (run of under 100 steps: not measured)" in capsys.readouterr().out


def test_forced_layouts_give_the_same_losses_and_are_recorded(setup, tmp_path, capsys):
    nchw = run(setup, tmp_path / "nchw", "--no-channels_last")
    nhwc = run(setup, tmp_path / "nhwc", "--channels_last")
    log = capsys.readouterr().out
    assert "memory layout nchw (forced)" in log and "memory layout channels_last (forced)" in log
    assert nchw["opt"]["channels_last"] is False and nhwc["opt"]["channels_last"] is True
    assert nhwc["opt"]["autotune"]["channels_last"]["how"] == "forced"
    # Same data, same initial weights: only the rounding of the convolutions differs.
    rows = [read_metrics(next((tmp_path / name).iterdir()))[-1] for name in ("nchw", "nhwc")]
    for key in ("train_loss", "train_cls", "train_div", "test_loss"):
        assert rows[0][key] == pytest.approx(rows[1][key], rel=1e-4, abs=1e-5), key
    for key, value in nchw["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(nhwc["model"][key].contiguous(), value, rtol=1e-4, atol=1e-5)


def test_auto_is_the_default_and_its_choice_is_recorded(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("kdzoo.helper.autotune.MIN_RUN_STEPS", 2)  # measure even this two-step run
    state = run(setup, tmp_path / "auto", distill="crd")
    record = state["opt"]["autotune"]["channels_last"]
    assert record["how"] == "measured" and set(record["ms_per_step"]) == {"nchw", "channels_last"}
    assert state["opt"]["channels_last"] is (record["ms_per_step"]["channels_last"]
                                            < 0.97 * record["ms_per_step"]["nchw"])
    assert LayoutChoice(**record).describe() in capsys.readouterr().out


def test_a_resumed_auto_run_keeps_its_layout(setup, tmp_path, capsys):
    first = run(setup, tmp_path / "first", "--channels_last")
    path = next(Path(tmp_path / "first").glob("*/resnet8_last.pth"))
    data, teacher = setup
    train_student.main(["--path_t", str(teacher), "--data_folder", str(data), "--device", "cpu", "--num_workers", "0",
                        "--epochs", "2", "--batch_size", "16", "--resume", str(path), "--print_freq", "1000"])
    assert first["opt"]["channels_last"] is True
    assert "memory layout channels_last (resumed)" in capsys.readouterr().out
    assert load_checkpoint(path)["opt"]["channels_last"] is True
