"""scripts/experiment_runs.py (the shared parts of the experiment scripts) and the three transfer
experiments (ensemble, cross-modal, privileged): pure parts with fake runs, and tiny end-to-end runs
on the real CIFAR-100 (slow)."""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

runs = load_script("experiment_runs")
ensemble = load_script("ensemble_experiment")
crossmodal = load_script("crossmodal_experiment")
privileged = load_script("privileged_experiment")


# ---- pure parts -------------------------------------------------------------------------------

def test_mean_std_cells():
    # mean 2, sample std sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1
    assert runs.mean_std([1.0, 2.0, 3.0]) == "2.00±1.00 (3)"
    # sample std of 10, 20: sqrt(50) = 7.0711
    assert runs.mean_std([10.0, 20.0]) == "15.00±7.07 (2)"
    assert runs.mean_std([42.5]) == "42.50±0.00 (1)"
    assert runs.mean_std([]) == "–"


def test_final_json_is_the_last_object_with_run_dir():
    log = "\n".join([
        "train_student.py: S:resnet8_T:resnet14_cifar100_kd_r:0.1_a:0.9_b:0.0_1",
        '{"not": "the result"}',
        '{"best_acc": 1.0, "last_acc": 0.5, "epochs": 1, "run_dir": "/a"}',
        "epoch 2/2  lr 0.005 ...",
        '{"best_acc": 3.5, "last_acc": 2.25, "epochs": 2, "run_dir": "/b"}',
        "",
    ])
    assert runs.parse_final_json(log) == {"best_acc": 3.5, "last_acc": 2.25, "epochs": 2, "run_dir": "/b"}
    with pytest.raises(ValueError):
        runs.parse_final_json('Traceback\n{"best_acc": 1.0}\n{broken json with run_dir}\n')


def test_metrics_last_row(tmp_path):
    rows = [{"epoch": 1, "test_acc": 10.5}, {"epoch": 2, "test_acc": 12.75}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert runs.read_metrics(tmp_path) == rows
    assert runs.last_test_acc(tmp_path) == 12.75


def test_refuses_an_out_folder_that_holds_anything(tmp_path):
    fresh = tmp_path / "a" / "b"
    assert runs.prepare_out(fresh) == fresh.resolve() and fresh.is_dir()
    assert runs.prepare_out(fresh) == fresh.resolve()  # empty: accepted
    (fresh / "models").mkdir()
    with pytest.raises(SystemExit, match="already holds runs"):
        runs.prepare_out(fresh)
    for script in (ensemble, crossmodal, privileged):
        with pytest.raises(SystemExit, match="already holds runs"):
            script.main(["--out", str(fresh), "--no_plots"])


def test_markdown_table():
    text = runs.markdown_table(["A", "B"], [["x", "1"], ["y", "2"]], title="T")
    assert text.splitlines() == ["**T**", "", "| A | B |", "|---|---|", "| x | 1 |", "| y | 2 |"]


def test_ensemble_table_from_fake_runs():
    acc = {"KD": {1: [10.0, 20.0], 2: [30.0], 4: [31.0, 33.0]}, "CRD": {1: [11.0], 4: [40.0]}}
    record_1 = {"teachers": [{"path": "p1", "model": "resnet14", "input": "rgb", "acc": 50.0, "acc_top5": 80.0}],
                "ensemble": None}
    record_2 = dict(record_1, ensemble={"acc": 55.5, "acc_top5": 85.0})
    ens = {1: ensemble.ensemble_accuracy(record_1), 2: ensemble.ensemble_accuracy(record_2), 4: 57.25}
    assert ens[1] == 50.0 and ens[2] == 55.5
    table = ensemble.build_table(acc, [5.0, 7.0], [1, 2, 4], ens, [50.0, 49.0, 48.0, 47.5], "t")
    lines = table.splitlines()
    assert "| Method | 1 teacher | 2 teachers | 4 teachers |" in lines
    assert "| KD | 15.00±7.07 (2) | 30.00±0.00 (1) | 32.00±1.41 (2) |" in lines
    assert "| CRD | 11.00±0.00 (1) | – | 40.00±0.00 (1) |" in lines
    assert f"| {ensemble.VANILLA} | 6.00±1.41 (2) | 6.00±1.41 (2) | 6.00±1.41 (2) |" in lines
    assert "| Teacher ensemble | 50.00 | 55.50 | 57.25 |" in lines
    assert "| Teachers (each) | 50.00 | 50.00 / 49.00 | 50.00 / 49.00 / 48.00 / 47.50 |" in lines


def test_crossmodal_table_sorts_students_and_keeps_baselines_last():
    acc = {"CRD": [30.0, 32.0], "PKT": [35.0], crossmodal.RANDOM: [5.0], crossmodal.SUPERVISED: [40.0],
           crossmodal.TEACHER: [45.0]}
    rows = [line for line in crossmodal.build_table(acc, "t").splitlines() if line.startswith("| ")][1:]
    assert rows == ["| PKT (label-free) | 35.00±0.00 (1) |", "| CRD (label-free) | 31.00±1.41 (2) |",
                    f"| {crossmodal.RANDOM} | 5.00±0.00 (1) |", f"| {crossmodal.SUPERVISED} | 40.00±0.00 (1) |",
                    f"| {crossmodal.TEACHER} | 45.00±0.00 (1) |"]


def test_privileged_table_and_view_flag():
    table = privileged.build_table({"Student": [20.0, 22.0], "KD": [25.0]}, 60.5, "t", "lowres:8")
    assert "| Teacher (rgb, its own view) | 60.50 |" in table
    assert "| Student | 21.00±1.41 (2) |" in table and "| KD | 25.00±0.00 (1) |" in table
    parser = privileged.build_parser()
    assert parser.parse_args(["--student_input", "gray"]).student_input == "gray"
    for bad in ("ab", "lowres:", "lowres:0", "rgb"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--student_input", bad])


def test_cpu_defaults_and_nce_k_help():
    for script in (ensemble, crossmodal, privileged):
        args = script.build_parser().parse_args([])
        assert (args.nce_k, args.jobs, args.device) == (4096, 2, "cpu")
        help_text = script.build_parser().format_help()
        assert "16384" in help_text and "4096" in help_text


class FakeRunner:
    """Stands in for run_command: records the order and thread counts, writes a final JSON line."""

    def __init__(self, fail: str | None = None):
        self.calls: list[tuple[str, int]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, cmd, log: Path, threads: int) -> float:
        name = cmd[0]
        with self.lock:
            self.calls.append((name, threads))
        if name == self.fail:
            raise RuntimeError(f"{name} failed")
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"noise\n{json.dumps({'best_acc': 1, 'last_acc': 1, 'epochs': 1, 'run_dir': '/runs/' + name})}\n")
        return 0.0


def test_job_pool_respects_needs_threads_and_passes_results(tmp_path):
    fake = FakeRunner()
    seen = {}

    def student(done):
        seen["teacher_dir"] = str(done["teacher"].run_dir)
        return ["student"]

    jobs = [runs.Job("teacher", ["teacher"], wide=True), runs.Job("student", student, needs=("teacher",)),
            runs.Job("other", ["other"]),
            runs.Job("made", None, needs=("other",), action=lambda done: {"run_dir": "/made"})]
    done = runs.run_jobs(jobs, workers=2, logs=tmp_path, cores=2, runner=fake)
    # The wide teacher runs alone with both threads, before everything else.
    assert fake.calls[0] == ("teacher", 2)
    assert sorted(fake.calls[1:]) == [("other", 1), ("student", 1)]
    assert seen["teacher_dir"] == "/runs/teacher"
    assert done["student"].run_dir == Path("/runs/student") and done["made"].final == {"run_dir": "/made"}
    assert (tmp_path / "student.log").exists()


def test_job_pool_raises_the_failure_and_starts_no_dependent(tmp_path):
    fake = FakeRunner(fail="teacher")
    jobs = [runs.Job("teacher", ["teacher"]), runs.Job("student", ["student"], needs=("teacher",))]
    with pytest.raises(RuntimeError, match="teacher failed"):
        runs.run_jobs(jobs, workers=2, logs=tmp_path, cores=2, runner=fake)
    assert [c[0] for c in fake.calls] == ["teacher"]
    with pytest.raises(ValueError):
        runs.run_jobs([runs.Job("a", ["a"], needs=("missing",))], workers=1, logs=tmp_path, runner=fake)


def test_ensemble_design_commands(tmp_path):
    args = ensemble.build_parser().parse_args(["--seeds", "0,1", "--data_folder", str(tmp_path)])
    args.methods = list(ensemble.METHODS)
    jobs = {j.name: j for j in ensemble.design(args, tmp_path)}
    # 4 teachers + 3 methods x 3 teacher counts x 2 seeds + 2 vanilla students
    assert len(jobs) == 4 + 18 + 2
    fake_done = {f"teacher{i}": runs.JobResult(f"teacher{i}", 0.0, {"run_dir": f"/t{i}"}) for i in range(1, 5)}
    cmd = jobs["CRD+KD_T4_seed1"].command(fake_done)
    assert [cmd[i + 1] for i, c in enumerate(cmd) if c == "--path_t"] == [f"/t{i}/resnet14_last.pth" for i in range(1, 5)]
    assert cmd[cmd.index("--train_subset") + 1] == "15000" and cmd[cmd.index("--nce_k") + 1] == "4096"
    assert " ".join(cmd).count("-r 1 -a 1 -b 0.8") == 1
    assert jobs["KD_T2_seed0"].needs == ("teacher1", "teacher2")
    teacher = jobs["teacher3"].command
    assert teacher[teacher.index("--seed") + 1] == "2" and teacher[teacher.index("--trial") + 1] == "3"
    assert teacher[teacher.index("--train_subset") + 1] == "25000"
    # --train_subset replaces every stage's size
    args.train_subset = 256
    jobs = {j.name: j for j in ensemble.design(args, tmp_path)}
    assert jobs["teacher1"].command[jobs["teacher1"].command.index("--train_subset") + 1] == "256"


def test_crossmodal_design_commands(tmp_path):
    args = crossmodal.build_parser().parse_args(["--data_folder", str(tmp_path)])
    args.methods = list(crossmodal.BETAS)
    jobs, probes = crossmodal.design(args, tmp_path)
    by_name = {j.name: j for j in jobs}
    # teacher, 8 students, supervised, random, and a probe of each student, both baselines and the teacher
    assert len(jobs) == 1 + 8 + 2 + 8 + 3 and len(probes) == 11
    done = {"teacher": runs.JobResult("teacher", 0.0, {"run_dir": "/T"}),
            "pkt_seed0": runs.JobResult("pkt_seed0", 0.0, {"run_dir": "/S"})}
    cmd = by_name["pkt_seed0"].command(done)
    assert " ".join(cmd).count("-r 0 -a 0 -b 30000") == 1
    assert cmd[cmd.index("--input_t") + 1] == "L" and cmd[cmd.index("--input_s") + 1] == "ab"
    probe = by_name["probe_pkt_seed0"].command(done)
    assert probe[probe.index("--path_s") + 1] == "/S/resnet8_last.pth" and probe[probe.index("--input") + 1] == "ab"
    assert "--train_subset" not in probe and "--test_subset" not in probe  # every image by default
    teacher_probe = by_name["probe_teacher"].command(done)
    assert teacher_probe[teacher_probe.index("--input") + 1] == "L"


# ---- tiny end-to-end runs (need the lead's ensemble / view mechanisms) --------------------------

TINY = ["--train_subset", "256", "--test_subset", "100", "--nce_k", "64", "--seeds", "0"]


def run_script(name: str, out: Path, data: Path, *flags: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / name), "--data_folder", str(data), "--out", str(out),
                           *TINY, *flags], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def last_acc(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows[-1]["test_acc"]


def row_of(table: str, label: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {label} |"))


def check_outputs(out: Path, done: subprocess.CompletedProcess, figure: str) -> tuple[str, dict]:
    table = (out / "results.md").read_text()
    assert table.strip() in done.stdout and "wall-clock" in done.stdout
    assert (out / figure).read_bytes()[:8] == PNG_MAGIC
    summary = json.loads((out / "summary.json").read_text())
    assert summary["table"].strip() == table.strip() and summary["seconds"]["total"] > 0
    return table, summary


@pytest.mark.slow
def test_tiny_ensemble_experiment(shared_data, tmp_path):
    out = tmp_path / "ens"
    ones = ["--teacher_epochs", "1", "--teacher_decay", "1", "--student_epochs", "1", "--student_decay", "1"]
    done = run_script("ensemble_experiment.py", out, shared_data, *ones)
    models, students = out / "models", out / "student_model"
    assert sorted(p.name for p in models.iterdir()) == [*(f"resnet14_vanilla_trial_{t}" for t in range(1, 5)),
                                                         "resnet8_vanilla_trial_1"]
    teachers = [last_acc(models / f"resnet14_vanilla_trial_{t}") for t in range(1, 5)]
    table, summary = check_outputs(out, done, "ensemble.png")
    for label, pattern in (("KD", "kd_r:0.1_a:0.9_b:0.0"), ("CRD", "crd_r:1.0_a:0.0_b:0.8"),
                           ("CRD+KD", "crd_r:1.0_a:1.0_b:0.8")):
        cells = []
        for k in (1, 2, 4):
            teacher_part = "+".join(["resnet14"] * k)
            hits = list(students.glob(f"S:resnet8_T:{teacher_part}_cifar100_{pattern}_1"))
            assert len(hits) == 1, (label, k, sorted(p.name for p in students.iterdir()))
            cells.append(f"{last_acc(hits[0]):.2f}±0.00 (1)")
            record = json.loads((hits[0] / "teachers.json").read_text())
            assert [t["acc"] for t in record["teachers"]] == pytest.approx(teachers[:k], abs=0.01)
            assert (record["ensemble"] is None) == (k == 1)
        assert row_of(table, label) == f"| {label} | " + " | ".join(cells) + " |"
    vanilla = f"{last_acc(models / 'resnet8_vanilla_trial_1'):.2f}±0.00 (1)"
    assert row_of(table, ensemble.VANILLA).count(vanilla) == 3
    assert row_of(table, "Teachers (each)").endswith(" / ".join(f"{a:.2f}" for a in teachers) + " |")
    assert len(summary["runs"]) == 4 + 9 + 1


@pytest.mark.slow
def test_tiny_crossmodal_experiment(shared_data, tmp_path):
    out = tmp_path / "cross"
    methods = "crd,hint,pkt,wcord"
    ones = ["--teacher_epochs", "1", "--teacher_decay", "1", "--student_epochs", "1", "--student_decay", "1",
            "--probe_epochs", "1", "--probe_decay", "1", "--methods", methods]
    done = run_script("crossmodal_experiment.py", out, shared_data, *ones)
    assert sorted(p.name for p in (out / "models").iterdir()) == ["resnet14_vanilla_in:L", "resnet8_vanilla_in:ab_trial_1"]
    students = sorted((out / "student_model").iterdir())
    assert len(students) == 4 and all("_r:0.0_a:0.0_" in p.name and "_in:L-ab" in p.name for p in students)
    random_ckpt = out / "baselines" / "resnet8_random_in:ab_seed0" / "resnet8_last.pth"
    assert random_ckpt.exists()
    table, summary = check_outputs(out, done, "crossmodal.png")
    # Every network has one probe; each probe's table cell is its metrics' last test accuracy.
    probes = {r["network"]: Path(r["run_dir"]) for r in summary["runs"] if "network" in r}
    assert sorted(probes) == sorted([crossmodal.LABELS[m] for m in methods.split(",")]
                                    + [crossmodal.RANDOM, crossmodal.SUPERVISED, crossmodal.TEACHER])
    transfer = out / "transfer"
    for network, run_dir in probes.items():
        assert transfer in run_dir.parents
        label = f"{network} (label-free)" if network in crossmodal.LABELS.values() else network
        assert row_of(table, label) == f"| {label} | {last_acc(run_dir):.2f}±0.00 (1) |"
    assert probes[crossmodal.TEACHER].parent.name == "resnet14_vanilla_in:L"


@pytest.mark.slow
def test_tiny_privileged_experiment(shared_data, tmp_path):
    out = tmp_path / "priv"
    ones = ["--teacher_epochs", "1", "--teacher_decay", "1", "--student_epochs", "1", "--student_decay", "1"]
    done = run_script("privileged_experiment.py", out, shared_data, *ones)
    models, students = out / "models", out / "student_model"
    assert sorted(p.name for p in models.iterdir()) == ["resnet14_vanilla", "resnet8_vanilla_in:lowres:8_trial_1"]
    table, summary = check_outputs(out, done, "privileged.png")
    assert row_of(table, "Teacher (rgb, its own view)").endswith(f"| {last_acc(models / 'resnet14_vanilla'):.2f} |")
    expected = {"Student": models / "resnet8_vanilla_in:lowres:8_trial_1"}
    for label, pattern in (("KD", "kd_r:0.1_a:0.9_b:0.0"), ("CRD+KD", "crd_r:1.0_a:1.0_b:0.8"),
                           ("WCoRD+KD", "wcord_r:1.0_a:1.0_b:0.8")):
        hits = list(students.glob(f"S:resnet8_T:resnet14_cifar100_{pattern}_in:rgb-lowres:8_1"))
        assert len(hits) == 1, (label, sorted(p.name for p in students.iterdir()))
        expected[label] = hits[0]
    for label, run_dir in expected.items():
        assert row_of(table, label) == f"| {label} | {last_acc(run_dir):.2f}±0.00 (1) |"
    assert summary["teacher"] == last_acc(models / "resnet14_vanilla")
    assert not math.isnan(statistics.mean(summary["accuracies"]["KD"]))


def test_figures_from_fake_runs(tmp_path):
    pytest.importorskip("matplotlib")
    ensemble.plot({"KD": {1: [10.0, 12.0], 2: [14.0], 4: [15.0]}, "CRD": {1: [11.0], 4: [16.0]}}, [8.0], [1, 2, 4],
                  tmp_path / "e.png", "t")
    crossmodal.plot({"CRD": [30.0, 32.0], "PKT": [35.0], crossmodal.RANDOM: [5.0], crossmodal.SUPERVISED: [40.0],
                     crossmodal.TEACHER: [45.0]}, tmp_path / "c.png", "t")
    privileged.plot({"Student": [20.0, 22.0], "KD": [25.0]}, 60.0, tmp_path / "p.png", "t")
    for name in ("e.png", "c.png", "p.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC, name
