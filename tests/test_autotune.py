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
from kdzoo.helper.autotune import (
    AUTO,
    LayoutChoice,
    auto_workers,
    choose_workers,
    measure_layouts,
    parse_layout,
    parse_workers,
)
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


# ----------------------------------------------------------------------------------------------------
# --num_workers auto
# ----------------------------------------------------------------------------------------------------

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_workers_flag_defaults_to_auto_and_takes_counts():
    assert parse().num_workers == AUTO
    assert parse("--num_workers", "3").num_workers == 3
    assert parse("--num_workers", "0").num_workers == 0
    assert parse("--num_workers", "AUTO").num_workers == AUTO
    for bad in ("-1", "two", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="auto or a count"):
            parse_workers(bad)


@pytest.mark.parametrize("device, threads, processes, cpus, expected", [
    (CPU, 2, 1, 2, 0),    # the step's threads take both cores: load in the main process
    (CPU, 1, 1, 2, 1),    # one core left free
    (CPU, 1, 2, 2, 0),    # two torchrun processes of one thread each on two cores
    (CPU, 4, 1, 16, 8),   # twelve free cores, capped at eight
    (CPU, 6, 1, 10, 4),
    (CPU, 8, 1, 4, 0),    # more threads than cores
    (CUDA, 16, 1, 16, 8),  # the device computes: the host's cores load, as many as the reference's default
    (CUDA, 1, 4, 16, 4),   # four processes share sixteen cores
    (CUDA, 1, 1, 1, 1),
])
def test_auto_workers_gives_the_loader_the_cores_the_step_leaves(device, threads, processes, cpus, expected):
    workers, how = auto_workers(device, threads, processes, cpus)
    assert workers == expected
    assert how.startswith(device.type)


def test_workers_choice_is_recorded_forced_or_resumed():
    opt = argparse.Namespace(num_workers=AUTO)
    choice = choose_workers(opt, CPU)
    assert opt.num_workers == choice.num_workers == auto_workers(CPU, torch.get_num_threads())[0]
    assert opt.autotune["num_workers"] == {"num_workers": choice.num_workers, "how": choice.how}
    opt = argparse.Namespace(num_workers=5, autotune={"channels_last": {"how": "forced"}})
    assert choose_workers(opt, CPU).how == "forced" and opt.num_workers == 5
    assert opt.autotune["channels_last"] == {"how": "forced"}  # the other choices are kept
    opt = argparse.Namespace(num_workers=AUTO)
    assert choose_workers(opt, CPU, {"opt": {"num_workers": 3}}).how == "resumed" and opt.num_workers == 3
    opt = argparse.Namespace(num_workers=2)  # a count given on resume wins over the recorded one
    assert choose_workers(opt, CPU, {"opt": {"num_workers": 3}}).num_workers == 2


def test_an_auto_run_records_and_prints_its_workers(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("kdzoo.helper.autotune.usable_cpus", lambda: torch.get_num_threads() + 1)
    data, teacher = setup
    result = train_student.main([
        "--path_t", str(teacher), "--model_s", "resnet8", "--distill", "crd", "--data_folder", str(data),
        "--save_folder", str(tmp_path), "--device", "cpu", "--batch_size", "16", "--epochs", "1", "--seed", "3",
        "--print_freq", "1000"])
    state = load_checkpoint(Path(result["run_dir"]) / "resnet8_last.pth")
    assert state["opt"]["num_workers"] == 1  # one core left free by the step's threads
    assert state["opt"]["autotune"]["num_workers"]["how"].startswith("cpu: 1 of")
    assert "data loading    1 DataLoader worker (cpu: 1 of" in capsys.readouterr().out


def test_workers_change_where_batches_load_not_what_they_hold(tmp_path):
    """The same epoch through 0 and 2 workers: identical images, targets and indices; the contrastive
    negatives come from each loading process's generator, so only their rule is checked."""
    from kdzoo.dataset import build_datasets, build_loaders

    data = write_fake_cifar(tmp_path / "data", n_train=48, n_test=8)
    train_set, test_set = build_datasets("cifar100", data, view="sample", k=5, uint8=True)
    epochs = []
    for workers in (0, 2):
        torch.manual_seed(0)
        loader = build_loaders(train_set, test_set, 16, workers, seed=1)[0]
        loader.sampler.set_epoch(1)
        train_set.set_epoch(1, seed=1)
        epochs.append(list(loader))
    labels = train_set.labels
    for (img0, y0, i0, s0), (img2, y2, i2, s2) in zip(*epochs):
        assert torch.equal(img0, img2) and torch.equal(y0, y2) and torch.equal(i0, i2)
        for s in (s0, s2):
            assert torch.equal(s[:, 0], i0)
            assert (labels[s[:, 1:]] != y0.unsqueeze(1)).all()
