"""``dlp-<kernel>``: DLP's dynamic layer-wise sparsity (Chen et al., ICML 2025, ironartisan/DLP).

Per decoder block ``b``: the *unimportance* ``U_b`` = mean of the block's Wanda scores ``|W_ij| * ||X_j||_2``
(all its linears together). The relative importance ``I_b = 1 - U_b / sum(U)`` is min-max scaled to
``[0, 2 * alpha]`` and centred on the target density: ``keep_b = norm_b - mean(norm) + (1 - target)``, so
``r_b = target - (norm_b - mean(norm))``. Blocks whose weights and inputs are larger on average are pruned
more. ``alpha`` follows the target (0.04 / 0.10 / 0.15 at 50 / 60 / 70%, linear in between). Like OWL, scores
use the dense weights and the env's dense one-shot calibration statistics; a linear unit takes its block's
ratio (DLP defines block ratios only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..base import EnvView
from .owl import owl_sparsities
from .planned import PlannedPolicy, block_plan
from .uniform import check_method

if TYPE_CHECKING:
    from prune_env.env import PruningEnv

DLP_KERNELS = ("wanda", "sparsegpt")
# (target sparsity, alpha): the paper's settings per our research notes; the code's default (run.py, scripts/) is 0.15 at 70%
DLP_ALPHA_SCHEDULE = ((0.5, 0.04), (0.6, 0.10), (0.7, 0.15))


def dlp_alpha(target: float, schedule: Sequence[tuple[float, float]] = DLP_ALPHA_SCHEDULE) -> float:
    """DLP's ``alpha`` for ``target``: the schedule's value, linearly interpolated between its targets and
    held constant outside them."""
    xs, ys = zip(*sorted(schedule))
    return float(np.interp(target, xs, ys))


def mean_wanda_score(weights: Sequence[torch.Tensor], act_norms: Sequence[torch.Tensor]) -> float:
    """Mean of ``|W_ij| * ||X_j||`` over every entry of the ``(out, in)`` matrices ``weights`` together (the
    numel-weighted mean, as DLP concatenates the block's scores); ``act_norms[k]`` has one entry per input."""
    total, count = 0.0, 0
    for w, n in zip(weights, act_norms, strict=True):
        if n.shape != (w.shape[1],):
            raise ValueError(f"an activation norm needs one entry per input feature ({w.shape[1]}), got {tuple(n.shape)}")
        total += float((w.detach().abs().double().sum(dim=0) * n.detach().double().cpu()).sum())
        count += w.numel()
    return total / count


def dlp_sparsities(unimportance: Sequence[float], target: float, alpha: float,
                   weights: Sequence[float] | None = None) -> np.ndarray:
    """DLP's per-block sparsities from the blocks' unimportance ``U`` (mean Wanda scores).

    ``I = 1 - U / sum(U)``; then OWL's scaling: ``norm = (I - min I) / (max I - min I) * 2 alpha`` and
    ``r = target - (norm - mean(norm))``, the mean numel-weighted by ``weights`` (equal blocks: the plain mean,
    as in DLP's code). Equal ``U`` give the uniform allocation.
    """
    u = np.asarray(unimportance, dtype=np.float64)
    if u.ndim != 1 or u.size == 0 or (u < 0).any() or u.sum() <= 0:
        raise ValueError(f"dlp needs non-negative block scores with a positive sum, got {u.tolist()}")
    importance = 1.0 - u / u.sum()
    return owl_sparsities(importance, target, alpha, weights)


def block_mean_scores(env: PruningEnv) -> dict[int, float]:
    """``{block index: U_b}`` from the env's dense weights and one-shot activation norms."""
    if not env.stats:
        raise ValueError(f"DLP needs Wanda activation statistics, which an env with method={env.config.method!r} "
                         "does not collect: use method 'wanda' or 'sparsegpt'")
    scores = {}
    for block in sorted({b for unit in env.units for b in unit.blocks}):
        linears = env.structure.linears_in_block(block)
        scores[block] = mean_wanda_score([env.dense.get(lin.name) for lin in linears],
                                         [env.stats[lin.name].act_norm for lin in linears])
    return scores


class DlpPolicy(PlannedPolicy):
    """Plan DLP's allocation (one ratio per block; a linear unit takes its block's) and walk to it."""

    def __init__(self, kernel: str = "wanda", alpha: float | None = None) -> None:
        super().__init__()
        if kernel not in DLP_KERNELS:
            raise ValueError(f"dlp: kernel must be one of {', '.join(DLP_KERNELS)}, got {kernel!r}")
        if alpha is not None and not 0 <= alpha < 0.5:
            raise ValueError(f"dlp: need 0 <= alpha < 0.5 (or None: DLP's schedule by target), got alpha={alpha}")
        self.kernel, self.alpha = kernel, alpha
        self.name = f"dlp-{kernel}"
        self.block_scores: dict[int, float] = {}
        self.used_alpha: float | None = None

    def plan(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        check_method(self.name, self.kernel, view)
        if view.env is None:
            raise ValueError("dlp needs view.env (the unwrapped PruningEnv) to read weights and statistics")
        env = view.env
        self.used_alpha = dlp_alpha(view.target_sparsity) if self.alpha is None else self.alpha
        self.block_scores = block_mean_scores(env)
        return block_plan(view, self.block_scores,
                          lambda values, numel: dlp_sparsities(values, view.target_sparsity, self.used_alpha, numel))

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "alpha": self.used_alpha,
                "block_scores": {str(b): s for b, s in self.block_scores.items()}}
