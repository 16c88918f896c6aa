"""Sparsity accounting: per linear, per block, over all prunable linears, over all parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .structure import ModelStructure


@dataclass(frozen=True)
class Count:
    zeros: int
    total: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.total if self.total else 0.0

    def __add__(self, other: Count) -> Count:
        return Count(self.zeros + other.zeros, self.total + other.total)

    def as_dict(self) -> dict:
        return {**asdict(self), "sparsity": self.sparsity}


def count_zeros(tensor: torch.Tensor) -> Count:
    return Count(int((tensor == 0).sum()), tensor.numel())


def _unique_parameters(model: nn.Module):
    seen: set[int] = set()
    for p in model.parameters():  # tied embeddings appear once
        if id(p) not in seen:
            seen.add(id(p))
            yield p


@dataclass
class SparsityReport:
    """Zero counts of every prunable linear, each block, all prunable linears, and all model parameters."""

    linears: dict[str, Count]
    blocks: list[Count]
    prunable: Count
    all_parameters: Count

    @property
    def global_sparsity(self) -> float:
        """Sparsity over all prunable linears: the number every target in prune-gym refers to."""
        return self.prunable.sparsity

    def as_dict(self) -> dict:
        return {
            "global_sparsity": self.global_sparsity,
            "prunable": self.prunable.as_dict(),
            "all_parameters": self.all_parameters.as_dict(),
            "blocks": [c.as_dict() for c in self.blocks],
            "linears": {name: c.as_dict() for name, c in self.linears.items()},
        }


def sparsity_report(model: nn.Module, structure: ModelStructure) -> SparsityReport:
    linears = {lin.name: count_zeros(lin.module.weight) for lin in structure.linears}
    blocks = [Count(0, 0)] * structure.num_blocks
    for lin in structure.linears:
        blocks[lin.block] = blocks[lin.block] + linears[lin.name]
    prunable = sum(linears.values(), Count(0, 0))
    everything = sum((count_zeros(p.detach()) for p in _unique_parameters(model)), Count(0, 0))
    return SparsityReport(linears, blocks, prunable, everything)
