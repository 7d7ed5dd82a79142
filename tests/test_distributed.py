"""Two gloo processes on the CPU, launched the way torchrun launches them (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the environment; ``init_distributed`` joins through env://).

The processes are started directly (one subprocess per rank, each in its own session) rather than
through the torchrun agent: fewer moving parts on a 2-core machine, separate stdout per rank, and
every child is killed (by its process group) when a test times out.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fakedata import read_fake_split, write_cifar_split, write_fake_cifar

from ddp_launch import ROOT, WORLD, assert_all_ok, launch

REF_MEAN = (0.5071, 0.4867, 0.4408)
REF_STD = (0.2675, 0.2565, 0.2761)


def json_lines(text: str) -> list[dict]:
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                found.append(json.loads(line))
    return found


def independent_eval(weights: dict, data: Path, n: int) -> dict:
    """Accuracy and loss of resnet8 ``weights`` on the first ``n`` test images, in one process,
    without the project's data pipeline or metric code."""
    from kdzoo.models import model_dict

    raw, labels = read_fake_split(data, train=False)
    x = torch.from_numpy(raw[:n].copy()).view(-1, 3, 32, 32).float() / 255.0
    x = (x - torch.tensor(REF_MEAN).view(1, 3, 1, 1)) / torch.tensor(REF_STD).view(1, 3, 1, 1)
    y = torch.tensor(labels[:n])
    model = model_dict["resnet8"](num_classes=100)
    model.load_state_dict(weights, strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(x).double()
    rank = (logits.argsort(dim=1, descending=True) == y.view(-1, 1)).double().argmax(dim=1)
    return {"acc": 100.0 * (rank < 1).double().mean().item(), "acc_top5": 100.0 * (rank < 5).double().mean().item(),
            "loss": F.cross_entropy(logits, y).item()}


# ---------------------------------------------------------------------- train_teacher under 2 processes

N_TRAIN, N_TEST = 32, 15  # 15 test images: the ranks get 8 and 7, so padding would count one twice


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> Path:
    root = write_fake_cifar(tmp_path_factory.mktemp("ddp_data"), n_train=48, n_test=32, seed=1,
                            labels_train=[0 if i % 3 else 1 for i in range(48)])
    # Test labels: a third are class 0 (which the model learns to answer), so accuracy is a fraction
    # that a double-counted or dropped image would change.
    raw, _ = read_fake_split(root, train=False)
    write_cifar_split(root / "cifar-100-python" / "test", raw, [0 if i % 3 == 0 else 2 + i for i in range(32)])
    return root


def test_train_teacher_on_two_processes(ddp_data, tmp_path):
    save = tmp_path / "save"
    cmd = [sys.executable, str(ROOT / "train_teacher.py"), "--model", "resnet8", "--device", "cpu",
           "--num_workers", "0", "--data_folder", str(ddp_data), "--save_folder", str(save),
           "--epochs", "2", "--batch_size", "16", "--train_subset", str(N_TRAIN), "--test_subset", str(N_TEST),
           "--seed", "3", "--save_freq", "1", "--print_freq", "1000"]
    results = launch(cmd, tmp_path)
    assert_all_ok(results)

    # Exactly one result line, from rank 0, and it is rank 0's last line.
    assert json_lines(results[1]["out"]) == []
    finals = json_lines(results[0]["out"])
    assert len(finals) == 1
    assert json.loads(results[0]["out"].strip().splitlines()[-1]) == finals[0]
    final = finals[0]

    run_dir = save / "resnet8_vanilla"
    assert Path(final["run_dir"]).resolve() == run_dir.resolve()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["epoch"] for r in rows] == [1, 2], "metrics.jsonl must get one row per epoch (rank 0 only)"
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert final["last_acc"] == rows[-1]["test_acc"]
    assert final["best_acc"] == max(r["test_acc"] for r in rows)

    # The evaluation reduced over the ranks equals a one-process evaluation of the saved weights:
    # every test image counted exactly once, with the weights that were saved.
    for epoch in (1, 2):
        state = torch.load(run_dir / f"ckpt_epoch_{epoch}.pth", map_location="cpu", weights_only=True)
        assert state["epoch"] == epoch and state["opt"]["batch_size"] == 16
        ours = independent_eval(state["model"], ddp_data, N_TEST)
        row = rows[epoch - 1]
        assert row["test_acc"] == pytest.approx(ours["acc"], abs=1e-6), f"epoch {epoch} top-1"
        assert row["test_acc_top5"] == pytest.approx(ours["acc_top5"], abs=1e-6), f"epoch {epoch} top-5"
        assert row["test_loss"] == pytest.approx(ours["loss"], rel=1e-5, abs=1e-6), (
            f"epoch {epoch}: test loss reduced over ranks differs from a one-process evaluation of the saved "
            "weights (do the ranks evaluate with different batch-norm running statistics?)")


# ------------------------------------------------------ gradient sync: DDP(2 x B) == one process (2B)

class TinyNet(nn.Module):
    """No batch norm, so a DDP step is mathematically one step on the whole global batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


EQ_EPOCHS, EQ_BATCH, EQ_SEED = 2, 8, 5


def train_tiny(data: str | Path, run_dir: str | Path, env, batch_size: int = EQ_BATCH) -> dict:
    """Train TinyNet with helper.trainer.fit on the fake data; ``batch_size`` is the global batch."""
    from kdzoo.dataset import build_datasets, build_loaders
    from kdzoo.dataset.transforms import Normalize
    from kdzoo.helper.trainer import ClassificationTask, Schedule, fit

    train_set, test_set = build_datasets("cifar100", data, train_limit=N_TRAIN, test_limit=N_TEST, uint8=True)
    train_loader, test_loader, spec = build_loaders(train_set, test_set, batch_size, 0, seed=EQ_SEED,
                                                    rank=env.rank, world_size=env.world_size)
    torch.manual_seed(0)  # the same initial weights in every layout
    model = TinyNet()
    schedule = Schedule(EQ_EPOCHS, 0.1, [1], lr_decay_rate=0.5)
    return fit(ClassificationTask(model), "tiny", schedule, env, train_loader, test_loader,
               Normalize(spec.mean, spec.std), run_dir, EQ_SEED, {"batch_size": batch_size},
               save_freq=1000, print_freq=1000)


def _child_train_tiny(data: str, run_dir: str) -> None:
    """Entry point of each DDP rank (run with ``python -c``)."""
    torch.set_num_threads(1)
    from kdzoo.helper.distributed import cleanup, init_distributed

    env = init_distributed("cpu")
    assert env.world_size == WORLD and env.distributed
    try:
        train_tiny(data, run_dir, env)
    finally:
        cleanup()


def _load_tiny(run_dir: Path) -> tuple[dict, list[dict]]:
    state = torch.load(run_dir / "tiny_last.pth", map_location="cpu", weights_only=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return state["model"], rows


def test_ddp_gradient_sync_matches_one_process(ddp_data, tmp_path):
    from kdzoo.helper.distributed import DistEnv

    ddp_dir = tmp_path / "ddp"
    code = f"import test_distributed as t; t._child_train_tiny({str(ddp_data)!r}, {str(ddp_dir)!r})"
    results = launch([sys.executable, "-c", code], tmp_path)
    assert_all_ok(results)

    single_env = DistEnv(0, 1, 0, torch.device("cpu"))
    with contextlib.redirect_stdout(io.StringIO()):
        train_tiny(ddp_data, tmp_path / "single", single_env)
        train_tiny(ddp_data, tmp_path / "half_batch", single_env, batch_size=EQ_BATCH // 2)

    ddp_w, ddp_rows = _load_tiny(ddp_dir)
    one_w, one_rows = _load_tiny(tmp_path / "single")
    half_w, _ = _load_tiny(tmp_path / "half_batch")
    torch.manual_seed(0)
    init = TinyNet().state_dict()

    assert ddp_w.keys() == one_w.keys()
    for key in one_w:
        assert not torch.allclose(one_w[key], init[key], atol=1e-3), f"{key} barely trained: weak comparison"
        assert torch.allclose(ddp_w[key], one_w[key], rtol=0, atol=1e-5), (
            f"{key}: DDP differs from one process by {float((ddp_w[key] - one_w[key]).abs().max()):.3g}")
    # Control: the comparison does tell layouts apart (per-rank batches without the sync would).
    assert any(not torch.allclose(half_w[k], one_w[k], rtol=0, atol=1e-5) for k in one_w)

    # Training metrics are averaged over every sample of every rank, so they match too.
    assert [r["epoch"] for r in ddp_rows] == [r["epoch"] for r in one_rows] == list(range(1, EQ_EPOCHS + 1))
    for d, o in zip(ddp_rows, one_rows):
        assert d["lr"] == pytest.approx(o["lr"])
        for key in ("train_loss", "train_acc", "test_acc", "test_acc_top5", "test_loss"):
            assert d[key] == pytest.approx(o[key], rel=1e-5, abs=1e-5), key
        assert math.isfinite(d["train_loss"])


# ------------------------------------------------------------ a non-finite loss seen by one rank only

def _child_nan_on_rank0(data: str, save: str, bad_step: int, print_freq: int) -> None:
    """train_teacher.main where rank 0's loss is NaN at ``bad_step`` of epoch 1 (rank 1's stays finite
    until the averaged NaN gradients reach its weights one step later)."""
    torch.set_num_threads(1)
    import train_teacher
    from kdzoo.helper.loops import StepOutput
    from kdzoo.helper.trainer import ClassificationTask

    rank = int(os.environ["RANK"])

    class NaNOnRank0(ClassificationTask):
        calls = 0

        def forward(self, images, targets, *extras):
            out = super().forward(images, targets, *extras)
            call, NaNOnRank0.calls = NaNOnRank0.calls, NaNOnRank0.calls + 1
            if rank == 0 and call == bad_step:
                out = StepOutput(out.loss * float("nan"), out.logits, out.terms)
            return out

    train_teacher.ClassificationTask = NaNOnRank0
    train_teacher.main(["--model", "resnet8", "--device", "cpu", "--num_workers", "0", "--data_folder", data,
                        "--save_folder", save, "--epochs", "2", "--batch_size", "8", "--train_subset", "32",
                        "--test_subset", "8", "--seed", "1", "--print_freq", str(print_freq)])


@pytest.mark.parametrize("bad_step, print_freq", [
    pytest.param(1, 2, id="checked-at-a-progress-line"),
    pytest.param(1, 1000, id="checked-at-epoch-end", marks=pytest.mark.slow),
])
def test_non_finite_loss_on_one_rank_stops_every_rank(bad_step, print_freq, ddp_data, tmp_path):
    """Every rank must stop cleanly (exit code 1, TrainingStopped's message, no traceback) and rank 0
    must name the first bad step, whether the NaN is noticed at the end of the epoch or at a progress
    line (print_freq). A rank that goes on alone dies in (gloo) or hangs on (NCCL) the next
    collective, which the stopped rank never joins."""
    code = (f"import test_distributed as t; t._child_nan_on_rank0({str(ddp_data)!r}, {str(tmp_path / 'save')!r}, "
            f"{bad_step}, {print_freq})")
    results = launch([sys.executable, "-c", code], tmp_path, timeout=90)
    for rank, res in enumerate(results):
        assert res["code"] == 1, f"rank {rank} exited with {res['code']}:\n{res['err'][-1500:]}"
        assert "Traceback" not in res["err"], f"rank {rank} did not stop cleanly:\n{res['err'][-1500:]}"
        assert "non-finite" in res["err"], f"rank {rank}:\n{res['err'][-1500:]}"
    assert "epoch 1, step 1" in results[0]["err"]
    assert not json_lines(results[0]["out"]) and not json_lines(results[1]["out"])


@pytest.mark.slow
def test_sync_bn_on_cpu_is_refused_or_works(ddp_data, tmp_path):
    """--sync_bn under two CPU processes: torch's SyncBatchNorm only runs on accelerators, so the
    run must either train (exit 0) or be refused up front as a usage error naming --sync_bn (exit 2)
    on every rank -- not crash with a traceback at the first forward pass."""
    cmd = [sys.executable, str(ROOT / "train_teacher.py"), "--model", "resnet8", "--device", "cpu",
           "--num_workers", "0", "--data_folder", str(ddp_data), "--save_folder", str(tmp_path / "save"),
           "--epochs", "1", "--batch_size", "8", "--train_subset", "16", "--test_subset", "8", "--seed", "0",
           "--sync_bn"]
    results = launch(cmd, tmp_path)
    codes = [r["code"] for r in results]
    for rank, res in enumerate(results):
        assert "Traceback" not in res["err"], f"rank {rank} crashed:\n{res['err'][-1500:]}"
    assert codes in ([0, 0], [2, 2]), codes
    if codes == [2, 2]:
        assert all("--sync_bn" in r["err"] for r in results)


@pytest.mark.slow
def test_label_free_student_of_two_teachers_on_other_views_on_two_processes(ddp_data, tmp_path):
    """Cross-modal and ensemble mechanisms under DistributedDataParallel: two teachers (rgb and L)
    distilled label-free (-r 0 -a 0: the classifier is frozen, so DDP must not wait for its
    gradients) into an ab student; every rank finishes and the ranks' students stay identical."""
    models = tmp_path / "models"
    common = ["--device", "cpu", "--num_workers", "0", "--data_folder", str(ddp_data), "--epochs", "1",
              "--batch_size", "16", "--train_subset", str(N_TRAIN), "--test_subset", str(N_TEST), "--seed", "3",
              "--print_freq", "1000"]
    import train_teacher

    for view in ("rgb", "L"):
        torch.manual_seed(0)
        train_teacher.main(["--model", "resnet8", "--input", view, "--save_folder", str(models), *common])
    teachers = [models / "resnet8_vanilla" / "resnet8_last.pth", models / "resnet8_vanilla_in:L" / "resnet8_last.pth"]
    cmd = [sys.executable, str(ROOT / "train_student.py"), "--model_s", "resnet8", "--distill", "crd",
           "-r", "0", "-a", "0", "--nce_k", "8", "--input_s", "ab", "--save_folder", str(tmp_path / "students"),
           *[a for path in teachers for a in ("--path_t", str(path))], "--input_t", "rgb", "--input_t", "L", *common]
    results = launch(cmd, tmp_path)
    assert_all_ok(results)
    run_dir = Path(json_lines(results[0]["out"])[-1]["run_dir"])
    assert run_dir.name == "S:resnet8_T:resnet8+resnet8_cifar100_crd_r:0.0_a:0.0_b:0.8_in:rgb+L-ab_1"
    state = torch.load(run_dir / "resnet8_last.pth", map_location="cpu", weights_only=True)
    assert state["input"] == "ab" and "term.1.loss.embed_t.linear.weight" in state["task"]
    assert "classifier" in results[0]["out"] and "not trained" in results[0]["out"]
