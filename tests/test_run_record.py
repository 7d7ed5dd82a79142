"""run.json: the training scripts' record of what a run was, and collect_results reading it back."""
from __future__ import annotations

import importlib.util
import json
import sys

from conftest import ROOT

import train_student
import train_teacher
from kdzoo.helper.options import parse_training_args, resolve_training_defaults
from kdzoo.helper.run_record import RUN_RECORD, run_settings, write_run_record


def _collect_results():
    spec = importlib.util.spec_from_file_location("collect_results", ROOT / "scripts" / "collect_results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("collect_results", module)
    spec.loader.exec_module(module)
    return module


def student_options(*args: str):
    parser = train_student.build_parser()
    opt = parse_training_args(parser, ["--path_t", "save/models/resnet32x4_vanilla/ckpt_epoch_240.pth",
                                       "--model_s", "resnet8x4", "--data_folder", "/somewhere", *args])
    return train_student.resolve_options(parser, opt, require_teacher_file=False)


def test_settings_hold_what_makes_runs_comparable():
    opt = student_options("--train_subset", "1000", "--epochs", "3", "--amp", "--trial", "4", "--seed", "9")
    settings = run_settings(vars(opt), world_size=2)
    assert settings["train_subset"] == 1000 and settings["test_subset"] == "full"
    assert (settings["epochs"], settings["batch_size"], settings["learning_rate"]) == (3, 64, 0.05)
    assert (settings["lr_decay_epochs"], settings["lr_decay_rate"], settings["weight_decay"]) == (
        [150, 180, 210], 0.1, 5e-4)
    assert (settings["amp"], settings["world_size"]) == (True, 2)
    assert not {"channels_last", "compile", "threads"} & settings.keys()  # layout and speed flags: one setting
    assert (settings["distill"], settings["model_s"], settings["model_t"]) == ("kd", "resnet8x4", "resnet32x4")
    assert (settings["gamma"], settings["alpha"], settings["beta"], settings["kd_T"]) == (0.1, 0.9, 0.0, 4.0)
    assert settings["dataset"] == "cifar100"
    # what only locates or paces a run is not part of it
    for key in ("data_folder", "save_folder", "seed", "trial", "path_t", "num_workers", "print_freq", "resume"):
        assert key not in settings
    json.dumps(settings)  # plain JSON

    teacher = train_teacher.build_parser()
    topt = resolve_training_defaults(parse_training_args(teacher, ["--model", "ShuffleV1"]), "ShuffleV1")
    tsettings = run_settings(vars(topt), world_size=1)
    assert tsettings["model"] == "ShuffleV1" and tsettings["learning_rate"] == 0.01


def test_written_once_atomically_and_kept_on_resume(tmp_path):
    opt = vars(student_options("--trial", "4"))
    path = write_run_record(tmp_path / "run", opt, seed=9, world_size=1, resumed=False)
    record = json.loads(path.read_text())
    assert path.name == RUN_RECORD and (record["seed"], record["trial"], record["format"]) == (9, "4", 1)
    assert record["teacher_path"].endswith("resnet32x4_vanilla/ckpt_epoch_240.pth")
    assert sorted(p.name for p in path.parent.iterdir()) == [RUN_RECORD]  # no temporary file left
    # a resumed run keeps what its start recorded; a new start replaces a leftover record
    write_run_record(tmp_path / "run", dict(opt, epochs=5), seed=1, world_size=1, resumed=True)
    assert json.loads(path.read_text()) == record
    write_run_record(tmp_path / "run", dict(opt, epochs=5), seed=1, world_size=1, resumed=False)
    assert json.loads(path.read_text())["settings"]["epochs"] == 5


def test_collect_results_reads_the_record(tmp_path):
    cr = _collect_results()
    opt = student_options("--train_subset", "1000", "--epochs", "3", "--amp")
    run_dir = tmp_path / "students" / train_student.run_name(opt)
    write_run_record(run_dir, vars(opt), seed=0, world_size=1, resumed=False)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "test_acc": 10.0 * e}) + "\n"
                                                   for e in (1, 2, 3)))
    text = cr.main(["--root", str(tmp_path / "students"), "--vanilla_root", "", "--metric", "last"])
    assert "| resnet32x4 → resnet8x4 | KD | train 1000, epochs 3, amp | 30.00±0.00 (1) |" in text
