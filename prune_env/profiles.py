"""Layer sensitivity profiles (pure tensor math): raw scores per unit and their z-scores across units.

Following arXiv 2601.09694, each unit gets two numbers, z-scored across all units:

* Wanda part: ``S = |W| * ||X||_2`` (``X`` the unit's inputs, the norm per input feature over all tokens);
  the raw score is the 10th percentile of the non-zero entries of ``S`` over all of the unit's linears.
  Low = the unit's weakest surviving weights carry little signal, so pruning more there is cheap.
* Gradient part: ``G = mean_i |dL_i/dW|`` over calibration samples ``i``. The paper does not say how ``G`` is
  reduced to one number; we use the first-order Taylor importance of the surviving weights,
  ``g = mean over kept weights of |W * G|`` (the expected loss change from removing a weight, to first order).
  Because ``|W * G|`` is linear in the per-sample ``|dL_i/dW|``, it is accumulated sample by sample as sums
  (``TaylorAccumulator``) and never needs a second model-sized buffer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

WANDA_QUANTILE = 0.1


def nonzero_quantile(values: torch.Tensor, q: float = WANDA_QUANTILE) -> float:
    """The ``q`` quantile (lower interpolation: an actual entry) of the non-zero entries; 0 if all are zero."""
    flat = values.reshape(-1)
    flat = flat[flat != 0]
    if flat.numel() == 0:
        return 0.0
    k = max(1, math.ceil(q * flat.numel()))
    if flat.device.type == "cpu":  # numpy's introselect is ~2x faster than torch.kthvalue on CPU; same entry
        return float(np.partition(flat.float().numpy(), k - 1)[k - 1])
    return float(torch.kthvalue(flat.float(), k).values)


def wanda_unit_score(weights: Sequence[torch.Tensor], act_norms: Sequence[torch.Tensor], q: float = WANDA_QUANTILE) -> float:
    """Raw Wanda score of a unit: the ``q`` quantile of non-zero ``|W| * ||X||`` over its ``(out, in)`` weights."""
    scores = [(w.detach().float().abs() * n.to(w.device, torch.float32).unsqueeze(0)).reshape(-1)
              for w, n in zip(weights, act_norms, strict=True)]
    return nonzero_quantile(torch.cat(scores), q)


class TaylorAccumulator:
    """Accumulates ``sum |W * dL_i/dW|`` over kept weights and samples, per unit, for the gradient profile."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.kept: dict[str, int] = {}
        self.samples = 0

    def add(self, name: str, weight: torch.Tensor, grad: torch.Tensor) -> None:
        """One sample's gradient for the linear ``name`` (``weight`` and ``grad`` in the same layout)."""
        w = weight.detach().float()
        self.sums[name] = self.sums.get(name, 0.0) + float((w * grad.detach().float()).abs().sum())
        self.kept[name] = int((w != 0).sum())

    def unit_score(self, linear_names: Sequence[str]) -> float:
        """``mean over kept weights and samples of |W * dL_i/dW|`` for a unit made of ``linear_names``."""
        kept = sum(self.kept.get(n, 0) for n in linear_names)
        if kept == 0 or self.samples == 0:
            return 0.0
        return sum(self.sums.get(n, 0.0) for n in linear_names) / (kept * self.samples)


def zscore(values: Sequence[float] | np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``(x - mean) / (std + eps)`` across units (population std); all zeros when there is no spread."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x.astype(np.float32)
    return ((x - x.mean()) / (x.std() + eps)).astype(np.float32)
