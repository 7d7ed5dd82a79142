"""Launch test code as several gloo ranks on the CPU, the way torchrun does (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the environment), with every child killed on timeout.

The ranks are started directly (one subprocess each, in its own session) rather than through the
torchrun agent: fewer moving parts on a 2-core machine and separate output per rank.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
WORLD = 2
TIMEOUT = 120  # seconds for a whole launch; a hang (e.g. a collective one rank skips) fails the test


LOOPBACK = next((name for _, name in socket.if_nameindex() if name in ("lo", "lo0")), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], log_dir: Path, timeout: float = TIMEOUT) -> list[dict]:
    """Run ``cmd`` as ranks 0..WORLD-1; return per rank {'code', 'out', 'err'}. Output goes to files
    (no pipe can fill up and block a rank); on timeout every rank's process group is killed."""
    port = free_port()
    procs, files = [], []
    try:
        for rank in range(WORLD):
            env = {
                **os.environ,
                "RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]),
            }
            if LOOPBACK and "GLOO_SOCKET_IFNAME" not in os.environ:
                env["GLOO_SOCKET_IFNAME"] = LOOPBACK  # gloo would otherwise pick the hostname's address
            out = open(log_dir / f"rank{rank}.out", "w")
            err = open(log_dir / f"rank{rank}.err", "w")
            files += [out, err]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err,
                                          stdin=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + timeout
        for p in procs:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        timed_out = False
        for p in procs:
            if p.poll() is None:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for f in files:
            f.close()
    results = [
        {"code": p.returncode, "out": (log_dir / f"rank{r}.out").read_text(),
         "err": (log_dir / f"rank{r}.err").read_text()}
        for r, p in enumerate(procs)
    ]
    if timed_out:
        pytest.fail(f"distributed run timed out after {timeout}s:\n" + "\n".join(
            f"--- rank {r} stderr:\n{res['err'][-1500:]}" for r, res in enumerate(results)))
    return results


def assert_all_ok(results: list[dict]) -> None:
    for rank, res in enumerate(results):
        assert res["code"] == 0, f"rank {rank} exited with {res['code']}:\n{res['err'][-1500:]}"


def run_script_on_ranks(source: str, work_dir: Path, timeout: float = TIMEOUT) -> list[dict]:
    """Write ``source`` to a file, run it as every rank and require each to exit 0 after printing
    ``ok <rank>`` (so a rank that skipped its checks cannot pass)."""
    script = work_dir / "rank_script.py"
    script.write_text(source)
    results = launch([sys.executable, str(script)], work_dir, timeout)
    assert_all_ok(results)
    for rank, res in enumerate(results):
        assert f"ok {rank}" in res["out"], res["out"]
    return results
