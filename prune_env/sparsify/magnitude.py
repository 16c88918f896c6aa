"""Magnitude pruning: remove the smallest |W| of the whole matrix (or of each N:M group)."""

from __future__ import annotations

import torch

from .patterns import NM, select
from .result import SparsifyResult


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().float().abs()


def magnitude_sparsify(weight: torch.Tensor, sparsity: float = 0.0, nm: NM | None = None) -> SparsifyResult:
    """Prune ``weight`` (``(out, in)``) by magnitude, compared across the whole matrix (N:M: within groups)."""
    w = weight.detach().float()
    mask = select(magnitude_scores(w), sparsity, nm, per_row=False)
    return SparsifyResult(w.masked_fill(mask, 0.0), mask)
