"""Mixed precision and memory layout for the training and evaluation loops (``--amp``,
``--channels_last``). The defaults (fp32, contiguous) reproduce the published numbers."""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Precision:
    """How tensors are computed on ``device``.

    ``amp``: autocast to bfloat16 on CPU; on CUDA bfloat16 where the GPU supports it, else float16
    with a gradient scaler (float16's range is too narrow for unscaled gradients).
    ``channels_last``: NHWC layout for convolution weights and inputs, which oneDNN and cuDNN run
    faster, most of all under autocast.
    ``compile``: ``nn.Module.compile()`` on the networks, in place, so state-dict keys (and so
    checkpoints) are unchanged; the frozen teacher is compiled for its no-grad forward.
    """

    device: torch.device
    amp: bool = False
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.amp and self.device.type == "cpu" and not cpu_has_fast_bfloat16():
            warnings.warn(
                "--amp on a CPU without native bfloat16 instructions (neither avx512_bf16 nor amx_bf16): "
                "oneDNN emulates bfloat16 and a step is about 2x (AVX-512) to 6x (AVX2) slower than in fp32; "
                "drop --amp here",
                stacklevel=3,  # past the dataclass-generated __init__, to the caller
            )

    @property
    def amp_dtype(self) -> torch.dtype:
        if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16

    def autocast(self) -> ContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        if self.amp and self.amp_dtype == torch.float16:
            return torch.amp.GradScaler(self.device.type)
        return None

    def prepare_module(self, module: nn.Module) -> nn.Module:
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    def prepare_network(self, network: nn.Module) -> nn.Module:
        """Layout and, with ``compile``, compilation of a backbone (not of the loss modules: their
        data-dependent memory updates gain nothing and would only add graph breaks)."""
        self.prepare_module(network)
        if self.compile:
            network.compile()
        return network

    def prepare_input(self, images: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The batch in the run's memory layout: one tensor, or a tuple of input views (one per
        network; a view shared by several networks is converted once)."""
        if not self.channels_last:
            return images
        if isinstance(images, torch.Tensor):
            return images.contiguous(memory_format=torch.channels_last)
        converted: dict[int, torch.Tensor] = {}
        for x in images:
            if id(x) not in converted:
                converted[id(x)] = x.contiguous(memory_format=torch.channels_last)
        return tuple(converted[id(x)] for x in images)


# CPU flags (as /proc/cpuinfo names them) of instructions that compute in bfloat16: x86's
# AVX512-BF16 and AMX, Arm's FEAT_BF16.
NATIVE_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def read_cpuinfo() -> str | None:
    """The text of ``/proc/cpuinfo``, or ``None`` where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return None


def cpu_flags(cpuinfo: str) -> set[str] | None:
    """The instruction-set flags of the first CPU in ``/proc/cpuinfo`` text (x86 ``flags``, Arm
    ``Features``), or ``None`` when the text lists none."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively. Without such instructions oneDNN emulates it,
    and a bfloat16 step is slower than fp32 even with AVX-512: a distillation ran 343 img/s under
    --amp and 719 without on an AVX-512 CPU lacking avx512_bf16, and resnet20 -> resnet8 ran 6x
    slower than fp32 on an AVX2-only AMD EPYC (Zen 3). Where /proc/cpuinfo lists no flags (not
    Linux), oneDNN's own check decides; it accepts plain AVX-512, so it may miss the slow case."""
    cpuinfo = read_cpuinfo()
    flags = cpu_flags(cpuinfo) if cpuinfo is not None else None
    if flags is not None:
        return bool(flags & NATIVE_BFLOAT16_FLAGS)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private API; assume the best if it ever goes away
        return True
