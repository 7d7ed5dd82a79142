"""Batch-norm folding for frozen networks (the teacher during distillation).

In eval mode a batch norm is an affine map per channel, so when it reads a convolution's output
directly it can be merged into that convolution's weights and bias: one layer instead of two, the
same outputs up to float rounding. The merge itself is torchvision/PyTorch's
:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`; this module finds the pairs in any backbone of
``models/`` (or any module following the feature contract) and checks the result.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

__all__ = ["fold_batchnorm", "find_conv_bn_pairs"]


def _forward_all_paths(model: nn.Module, sample: torch.Tensor) -> list[torch.Tensor]:
    """Every output the feature contract offers: features, pre-activations and logits."""
    outputs: list[torch.Tensor] = []
    for preact in (False, True):
        feats, logits = model(sample, is_feat=True, preact=preact)
        outputs += [*feats, logits]
    return outputs


class _CountUses(TorchFunctionMode):
    """Counts, per tensor id, the torch operations that read the tensor (metadata reads such as
    ``.shape`` excluded). Every tensor seen is kept alive, so no id is reused during the count."""

    def __init__(self) -> None:
        super().__init__()
        self.uses: dict[int, int] = {}
        self.seen: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _METADATA:
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, torch.Tensor):
                    self.uses[id(leaf)] = self.uses.get(id(leaf), 0) + 1
                    self.seen.append(leaf)
        return func(*args, **kwargs)


_METADATA = {torch.Tensor.size, torch.Tensor.dim, torch.Tensor.shape.__get__, torch.Tensor.dtype.__get__,
             torch.Tensor.device.__get__, torch.Tensor.ndim.__get__, torch.Tensor.__len__}


def find_conv_bn_pairs(model: nn.Module, sample: torch.Tensor) -> list[tuple[str, str]]:
    """``(conv_name, bn_name)`` for every ``BatchNorm2d`` that reads a ``Conv2d``'s output which
    nothing else reads: not another operation (e.g. a residual sum) and not the caller (e.g. as a
    returned feature). Found by running ``model`` on ``sample`` through every output path of the
    feature contract, so the structure of the forward pass decides, not module names.
    """
    conv_of_output: dict[int, str] = {}
    keep_alive: list[torch.Tensor] = []  # outputs stay referenced so their ids are not reused
    bn_inputs: dict[str, set[int]] = {}
    calls: dict[str, int] = {}
    handles = []

    def conv_hook(name: str):
        def hook(_module, _inputs, output):
            conv_of_output[id(output)] = name
            calls[name] = calls.get(name, 0) + 1
            keep_alive.append(output)
        return hook

    def bn_hook(name: str):
        def hook(_module, inputs):
            bn_inputs.setdefault(name, set()).add(id(inputs[0]))
            keep_alive.append(inputs[0])
        return hook

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook(name)))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(bn_hook(name)))
    counter = _CountUses()
    try:
        with torch.no_grad(), counter:
            returned = {id(t) for t in _forward_all_paths(model, sample)}
    finally:
        for handle in handles:
            handle.remove()
    pairs: dict[str, list[str]] = {}
    for bn, input_ids in bn_inputs.items():
        convs = {conv_of_output.get(i) for i in input_ids}
        exclusive = all(counter.uses.get(i, 0) == 1 and i not in returned for i in input_ids)
        if len(convs) == 1 and None not in convs and exclusive:
            conv = convs.pop()
            # Each call of the convolution must have fed this batch norm.
            if calls[conv] == len(input_ids):
                pairs.setdefault(conv, []).append(bn)
    return [(conv, bns[0]) for conv, bns in pairs.items() if len(bns) == 1]


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def fold_batchnorm(model: nn.Module, sample: torch.Tensor, rtol: float = 1e-3) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every foldable batch norm merged into the
    convolution before it and replaced by ``nn.Identity``.

    The copy's features, pre-activations and logits on ``sample`` are checked against the
    original's (relative tolerance ``rtol`` of each output's scale); a mismatch raises
    ``ValueError`` and leaves nothing changed. Only for inference: the folded network has no batch
    statistics to update.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs the network in eval mode (its running statistics are folded)")
    folded = copy.deepcopy(model)
    pairs = find_conv_bn_pairs(folded, sample)
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        _replace(folded, conv_name, fuse_conv_bn_eval(conv, bn))
        _replace(folded, bn_name, nn.Identity())
    with torch.no_grad():
        expected, actual = _forward_all_paths(model, sample), _forward_all_paths(folded, sample)
    for i, (want, got) in enumerate(zip(expected, actual)):
        scale = want.abs().max().clamp_min(1.0)
        if not torch.allclose(got, want, rtol=rtol, atol=rtol * scale.item()):
            raise ValueError(
                f"folding batch norm into {type(model).__name__} changed output {i} "
                f"(max difference {(got - want).abs().max().item():.3g}): a convolution output is used "
                "besides its batch norm"
            )
    return folded
