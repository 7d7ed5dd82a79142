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
                "--amp on a CPU without native bfloat16 support (AVX512-BF16/AMX, or at least AVX-512): "
                "oneDNN emulates bfloat16 and the step is several times slower than fp32; drop --amp here",
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

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images



def cpu_has_fast_bfloat16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU. On AVX2-only CPUs they are
    emulated: measured 6x slower than fp32 for resnet20 -> resnet8 on an AMD EPYC (Zen 3)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private API; assume the best if it ever goes away
        return True
