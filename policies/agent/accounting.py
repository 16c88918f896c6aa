"""Whose pruning was it: the agent's episode gain split into the LLM's own choices, pacing top-ups and fallbacks
(pure).

A report that shows an agent reaching the target must say how much of the way the LLM chose. Per kept step
(not rolled back) the planned per-unit increments are computed as the env computes them
(:meth:`prune_env.env.PruningEnv._planned_ratios`): ``min(s + level * step_size, cap) - s``, all scaled by
the env's common factor ``need / gain`` when the step would overshoot the target. The LLM's levels are
applied first, then pacing's on top, so a unit that pacing pushed into the cap charges the cap to pacing.
On a fallback step both parts are the fallback's. Gains are in global sparsity (numel-weighted), not counts of
levels: one level on a big unit counts more than on a small one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

SHARES = ("own_share", "topped_up_share", "fallback_share")


@dataclass(frozen=True)
class StepGain:
    """Planned global-sparsity gain of one step, by who chose it."""

    own: float = 0.0         # the LLM's validated levels
    topped_up: float = 0.0   # levels pacing added to them
    fallback: float = 0.0    # the fallback action and any pacing on top of it

    @property
    def total(self) -> float:
        return self.own + self.topped_up + self.fallback


def target_factor(sparsity: np.ndarray, numel: np.ndarray, delta: np.ndarray, target: float) -> float:
    """The env's common scale of a step's increments ``delta``: 1, or ``need / gain`` when the step would
    overshoot the target (:meth:`prune_env.env.PruningEnv._planned_ratios`)."""
    w = np.asarray(numel, dtype=np.float64)
    total = float(w.sum())
    gain = float((np.asarray(delta, dtype=np.float64) * w).sum() / total)
    now = float((np.asarray(sparsity, dtype=np.float64) * w).sum() / total)
    if gain > 0 and now + gain > target + 1e-12:
        return max(target - now, 0.0) / gain
    return 1.0


def planned_increments(sparsity: np.ndarray, numel: np.ndarray, levels: np.ndarray, *, step_size: float, cap: float,
                       target: float) -> np.ndarray:
    """Per-unit sparsity the env adds for ``levels``: ``min(s + level * step_size, cap) - s``, scaled onto the
    target when the step would overshoot it (what the outcome memory charges each unit for)."""
    s = np.asarray(sparsity, dtype=np.float64)
    delta = np.maximum(np.minimum(s + np.asarray(levels, dtype=np.float64) * step_size, cap) - s, 0.0)
    return delta * target_factor(s, numel, delta, target)


def step_gain(sparsity: np.ndarray, numel: np.ndarray, own_levels: np.ndarray, paced_levels: np.ndarray, *,
              step_size: float, cap: float, target: float, fallback: bool) -> StepGain:
    """The gain of one step from per-unit sparsity before it, the chosen levels (``own_levels``: the LLM's or
    the fallback's) and the levels applied (``paced_levels`` >= ``own_levels``: after pacing)."""
    s = np.asarray(sparsity, dtype=np.float64)
    w = np.asarray(numel, dtype=np.float64)
    own = np.asarray(own_levels, dtype=np.float64)
    paced = np.asarray(paced_levels, dtype=np.float64)
    if np.any(paced < own):
        raise ValueError(f"paced levels {paced.tolist()} are below the chosen levels {own.tolist()}: pacing only adds")
    total = float(w.sum())
    own_after = np.minimum(s + own * step_size, cap)
    all_after = np.minimum(s + paced * step_size, cap)
    own_delta = np.maximum(own_after - s, 0.0)
    pace_delta = np.maximum(all_after - own_after, 0.0)
    factor = target_factor(s, w, own_delta + pace_delta, target)
    own_gain = factor * float((own_delta * w).sum() / total)
    pace_gain = factor * float((pace_delta * w).sum() / total)
    if fallback:
        return StepGain(fallback=own_gain + pace_gain)
    return StepGain(own=own_gain, topped_up=pace_gain)


def gain_shares(gains: Iterable[StepGain]) -> dict[str, float | None]:
    """``own_share``, ``topped_up_share``, ``fallback_share`` of the summed gains (summing to 1); all None when
    the kept steps gained nothing."""
    own = topped = fallback = 0.0
    for g in gains:
        own, topped, fallback = own + g.own, topped + g.topped_up, fallback + g.fallback
    total = own + topped + fallback
    if total <= 1e-15:
        return dict.fromkeys(SHARES)
    return {"own_share": own / total, "topped_up_share": topped / total, "fallback_share": fallback / total}
