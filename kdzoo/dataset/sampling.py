"""Positive and negative indices for contrastive distillation (CRD and its relatives).

For a sample of class ``y`` the reference CRD dataset returns ``sample_idx = [positive, K negatives]``:
the positive is the sample itself (``mode='exact'``) or a random sample of class ``y``
(``mode='relax'``); the negatives are K distinct samples of other classes (drawn with replacement
only when fewer than K exist). This module does the same for a whole batch with tensor ops, for any
class balance.
"""
from __future__ import annotations

import torch

# Above this many random keys per batch (rows x candidates), negatives are drawn with replacement:
# that only happens for ImageNet-sized pools, where K is a tiny fraction of the candidates and
# repeats are rare anyway (K=16384 of 1.27M: ~1% of draws).
_EXACT_DRAW_BUDGET = 1 << 23


class ContrastiveSampler:
    """Draws ``sample_idx`` rows for batches of (index, target).

    Args:
        labels: class of every sample in the dataset, shape (N,).
        k: number of negatives per sample.
        mode: ``'exact'`` (positive = the sample itself) or ``'relax'`` (a random same-class sample).
        percent: keep only this fraction of each class's negative pool (the reference's ``percent``,
            fixed once at construction).
    """

    def __init__(self, labels: torch.Tensor, k: int, mode: str = "exact", percent: float = 1.0) -> None:
        if mode not in ("exact", "relax"):
            raise ValueError(f"mode must be 'exact' or 'relax', got {mode!r}")
        if k < 1:
            raise ValueError(f"the number of negatives k must be positive, got {k}")
        if not 0.0 < percent <= 1.0:
            raise ValueError(f"percent must be in (0, 1], got {percent}")
        labels = torch.as_tensor(labels, dtype=torch.long)
        n_classes = int(labels.max()) + 1
        counts = torch.bincount(labels, minlength=n_classes)
        if int((counts > 0).sum()) < 2:
            raise ValueError("contrastive sampling needs at least two classes with samples")
        self.k, self.mode = k, mode
        # Samples sorted by class: class c occupies order[start[c] : start[c] + counts[c]].
        self.order = torch.argsort(labels, stable=True)
        self.counts = counts
        self.start = torch.cumsum(counts, 0) - counts
        self.n = labels.numel()
        self.pool_size = self.n - counts  # negatives available to each class
        self.subset: torch.Tensor | None = None
        if percent < 1.0:
            # A fixed random subset of each class's negatives, the same size for every class.
            size = int(self.pool_size.min().item() * percent)
            if size < 1:
                raise ValueError(f"percent={percent} leaves no negatives")
            self.subset = torch.stack(
                [torch.randperm(int(self.pool_size[c]))[:size] for c in range(n_classes)]
            )
            self.pool_size = torch.full_like(counts, size)

    def _pool_to_index(self, position: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Map positions in the negative pool of ``target`` (shape (B, K)) to dataset indices."""
        if self.subset is not None:
            position = self.subset[target.unsqueeze(1), position]
        start = self.start[target].unsqueeze(1)
        # The pool of class y is every sorted slot except y's own block: skip over that block.
        slot = torch.where(position < start, position, position + self.counts[target].unsqueeze(1))
        return self.order[slot]

    def _draw_positions(self, target: torch.Tensor) -> torch.Tensor:
        pool = self.pool_size[target]
        widest = int(pool.max())
        if self.k <= int(pool.min()) and target.numel() * widest <= _EXACT_DRAW_BUDGET:
            # K distinct positions per row: the K smallest of uniform keys, with the keys beyond
            # a row's pool size pushed out of reach.
            keys = torch.rand(target.numel(), widest)
            keys.masked_fill_(torch.arange(widest) >= pool.unsqueeze(1), 2.0)
            return keys.topk(self.k, dim=1, largest=False, sorted=False).indices
        return (torch.rand(target.numel(), self.k) * pool.unsqueeze(1)).long()

    def sample(self, index: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``sample_idx`` of shape (B, K+1): the positive, then K negatives from other classes."""
        index = torch.as_tensor(index, dtype=torch.long)
        target = torch.as_tensor(target, dtype=torch.long)
        if self.mode == "exact":
            positive = index
        else:
            offset = (torch.rand(target.numel()) * self.counts[target]).long()
            positive = self.order[self.start[target] + offset]
        negatives = self._pool_to_index(self._draw_positions(target), target)
        return torch.cat([positive.unsqueeze(1), negatives], dim=1)
