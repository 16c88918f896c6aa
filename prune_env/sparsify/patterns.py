"""Sparsity patterns and score -> mask selection shared by every kernel (pure tensor math).

A mask is a boolean tensor shaped like the weight, ``True`` where the weight is pruned (set to zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NM:
    """Semi-structured N:M sparsity: keep ``n`` of every ``m`` consecutive input weights of a row."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)) or self.n < 1 or self.m < 2:
            raise ValueError(f"N:M needs integers N >= 1 and M >= 2, got {self.n}:{self.m} (e.g. 2:4)")
        if self.n >= self.m:
            raise ValueError(f"N:M needs N < M (N weights kept of every M), got {self.n}:{self.m}; use e.g. 2:4")

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    @classmethod
    def parse(cls, text: str) -> NM:
        """Parse ``"2:4"``."""
        parts = str(text).split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"N:M pattern must look like '2:4', got {text!r}")
        return cls(int(parts[0]), int(parts[1]))

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"

    def check_columns(self, columns: int) -> None:
        if columns % self.m:
            raise ValueError(
                f"N:M {self} needs the number of input features ({columns}) to be a multiple of {self.m} (groups of "
                f"{self.m} consecutive columns); choose an M that divides {columns} or an unstructured sparsity"
            )


def check_ratio(sparsity: float, what: str = "sparsity") -> float:
    """Validate an unstructured sparsity ratio in [0, 1)."""
    value = float(sparsity)
    if math.isnan(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1) (a fraction of weights to remove, e.g. 0.5), got {sparsity!r}")
    return value


def smallest_along_last(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the ``count`` smallest scores along the last dimension, ties going to the lower index.

    The same set a stable ``argsort(...)[..., :count]`` picks, found in linear time: ``kthvalue`` gives each
    row's threshold, everything below it is pruned, and of the entries equal to it the first ones fill the
    remaining count. A full sort costs ~2.5x more on SmolLM2's matrices and dominated re-pruning.
    """
    n = scores.shape[-1]
    if count <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if count >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if torch.isnan(scores).any():  # NaN sorts last in argsort; kthvalue does not promise that
        idx = torch.argsort(scores, dim=-1, stable=True)[..., :count]
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)
    threshold = scores.kthvalue(count, dim=-1, keepdim=True).values
    mask = scores < threshold
    equal = scores == threshold
    need = count - mask.sum(dim=-1, keepdim=True)
    if bool((equal.sum(dim=-1, keepdim=True) > need).any()):  # ties at the threshold: keep the first ones
        equal &= equal.cumsum(dim=-1) <= need
    return mask | equal


def smallest_per_row(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the ``count`` smallest scores in every row (stable: ties go to the lower column)."""
    return smallest_along_last(scores, count)


def smallest_overall(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the ``count`` smallest scores of the whole tensor (stable: ties go to the lower flat index)."""
    return smallest_along_last(scores.reshape(-1), count).view_as(scores)


def smallest_nm(scores: torch.Tensor, nm: NM) -> torch.Tensor:
    """Mask pruning the ``m - n`` smallest scores of every group of ``m`` consecutive columns."""
    rows, cols = scores.shape
    nm.check_columns(cols)
    groups = scores.reshape(rows, cols // nm.m, nm.m)
    return smallest_along_last(groups, nm.m - nm.n).reshape(rows, cols)


def select(scores: torch.Tensor, sparsity: float, nm: NM | None, *, per_row: bool) -> torch.Tensor:
    """Pick the pruned set from scores: N:M groups, per output row, or over the whole matrix."""
    if nm is not None:
        return smallest_nm(scores, nm)
    sparsity = check_ratio(sparsity)
    if per_row:
        return smallest_per_row(scores, int(scores.shape[1] * sparsity))
    return smallest_overall(scores, int(scores.numel() * sparsity))
