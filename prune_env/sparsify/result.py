"""The value every sparsify kernel returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparsifyResult:
    """A pruned ``(out, in)`` weight (fp32, zeros where pruned) and its mask (``True`` = pruned)."""

    weight: torch.Tensor
    mask: torch.Tensor

    @property
    def sparsity(self) -> float:
        return float(self.mask.float().mean())
