"""What a run prints: the start-up summary (resolved settings, given or default), elapsed time and
estimates in the progress lines, the init-stage notice, --help with every default and the method
list, and --threads."""
from __future__ import annotations

import argparse
import re

import pytest
import torch

import train_student
import train_teacher
import transfer_student
from fakedata import write_fake_cifar
from kdzoo.distiller_zoo.registry import METHODS
from kdzoo.helper import loops
from kdzoo.helper.loops import RunClock, format_duration
from kdzoo.helper.options import DefaultsHelpFormatter, given_flags
from kdzoo.helper.summary import distillation_rows, format_summary
from kdzoo.models import model_dict

PARSERS = {"train_teacher": train_teacher.build_parser, "train_student": train_student.build_parser,
           "transfer_student": transfer_student.build_parser}


# ------------------------------------------------------------------------------------------- --help
@pytest.mark.parametrize("entry", list(PARSERS))
def test_help_shows_every_default(entry):
    parser = PARSERS[entry]()
    formatter = DefaultsHelpFormatter(entry)
    unexplained = [action.option_strings[-1] for action in parser._actions
                   if action.option_strings and not action.required and action.dest != "help"
                   and "default" not in formatter._get_help_string(action)]
    assert not unexplained, f"{entry} --help gives no default for {unexplained}"
    text = parser.format_help()
    assert "--epochs" in text and "(default: 100)" in text  # --print_freq's, appended by the formatter


def test_help_appends_defaults_as_typed_on_the_command_line():
    parser = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--steps", default=[1, 2], help="decay steps")
    parser.add_argument("--fast", action="store_true", help="go fast")
    parser.add_argument("--rate", type=float, default=0.5, help="the rate (default 0.5, or 0.1 for x)")
    parser.add_argument("--ratio", default="50%", help="a share")
    text = " ".join(parser.format_help().split())
    assert "decay steps (default: 1,2)" in text and "go fast (default: off)" in text
    assert "(default 0.5, or 0.1 for x)" in text and text.count("default") == 4
    assert "a share (default: 50%)" in text


def test_distill_help_lists_every_method_of_the_registry_one_per_line():
    help_text = train_student.build_parser().format_help()
    for name, method in METHODS.items():
        first_words = " ".join(method.paper.split()[:2])
        assert re.search(rf"^\s+{re.escape(name)}\s+{re.escape(first_words)}", help_text, re.M), name
    assert "(default: kd)" in help_text


# -------------------------------------------------------------------------------------- given flags
def test_given_flags_are_the_ones_on_the_command_line_even_at_their_default_value():
    parser = train_student.build_parser()
    argv = ["--path_t", "t.pth", "-r", "0.1", "--epochs", "240", "--amp", "--no-fold_teacher_bn"]
    assert given_flags(parser, argv) == {"path_t", "gamma", "epochs", "amp", "fold_teacher_bn"}


def test_summary_marks_given_default_and_partly_given_rows():
    text = format_summary("title", [("epochs", "240", ("epochs",)), ("lr", "0.05", ("learning_rate",)),
                                    ("schedule", "x0.1", ("lr_decay_epochs", "lr_decay_rate")),
                                    ("run folder", "runs/x", ())],
                          {"epochs", "lr_decay_rate"})
    assert text.splitlines() == ["title", "  epochs      240  (given)", "  lr          0.05  (default)",
                                 "  schedule    x0.1  (given: --lr_decay_rate)", "  run folder  runs/x"]


@pytest.mark.parametrize("name,main_term", [("kd", False), ("crd", True), ("abound", False), ("factor", True)])
def test_loss_row_names_only_the_terms_the_method_trains_with(name, main_term):
    opt = argparse.Namespace(gamma=1.0, alpha=0.9, beta=0.8, kd_T=4.0, model_t="t", path_t="t.pth", model_s="s",
                             init_epochs=30, epochs=240)
    rows = {label: value for label, value, _ in distillation_rows(opt, METHODS[name], main_term, resumed=False)}
    assert rows["loss"].startswith("1 * cls + 0.9 * div + 0.8 * kd" if main_term else "1 * cls + 0.9 * div  (")
    assert ("init stage" in rows) == (METHODS[name].init is not None)
    if METHODS[name].init is not None:
        assert rows["init stage"].startswith("30 epochs") and "240 distillation epochs" in rows["init stage"]


# ------------------------------------------------------------------------------------ elapsed / ETA
class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_clock_estimates_the_epoch_from_its_pace_and_the_run_from_the_mean_epoch(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(loops, "time", fake)
    clock = RunClock(1, 3)
    clock.begin_epoch()
    fake.now = 10.0  # half of epoch 1 in 10 s: 10 s left in it, 20 s per epoch, 2.5 epochs left
    assert clock.progress(1, 0.5) == "elapsed 0:00:10  epoch eta 0:00:10  run eta 0:00:50"
    fake.now = 25.0  # epoch 1 took 25 s with its evaluation
    assert clock.progress(1, 1.0) == "elapsed 0:00:25  run eta 0:00:50"
    clock.begin_epoch()
    fake.now = 30.0  # a quarter of epoch 2 in 5 s: 15 s left in it; 30 s / 1.25 epochs = 24 s per epoch
    assert clock.progress(2, 0.25) == "elapsed 0:00:30  epoch eta 0:00:15  run eta 0:00:42"
    clock.begin_epoch()
    fake.now = 3 * 3600 + 62.0
    assert clock.progress(3, 1.0) == "elapsed 3:01:02"  # the last epoch is done: nothing to estimate


def test_resumed_run_estimates_from_the_epochs_it_ran_itself(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(loops, "time", fake)
    clock = RunClock(11, 20, label="init stage")
    clock.begin_epoch()
    fake.now = 60.0  # a fifth of epoch 11 in 60 s: 300 s per epoch, 9.8 epochs left
    assert clock.progress(11, 0.2) == "elapsed 0:01:00  epoch eta 0:04:00  init stage eta 0:49:00"
    assert clock.progress(11, None) == "elapsed 0:01:00"
    assert format_duration(float("nan")) == "?" and format_duration(90061.4) == "25:01:01"


# ------------------------------------------------------------------------------------- whole runs
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fake_cifar(tmp_path_factory.mktemp("data"), n_train=32, n_test=16)


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_teacher_run_prints_its_settings_and_times(data, tmp_path, capsys, keep_threads):
    result = train_teacher.main(["--model", "resnet8", "--epochs", "2", "--batch_size", "8", "--num_workers", "0",
                                 "--device", "cpu", "--data_folder", str(data / "cifar-100-python"),
                                 "--save_folder", str(tmp_path), "--print_freq", "2", "--threads", "1",
                                 "--lr_decay_epochs", "1"])
    assert torch.get_num_threads() == 1
    out = capsys.readouterr().out
    summary = out.split("\nEpoch [")[0]
    for row in (r"model +resnet8  \(given\)", rf"run folder +{re.escape(result['run_dir'])}$",
                r"data +cifar100 in .*cifar-100-python: 32 training / 16 test images  \(given: --data_folder\)",
                r"batch +8 images, 4 steps per epoch  \(given\)", r"epochs +2  \(given\)",
                r"learning rate +0\.05  \(default\)",
                r"lr schedule +x0\.1 after epochs 1  \(given: --lr_decay_epochs\)",
                r"seed +\d+ \(default: drawn at random", r"threads +1 intra-op", r"precision +fp32  \(default\)"):
        assert re.search(row, summary, re.M), (row, summary)
    assert re.search(r"^Epoch \[1\]\[2/4\] .* elapsed \d+:\d\d:\d\d  epoch eta \d+:\d\d:\d\d  run eta \d+:\d\d:\d\d$",
                     out, re.M), out
    assert re.search(r"^epoch 1/2 .* elapsed \d+:\d\d:\d\d  run eta \d+:\d\d:\d\d$", out, re.M), out


def test_student_run_announces_its_init_stage_and_names_the_loss_terms(data, tmp_path, capsys):
    teacher_dir = tmp_path / "models" / "resnet8_vanilla"
    teacher_dir.mkdir(parents=True)
    torch.save({"model": model_dict["resnet8"](num_classes=100).state_dict(), "epoch": 240, "accuracy": 0.0},
               teacher_dir / "ckpt_epoch_240.pth")
    train_student.main(["--path_t", str(teacher_dir / "ckpt_epoch_240.pth"), "--distill", "factor",
                        "--init_epochs", "1", "--epochs", "1", "--batch_size", "16", "--num_workers", "0",
                        "--device", "cpu", "--seed", "3", "--data_folder", str(data),
                        "--save_folder", str(tmp_path / "students")])
    lines = capsys.readouterr().out.splitlines()
    summary_end = next(i for i, line in enumerate(lines) if line.startswith("teacher resnet8"))
    summary = "\n".join(lines[:summary_end])
    assert re.search(r"^  loss +1 \* cls \+ 0 \* div \+ 200 \* kd  \(cls: cross-entropy, div: KD term.*kd: factor's",
                     summary, re.M), summary
    assert re.search(r"^  init stage +1 epochs of factor's term first, then the 1 distillation epochs  \(given\)$",
                     summary, re.M), summary
    assert re.search(r"^  seed +3  \(given\)$", summary, re.M), summary
    notice = next(i for i, line in enumerate(lines) if line.startswith("init stage of factor: 1 epochs"))
    first_init = next(i for i, line in enumerate(lines) if line.startswith("init epoch 1/1"))
    assert summary_end < notice < first_init
    epoch_line = next(line for line in lines if line.startswith("epoch 1/1"))
    assert re.search(r"terms cls [\d.]+ div [\d.]+ kd [\d.]+$", epoch_line), epoch_line
