"""Wanda (Sun et al., 2023): score |W_ij| * ||X_j||_2, pruned per output row, no weight update."""

from __future__ import annotations

import torch

from .patterns import NM, select
from .result import SparsifyResult


def wanda_scores(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """``|W| * ||X_j||`` with ``act_norm[j]`` the L2 norm of input feature j over all calibration tokens."""
    w = weight.detach().float()
    if act_norm.shape != (w.shape[1],):
        raise ValueError(f"act_norm must have one entry per input feature ({w.shape[1]}), got {tuple(act_norm.shape)}")
    return w.abs() * act_norm.to(device=w.device, dtype=torch.float32).unsqueeze(0)


def wanda_sparsify(
    weight: torch.Tensor, act_norm: torch.Tensor, sparsity: float = 0.0, nm: NM | None = None
) -> SparsifyResult:
    """Prune ``weight`` (``(out, in)``) by Wanda scores: the lowest ``sparsity`` of each row, or N:M groups."""
    w = weight.detach().float()
    mask = select(wanda_scores(w, act_norm), sparsity, nm, per_row=True)
    return SparsifyResult(w.masked_fill(mask, 0.0), mask)
