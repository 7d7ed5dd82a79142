"""Training-step speed and peak memory of distillation methods, on pre-made tensors.

    python scripts/benchmark.py --teacher resnet32x4 --student resnet8x4 --methods kd,crd,rrd,wcord

For each method it times full training steps (teacher forward, student forward/backward, the
method's term and heads, SGD update) after warm-up, and reports the median step time, images per
second, the ratio to the first method, and the peak memory of a process that ran only that method
(each method runs in its own child process: CPU peak RSS, or CUDA peak allocated memory). With
``--repeats N`` the methods are measured N times in interleaved rounds and each figure is the
minimum over rounds, which filters out other load on a shared machine. The
"compute bound" row is the same step with nothing but the two networks and cross-entropy. Prints a
Markdown table and writes the figures as JSON (``--json``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOUND = "bound"
PROFILE_ROWS = 8


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, method_name: str) -> dict:
    """Time ``args.steps`` training steps of one method in this process."""
    import torch
    import torch.nn.functional as F

    import train_student
    from kdzoo.distiller_zoo.registry import METHODS
    from kdzoo.helper.distill import DistillTask, build_term, fold_teacher_batchnorm, freeze_teacher
    from kdzoo.helper.distributed import resolve_device
    from kdzoo.helper.precision import Precision
    from kdzoo.models import model_dict

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    n_cls, batch, k = 100, args.batch_size, args.nce_k
    precision = Precision(device, amp=args.amp, channels_last=args.channels_last, compile=args.compile)
    teacher = model_dict[args.teacher](num_classes=n_cls).to(device)
    student = precision.prepare_network(model_dict[args.student](num_classes=n_cls).to(device))
    images = precision.prepare_input(torch.randn(batch, 3, 32, 32, device=device))
    targets = torch.randint(0, n_cls, (batch,), device=device)
    # An untrained network in eval mode normalises with its initial statistics (mean 0, var 1), so
    # activations grow through deep residual stacks and feature losses diverge; a few train-mode
    # passes give the random teacher the feature scale of a trained one.
    with torch.no_grad():
        teacher.train()
        for _ in range(3):
            teacher(images)
    freeze_teacher(teacher)
    trained_teacher = teacher  # the methods are built from it: OFD reads the batch norms folding removes
    if args.fold_teacher_bn:
        teacher = fold_teacher_batchnorm(teacher, images[:2])
    precision.prepare_network(teacher)

    if method_name == BOUND:
        params = list(student.parameters())

        def step() -> torch.Tensor:
            with torch.inference_mode():
                teacher(images)
            return F.cross_entropy(student(images), targets)
    else:
        parser = train_student.build_parser()
        flags = ["--path_t", "unused.pth", "--model_t", args.teacher, "--model_s", args.student,
                 "--distill", method_name, "--nce_k", str(k)]
        opt = train_student.resolve_options(parser, parser.parse_args(flags), require_teacher_file=False)
        method = METHODS[method_name]
        term = build_term(method, student, trained_teacher, images[:2], opt, args.n_data)
        task = DistillTask(student, teacher, method, term, opt.gamma, opt.alpha, opt.beta, opt.kd_T).to(device)
        precision.prepare_module(task)
        params = [p for p in task.parameters() if p.requires_grad]
        view = method.data_view(opt)
        extras = []
        if view in ("instance", "sample"):
            extras.append(torch.randint(0, args.n_data, (batch,), device=device))
        if view == "sample":
            extras.append(torch.randint(0, args.n_data, (batch, k + 1), device=device))

        def step() -> torch.Tensor:
            return task(images, targets, *extras).loss

    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    scaler = precision.grad_scaler()

    def train_step() -> torch.Tensor:
        with precision.autocast():
            loss = step()
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss

    times = []
    for i in range(args.warmup + args.steps):
        _sync(device)
        start = time.perf_counter()
        loss = train_step()
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    if not torch.isfinite(loss):
        raise RuntimeError(f"{method_name}: the loss is not finite")
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    median = statistics.median(times)
    result = {"method": method_name, "step_ms": 1000 * median, "images_per_sec": batch / median,
              "peak_mb": peak_mb, "device": str(device), "steps": args.steps}
    if args.profile:
        result["profile"] = profile_steps(train_step, args.profile, device)
    return result


def profile_steps(train_step, steps: int, device, top: int = PROFILE_ROWS) -> list[dict]:
    """The ``top`` operators by self time over ``steps`` more steps under ``torch.profiler``
    (CPU time; device time on CUDA), each as milliseconds per step and share of the total."""
    from torch.profiler import ProfilerActivity, profile

    on_cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])) as prof:
        for _ in range(steps):
            train_step()
        _sync(device)
    events = prof.key_averages()
    own = (lambda e: e.self_device_time_total) if on_cuda else (lambda e: e.self_cpu_time_total)
    total = sum(own(e) for e in events) or 1.0
    ranked = sorted(events, key=own, reverse=True)[:top]
    return [{"op": e.key, "ms_per_step": own(e) / 1000 / steps, "share": own(e) / total} for e in ranked]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--methods", default="kd,crd,rrd,wcord", help="comma-separated --distill names")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--nce_k", type=int, default=16384)
    parser.add_argument("--n_data", type=int, default=50000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; the minimum is reported")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (float16 + scaler on older GPUs)")
    parser.add_argument("--channels_last", action="store_true", help="NHWC tensors")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (warm-up absorbs it)")
    parser.add_argument("--fold_teacher_bn", action=argparse.BooleanOptionalAction, default=True,
                        help="fold the teacher's batch norms, as train_student.py does by default")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after timing, profile this many more steps of each method (torch.profiler) and print "
                             f"its {PROFILE_ROWS} costliest operators by self time")
    parser.add_argument("--single", default=None, help=argparse.SUPPRESS)  # child-process mode
    args = parser.parse_args(argv)

    if args.single:
        print(json.dumps(measure(args, args.single)))
        return []

    names = [BOUND, *args.methods.split(",")]
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            child = subprocess.run([sys.executable, __file__, *passthrough, "--single", name], capture_output=True,
                                   text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if child.returncode != 0:
                sys.stderr.write(child.stderr)
                raise SystemExit(f"benchmark of {name} failed (exit {child.returncode})")
            rounds[name].append(json.loads(child.stdout.strip().splitlines()[-1]))
    results = []
    for name in names:
        best = dict(min(rounds[name], key=lambda r: r["step_ms"]))
        best["peak_mb"] = min(r["peak_mb"] for r in rounds[name])
        best["step_ms_all"] = [r["step_ms"] for r in rounds[name]]
        results.append(best)

    reference = next((r for r in results if r["method"] == args.methods.split(",")[0]), results[0])
    print(f"{args.teacher} -> {args.student}, batch {args.batch_size}, K={args.nce_k}, n_data={args.n_data}, "
          f"{results[0]['device']}{', amp' if args.amp else ''}{', channels_last' if args.channels_last else ''}{', compile' if args.compile else ''}, median of {args.steps} steps after {args.warmup} warm-up, "
          f"minimum over {args.repeats} interleaved round(s)\n")
    print(f"| method | step (ms) | images/s | x {reference['method']} step | peak memory (MB) | x {reference['method']} memory |")
    print("|---|---|---|---|---|---|")
    for r in results:
        label = "compute bound (networks + CE only)" if r["method"] == BOUND else r["method"]
        print(f"| {label} | {r['step_ms']:.0f} | {r['images_per_sec']:.0f} | {r['step_ms'] / reference['step_ms']:.2f} "
              f"| {r['peak_mb']:.0f} | {r['peak_mb'] / reference['peak_mb']:.2f} |")
    if args.profile:
        for r in results:
            print(f"\n{r['method']}: the costliest operators by self {'CUDA' if r['device'].startswith('cuda') else 'CPU'} "
                  f"time, {args.profile} profiled step(s)\n")
            print("| operator | ms per step | share |")
            print("|---|---:|---:|")
            for row in r["profile"]:
                print(f"| {row['op']} | {row['ms_per_step']:.1f} | {100 * row['share']:.1f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": {k: v for k, v in vars(args).items() if k != "single"},
                                               "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
