"""Process-group setup for ``torchrun`` and the few collective helpers the loop needs."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs: its rank among ``world_size`` processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(flag: str, local_rank: int = 0) -> torch.device:
    """``--device auto|cpu|cuda``: auto picks CUDA when available; under torchrun each process
    takes the GPU of its local rank."""
    if flag not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {flag!r}")
    if flag == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    if flag == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device_flag: str = "auto") -> DistEnv:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1), else run alone.
    NCCL serves CUDA devices, gloo the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_flag, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world_size, local_rank, device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (in place) when distributed; returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """Minimum of ``tensor`` over all processes (in place) when distributed; returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true in any process. A collective when distributed (every process must
    call it, so it also keeps them in step); a plain ``flag`` otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    return bool(all_reduce_sum(torch.tensor(float(flag), device=device)).item() > 0)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every process rank ``src``'s buffers (batch-norm statistics): each rank updates its own
    copy while training, and evaluation must use the statistics that rank 0 saves."""
    if dist.is_available() and dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
