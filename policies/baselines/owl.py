"""``owl-<kernel>``: OWL's outlier-weighted layer-wise sparsity (Yin et al., ICML 2024).

Per decoder block ``b``: ``D_b`` = share of the block's Wanda scores ``|W_ij| * ||X_j||_2`` (all its linears
together) above ``M`` times their mean (``M = 5``). ``D`` is min-max normalised to ``[0, 2 * lambda]``
(``lambda = 0.08``) and the block's sparsity is ``target - (norm_b - mean(norm))``: blocks with more
outliers are pruned less, and the mean is the target. Scores use the dense weights and the env's dense,
one-shot calibration statistics (OWL's reference code uses the same Wanda statistics it prunes with).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..base import EnvView
from .planned import PlannedPolicy, block_plan
from .uniform import check_method

if TYPE_CHECKING:
    from prune_env.env import PruningEnv

OWL_M = 5.0
OWL_LAMBDA = 0.08
OWL_KERNELS = ("wanda", "sparsegpt")


def outlier_ratio(scores: torch.Tensor, m: float = OWL_M) -> float:
    """Share of ``scores`` entries above ``m`` times their mean (OWL's layer-wise outlier distribution)."""
    flat = scores.reshape(-1).float()
    return float((flat > m * flat.mean()).sum()) / flat.numel()


def owl_sparsities(outlier_ratios: Sequence[float], target: float, lam: float = OWL_LAMBDA,
                   weights: Sequence[float] | None = None) -> np.ndarray:
    """OWL's per-block sparsities: ``target - (norm_b - mean(norm))`` with ``norm`` = ``D`` min-max scaled to
    ``[0, 2 * lam]``; ``weights`` (block sizes) make the mean numel-weighted (equal blocks: the plain mean)."""
    d = np.asarray(outlier_ratios, dtype=np.float64)
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=np.float64)
    spread = d.max() - d.min()
    norm = np.zeros_like(d) if spread == 0 else (d - d.min()) / spread * (2 * lam)
    return target - (norm - float((norm * w).sum() / w.sum()))


def block_outlier_ratios(env: PruningEnv, m: float = OWL_M) -> dict[int, float]:
    """``{block index: D_b}`` from the env's dense weights and one-shot activation norms."""
    if not env.stats:
        raise ValueError(f"OWL needs Wanda activation statistics, which an env with method={env.config.method!r} "
                         "does not collect: use method 'wanda' or 'sparsegpt'")
    ratios = {}
    for block in sorted({b for unit in env.units for b in unit.blocks}):
        scores = [(env.dense.get(lin.name).float().abs() * env.stats[lin.name].act_norm.cpu().unsqueeze(0)).reshape(-1)
                  for lin in env.structure.linears_in_block(block)]
        ratios[block] = outlier_ratio(torch.cat(scores), m)
    return ratios


class OwlPolicy(PlannedPolicy):
    """Plan OWL's allocation (one ratio per block; a linear unit takes its block's) and walk to it."""

    def __init__(self, kernel: str = "wanda", lam: float = OWL_LAMBDA, m: float = OWL_M) -> None:
        super().__init__()
        if kernel not in OWL_KERNELS:
            raise ValueError(f"owl: kernel must be one of {', '.join(OWL_KERNELS)}, got {kernel!r}")
        if not 0 <= lam < 0.5 or m <= 0:
            raise ValueError(f"owl: need 0 <= lam < 0.5 and m > 0, got lam={lam}, m={m}")
        self.kernel, self.lam, self.m = kernel, float(lam), float(m)
        self.name = f"owl-{kernel}"
        self.outlier_ratios: dict[int, float] = {}

    def plan(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        check_method(self.name, self.kernel, view)
        if view.env is None:
            raise ValueError("owl needs view.env (the unwrapped PruningEnv) to read weights and statistics")
        env = view.env
        self.outlier_ratios = block_outlier_ratios(env, self.m)
        return block_plan(view, self.outlier_ratios,
                          lambda values, numel: owl_sparsities(values, view.target_sparsity, self.lam, numel))

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "outlier_ratios": {str(b): r for b, r in self.outlier_ratios.items()}}
