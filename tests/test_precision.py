"""--amp and --channels_last: every method trains under bfloat16 autocast with NHWC tensors on CPU."""
import argparse
import warnings

import pytest
import torch

import train_student
import train_teacher
from kdzoo.distiller_zoo.registry import METHODS
from fakedata import write_fake_cifar
from kdzoo.helper.distill import DistillTask, build_term
from kdzoo.helper import precision as precision_module
from kdzoo.helper.precision import Precision
from kdzoo.models import model_dict

N_DATA, K, BATCH = 64, 16, 8
CPU = torch.device("cpu")


def method_options(name: str) -> argparse.Namespace:
    parser = train_student.build_parser()
    flags = ["--path_t", "unused.pth", "--model_t", "resnet8", "--model_s", "resnet8", "--distill", name,
             "--nce_k", str(K), "--feat_dim", "16"]
    return train_student.resolve_options(parser, parser.parse_args(flags), require_teacher_file=False)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_learns_a_fixed_batch_under_amp_and_channels_last(name):
    torch.manual_seed(0)
    precision = Precision(CPU, amp=True, channels_last=True)
    opt = method_options(name)
    method = METHODS[name]
    teacher, student = model_dict["resnet8"](num_classes=10), model_dict["resnet8"](num_classes=10)
    images = torch.randn(BATCH, 3, 32, 32)
    targets = torch.arange(BATCH) % 10
    term = build_term(method, student, teacher, images[:2], opt, N_DATA)
    task = precision.prepare_module(DistillTask(student, teacher, method, term, opt.gamma, opt.alpha, opt.beta,
                                                opt.kd_T))
    precision.prepare_module(teacher)
    extras = {"plain": [], "instance": [torch.arange(BATCH)],
              "sample": [torch.arange(BATCH), torch.randint(0, N_DATA, (BATCH, K + 1))]}[method.data_view(opt)]
    optimizer = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    x = precision.prepare_input(images)
    assert x.is_contiguous(memory_format=torch.channels_last)

    losses = []
    for _ in range(8):
        with precision.autocast():
            out = task(x, targets, *extras)
        assert out.logits.dtype == torch.bfloat16, "autocast did not reach the student"
        assert torch.isfinite(out.loss), (name, out.terms)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        losses.append(float(out.loss.detach()))
    assert min(losses[-3:]) < losses[0], (name, losses)


def test_train_teacher_with_amp_and_channels_last(tmp_path):
    data = write_fake_cifar(tmp_path / "data", n_train=64, n_test=32)
    result = train_teacher.main(["--model", "resnet8", "--epochs", "1", "--batch_size", "16", "--num_workers", "0",
                                 "--device", "cpu", "--seed", "0", "--data_folder", str(data),
                                 "--save_folder", str(tmp_path / "runs"), "--amp", "--channels_last"])
    assert result["epochs"] == 1 and result["last_acc"] == result["last_acc"]  # finite, not NaN
    state = torch.load(tmp_path / "runs" / "resnet8_vanilla" / "resnet8_last.pth", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in state["model"].values()), "weights must stay fp32 under autocast"


@pytest.mark.slow
def test_train_student_with_compile_keeps_reference_checkpoint_keys(tmp_path):
    data = write_fake_cifar(tmp_path / "data", n_train=32, n_test=16)
    teacher_dir = tmp_path / "models" / "resnet8_vanilla"
    teacher_dir.mkdir(parents=True)
    torch.save({"model": model_dict["resnet8"](num_classes=100).state_dict(), "epoch": 240, "accuracy": 0.0},
               teacher_dir / "ckpt_epoch_240.pth")
    result = train_student.main(["--path_t", str(teacher_dir / "ckpt_epoch_240.pth"), "--model_s", "resnet8",
                                 "--distill", "attention", "--epochs", "1", "--batch_size", "16", "--num_workers", "0",
                                 "--device", "cpu", "--seed", "0", "--data_folder", str(data),
                                 "--save_folder", str(tmp_path / "students"), "--compile"])
    state = torch.load(f"{result['run_dir']}/resnet8_last.pth", weights_only=True)
    assert result["last_acc"] == result["last_acc"]
    assert not [k for k in state["model"] if "_orig_mod" in k]
    model_dict["resnet8"](num_classes=100).load_state_dict(state["model"], strict=True)


@pytest.mark.parametrize("fast", [True, False])
def test_amp_on_a_cpu_without_native_bfloat16_warns(fast, monkeypatch):
    monkeypatch.setattr("kdzoo.helper.precision.cpu_has_fast_bfloat16", lambda: fast)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Precision(torch.device("cpu"), amp=True)
        Precision(torch.device("cpu"), amp=False)
    messages = [str(w.message) for w in caught if "bfloat16" in str(w.message)]
    assert len(messages) == (0 if fast else 1)
    if not fast:
        assert "drop --amp" in messages[0]


# /proc/cpuinfo excerpts: an AVX-512 Xeon without bfloat16 instructions (where --amp halved the
# speed), the same with AVX512-BF16, a Sapphire Rapids with AMX, an AVX2-only EPYC, and Arm cores
# with and without FEAT_BF16.
_X86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx avx2 fma {extra}\nbogomips\t: 4000\n"
CPUINFO = {
    "avx512 without bf16": (_X86.format(extra="avx512f avx512dq avx512bw avx512vl avx512_vnni"), False),
    "avx512 with avx512_bf16": (_X86.format(extra="avx512f avx512bw avx512vl avx512_bf16"), True),
    "amx": (_X86.format(extra="avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"), True),
    "avx2 only": (_X86.format(extra=""), False),
    "arm with bf16": ("processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16\n", True),
    "arm without bf16": ("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n", False),
}


@pytest.mark.parametrize("case", list(CPUINFO))
def test_native_bfloat16_is_read_from_the_cpu_flags(case, monkeypatch):
    text, native = CPUINFO[case]
    monkeypatch.setattr(precision_module, "read_cpuinfo", lambda: text)
    # oneDNN's own check accepts plain AVX-512; the flags alone must decide.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert precision_module.cpu_has_fast_bfloat16() is native
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Precision(torch.device("cpu"), amp=True)
    messages = [str(w.message) for w in caught if "bfloat16" in str(w.message)]
    assert len(messages) == (0 if native else 1), messages
    if not native:
        assert "avx512_bf16" in messages[0] and "amx_bf16" in messages[0] and "drop --amp" in messages[0]


@pytest.mark.parametrize("cpuinfo", [None, "processor\t: 0\nmodel name\t: unknown\n"])
@pytest.mark.parametrize("onednn", [True, False])
def test_without_cpu_flags_onednn_decides(cpuinfo, onednn, monkeypatch):
    monkeypatch.setattr(precision_module, "read_cpuinfo", lambda: cpuinfo)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn, raising=False)
    assert precision_module.cpu_has_fast_bfloat16() is onednn
