"""``alphapruning-<kernel>``: AlphaPruning's heavy-tailed layer-wise sparsity (Lu et al., NeurIPS 2024,
haiquanlu/AlphaPruning).

Per prunable matrix ``W``: the empirical spectral density (ESD) is the eigenvalues of ``W^T W`` (the squared
singular values of ``W``); ``alpha`` is the exponent of a power law fitted to its tail by the Hill
(maximum-likelihood) estimator, with the tail start ``xmin`` chosen among the eigenvalues near the ESD's peak
by the smallest Kolmogorov-Smirnov distance (the authors' ``alpha_peak`` metric). A smaller ``alpha`` (a
heavier tail) marks a better-trained matrix, which is pruned less: the unit metrics ``a`` map linearly to
``q = (1 - eps) + 2 eps (a - min a) / (max a - min a)`` and the sparsities are ``r = q * target * sum(n) /
sum(n * q)`` (``n``: numel), whose numel-weighted mean is the target. Block-wise (the authors' default):
a block's metric is the plain mean of its matrices' alphas. Per linear (``mapping="linear"``): each matrix's
own alpha. ``eps`` is the authors' per kernel (magnitude 0.5, Wanda 0.3, SparseGPT 0.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..base import EnvView
from .allocation import centre_on_target
from .planned import PlannedPolicy
from .uniform import check_method

if TYPE_CHECKING:
    from prune_env.env import PruningEnv

ALPHA_KERNELS = ("magnitude", "wanda", "sparsegpt")
# the authors' epsilon per kernel for LLaMA-2-7B (their scripts/llama2_7b.sh; main.py's default is 0.3)
ALPHA_EPSILON = {"magnitude": 0.5, "wanda": 0.3, "sparsegpt": 0.2}
ESD_BINS = 100          # histogram bins of log10(eigenvalues) that locate the ESD's peak
XMIN_LOW, XMIN_HIGH = 0.95, 1.5  # xmin candidates around the peak (see alpha_peak for the low end)
MAPPINGS = ("block", "linear")


def esd(weight: torch.Tensor) -> np.ndarray:
    """The ascending non-trivial eigenvalues of ``W^T W``: the squared singular values of ``W`` (float64)."""
    s = torch.linalg.svdvals(weight.detach().to(torch.float64).cpu())
    return np.sort(s.numpy() ** 2)


def hill_fits(eigs: np.ndarray, indices: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Hill estimates of the tail exponent with ``xmin = eigs[i]`` for each ``i`` in ``indices`` (``eigs``
    ascending), and the Kolmogorov-Smirnov distance of each power law to its tail:
    ``alpha = 1 + n / sum_{j>=i} log(x_j / x_i)`` with ``n = N - i`` tail points and
    ``D = max_k |1 - (x_{i+k} / x_i)^(1 - alpha) - k / n|`` (``D = 1`` when ``alpha <= 1``).
    Vectorised over ``chunk`` candidates at a time (a ``chunk x N`` array)."""
    eigs = np.asarray(eigs, dtype=np.float64)
    indices = np.asarray(indices, dtype=np.int64)
    logs = np.log(eigs)
    big_n = eigs.size
    n = (big_n - indices).astype(np.float64)
    suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = sum_{j>=i} log x_j
    denominator = suffix[indices] - n * logs[indices]
    if (denominator <= 0).any():
        i = int(indices[np.argmax(denominator <= 0)])
        raise ValueError(f"the ESD tail from index {i} is flat (all {big_n - i} eigenvalues equal {eigs[i]:.6g}): "
                         "a power-law exponent is undefined")
    alphas = 1.0 + n / denominator
    distances = np.ones_like(alphas)
    j = np.arange(big_n)
    for start in range(0, indices.size, chunk):
        idx, a, nn = indices[start:start + chunk], alphas[start:start + chunk], n[start:start + chunk]
        k = j[None, :] - idx[:, None]  # position within the tail; < 0 before it
        log_ratio = np.clip(logs[None, :] - logs[idx][:, None], 0.0, None)
        gap = np.abs(1.0 - np.exp((1.0 - a)[:, None] * log_ratio) - k / nn[:, None])
        d = np.where(k >= 0, gap, 0.0).max(axis=1)
        distances[start:start + chunk] = np.where(a > 1, d, 1.0)
    return alphas, distances


def hill_fit(eigs: np.ndarray, i: int) -> tuple[float, float]:
    """:func:`hill_fits` for one ``xmin = eigs[i]``: ``(alpha, D)``."""
    alphas, distances = hill_fits(eigs, np.array([i]))
    return float(alphas[0]), float(distances[0])


def esd_peak(eigs: np.ndarray, bins: int = ESD_BINS) -> float:
    """The ESD's peak: the left edge of the fullest of ``bins`` equal bins of ``log10(eigs)``, as an eigenvalue."""
    logs = np.log10(np.asarray(eigs, dtype=np.float64))
    counts, edges = np.histogram(logs, bins=bins, range=(float(logs.min()), float(logs.max())))
    return float(10.0 ** edges[int(np.argmax(counts))])


def alpha_peak(eigs: np.ndarray, bins: int = ESD_BINS) -> float:
    """AlphaPruning's ``alpha_peak`` of an ESD (``net_esd_estimator(fix_fingers="xmin_peak")``).

    Every eigenvalue from the smallest to the second largest, up to ``1.5 * peak``, is a candidate ``xmin``;
    each gets :func:`hill_fits`, and the alpha of the smallest KS distance wins (the first on ties). The
    authors' code compares the candidates with a low bound of ``log10(0.95 * peak)`` (a log of the intended
    ``0.95 * peak``) against the eigenvalues themselves; we keep that, since it defines their published alphas:
    it drops only eigenvalues below that log (none when ``peak <= 1 / 0.95``). When no candidate remains the
    authors' arrays leave alpha 0 (the first entry); so does this.
    """
    eigs = np.sort(np.asarray(eigs, dtype=np.float64))
    if eigs.size < 2:
        raise ValueError(f"an ESD needs at least 2 eigenvalues to fit a power law, got {eigs.size}")
    if not np.isfinite(eigs).all() or eigs[0] <= 0:
        raise ValueError("the ESD has zero, negative or non-finite eigenvalues (a rank-deficient or broken "
                         "matrix): AlphaPruning's Hill estimator needs a positive spectrum")
    peak = esd_peak(eigs, bins)
    low, high = math.log10(XMIN_LOW * peak), XMIN_HIGH * peak
    # the authors' loop skips xmin < low and stops at the first xmin > high (eigs are ascending)
    candidates = np.arange(eigs.size - 1)
    above = np.nonzero(eigs[:-1] > high)[0]
    if above.size:
        candidates = candidates[:above[0]]
    candidates = candidates[eigs[candidates] >= low]
    if candidates.size == 0:
        return 0.0  # the authors' arrays: alpha 0 at the first entry
    alphas, distances = hill_fits(eigs, candidates)
    if candidates[0] != 0 and distances.min() >= 1.0:
        return 0.0  # argmin over D's all 1 is entry 0, which was no candidate: alpha 0
    return float(alphas[int(np.argmin(distances))])


def alphapruning_sparsities(metrics: Sequence[float], numel: Sequence[float], target: float,
                            epsilon: float) -> np.ndarray:
    """AlphaPruning's linear mapping: ``q = (1 - eps) + 2 eps (a - min a) / (max a - min a)``, then
    ``r = q * target * sum(n) / sum(n * q)`` (numel-weighted mean = target). Equal metrics: uniform."""
    a = np.asarray(metrics, dtype=np.float64)
    n = np.asarray(numel, dtype=np.float64)
    if a.shape != n.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need one metric per unit size, got {a.shape} metrics and {n.shape} sizes")
    spread = a.max() - a.min()
    q = np.ones_like(a) if spread == 0 else (1 - epsilon) + (a - a.min()) / spread * (2 * epsilon)
    return q * (target * n.sum() / float((n * q).sum()))


def linear_alphas(env: PruningEnv, bins: int = ESD_BINS) -> dict[str, float]:
    """``{linear name: alpha_peak}`` of every prunable linear's dense weight."""
    return {lin.name: alpha_peak(esd(env.dense.get(lin.name)), bins) for lin in env.structure.linears}


def unit_metrics(env: PruningEnv, alphas: dict[str, float], mapping: str) -> np.ndarray:
    """One metric per env unit: its block's mean alpha (``"block"``) or its own linear's alpha (``"linear"``)."""
    if mapping == "linear":
        if env.config.granularity != "linear":
            raise ValueError("alphapruning mapping='linear' needs an env with granularity='linear' (one unit per "
                             f"linear); this env's granularity is {env.config.granularity!r}: use mapping='block'")
        return np.array([alphas[unit.linears[0].name] for unit in env.units])
    block_alpha = {b: float(np.mean([alphas[lin.name] for lin in env.structure.linears_in_block(b)]))
                   for b in sorted({lin.block for lin in env.structure.linears})}
    return np.array([block_alpha[unit.blocks[0]] for unit in env.units])


class AlphaPruningPolicy(PlannedPolicy):
    """Plan AlphaPruning's allocation and walk to it. ``mapping=None`` follows the env's granularity: block
    units get the block-wise mapping, linear units the per-linear one (``mapping="block"`` on a linear env
    gives every linear its block's ratio, the authors' default there)."""

    def __init__(self, kernel: str = "wanda", epsilon: float | None = None, mapping: str | None = None) -> None:
        super().__init__()
        if kernel not in ALPHA_KERNELS:
            raise ValueError(f"alphapruning: kernel must be one of {', '.join(ALPHA_KERNELS)}, got {kernel!r}")
        if epsilon is not None and not 0 <= epsilon < 1:
            raise ValueError(f"alphapruning: need 0 <= epsilon < 1 (or None: the authors' value for {kernel}), "
                             f"got {epsilon}")
        if mapping is not None and mapping not in MAPPINGS:
            raise ValueError(f"alphapruning: mapping must be one of {', '.join(MAPPINGS)} or None, got {mapping!r}")
        self.kernel, self.mapping = kernel, mapping
        self.epsilon = ALPHA_EPSILON[kernel] if epsilon is None else float(epsilon)
        self.name = f"alphapruning-{kernel}"
        self.alphas: dict[str, float] = {}
        self.unit_alphas: np.ndarray | None = None

    def plan(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        check_method(self.name, self.kernel, view)
        if view.env is None:
            raise ValueError("alphapruning needs view.env (the unwrapped PruningEnv) to read the dense weights")
        env = view.env
        mapping = self.mapping or ("linear" if view.granularity == "linear" else "block")
        self.alphas = linear_alphas(env)
        self.unit_alphas = unit_metrics(env, self.alphas, mapping)
        numel = np.asarray(view.unit_numel, dtype=np.float64)
        ratios = alphapruning_sparsities(self.unit_alphas, numel, view.target_sparsity, self.epsilon)
        return centre_on_target(ratios, numel, view.target_sparsity, view.max_unit_sparsity)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "epsilon": self.epsilon, "alphas": dict(self.alphas)}
