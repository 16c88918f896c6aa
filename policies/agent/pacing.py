"""Pacing: top up the agent's action so the episode can still reach its target in the steps left (pure).

An LLM (a small one especially) may prune far too little per step and end the episode truncated below the
target, which would make its result incomparable with the baselines (all at the target). Rule: this step
must add at least ``(target - global) / max(steps_left - reserve, 1)`` global sparsity, ``reserve`` steps
being kept for rollbacks. If the agent's action adds less, levels are added one at a time, in passes over the
units from the least important (so the top-up is spread, not piled on one unit: big jumps on one unit trigger
rollbacks), to units with room under the cap (importance ``wanda_z + grad_z``, as in the fallback), so the agent's
own choices are kept and only the shortfall is filled. The top-up is recorded (``topped_up_levels``); the
agent's history shows the applied action. ``pace=False`` turns it off (the agent then owns the pace).
"""

from __future__ import annotations

import numpy as np


def planned_gain(action: np.ndarray, sparsity: np.ndarray, numel: np.ndarray, *, step_size: float, cap: float) -> float:
    """Global sparsity the action would add (numel-weighted, with the per-unit cap)."""
    after = np.minimum(sparsity + action * step_size, cap)
    return float(((after - sparsity) * numel).sum() / numel.sum())


def pace_action(action: np.ndarray, obs: dict[str, np.ndarray], numel: np.ndarray, *, step_size: float,
                n_levels: int, cap: float, reserve: int = 2) -> tuple[np.ndarray, int]:
    """``(action topped up to the required pace, number of levels added)``."""
    sparsity = np.asarray(obs["sparsity"], dtype=np.float64)
    numel = np.asarray(numel, dtype=np.float64)
    remaining = float(obs["target"][0]) - float(obs["global_sparsity"][0])
    steps_left = int(obs["steps_left"][0])
    if remaining <= 1e-9 or steps_left <= 0:
        return action, 0
    required = remaining / max(steps_left - reserve, 1)
    out = np.asarray(action, dtype=np.int64).copy()
    importance = np.asarray(obs["wanda_z"], dtype=np.float64) + np.asarray(obs["grad_z"], dtype=np.float64)
    order = sorted(range(len(out)), key=lambda i: (importance[i], sparsity[i], i))
    added = 0
    while planned_gain(out, sparsity, numel, step_size=step_size, cap=cap) < required - 1e-12:
        grew = False
        for i in order:  # one pass: one more level on each unit that can take it, least important first
            if out[i] < n_levels - 1 and sparsity[i] + (out[i] + 1) * step_size <= cap + 1e-9:
                out[i] += 1
                added += 1
                grew = True
                if planned_gain(out, sparsity, numel, step_size=step_size, cap=cap) >= required - 1e-12:
                    break
        if not grew:
            break  # every unit is at the top level or the cap: nothing more this step
    return out, added
