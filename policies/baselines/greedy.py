"""``greedy-sensitivity``: each step prunes the least sensitive units by the observed z-scores.

The agent's information without the LLM (the ablation): sensitivity = ``wanda_weight * wanda_z +
grad_weight * grad_z`` from the current observation. Each step raises the ``k`` least sensitive units that
still have room by the largest level, ``k = ceil(fraction * L)``, raised when needed so the target is
reachable in the steps left. Profiles are recomputed on the pruned weights, so a unit's score rises as it
is pruned and the choice spreads (the env's Wanda profile is the 10th percentile of surviving scores).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..base import EnvView, StepOutcome
from .planned import current_ratios


def pick_least_sensitive(sensitivity: np.ndarray, room: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` units with room (``room`` True) and the lowest sensitivity (ties: lower index)."""
    candidates = np.flatnonzero(room)
    order = candidates[np.argsort(sensitivity[candidates], kind="stable")]
    return order[:k]


def units_needed(need: float, steps_left: int, unit_gain: float, n_units: int) -> int:
    """Units to raise per step so that ``need`` (global sparsity) is covered in ``steps_left`` steps, when
    one unit raised by the largest level adds about ``unit_gain`` of global sparsity."""
    if need <= 0:
        return 0
    return min(n_units, math.ceil(need / (max(steps_left, 1) * unit_gain) - 1e-9))


class GreedySensitivityPolicy:
    name = "greedy-sensitivity"

    def __init__(self, fraction: float = 0.25, wanda_weight: float = 1.0, grad_weight: float = 1.0) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"greedy-sensitivity: fraction must be in (0, 1], got {fraction}")
        self.fraction, self.wanda_weight, self.grad_weight = fraction, wanda_weight, grad_weight
        self.view: EnvView | None = None
        self._chosen: list[str] = []

    def reset(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        self.view = view

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        view = self.view
        if view is None:
            raise RuntimeError("greedy-sensitivity: call reset() before act()")
        ratios = current_ratios(view, info)
        max_level = view.n_levels - 1
        room = ratios < view.max_unit_sparsity - 1e-12
        sensitivity = (self.wanda_weight * obs["wanda_z"].astype(np.float64)
                       + self.grad_weight * obs["grad_z"].astype(np.float64))
        unit_gain = max_level * view.step_size / view.n_units
        need = view.target_sparsity - view.global_sparsity(ratios)
        k = max(math.ceil(self.fraction * view.n_units), units_needed(need, int(obs["steps_left"][0]), unit_gain,
                                                                     view.n_units))
        chosen = pick_least_sensitive(sensitivity, room, k)
        self._chosen = [view.unit_names[i] for i in chosen]
        levels = np.zeros(view.n_units, dtype=np.int64)
        levels[chosen] = max_level
        return levels

    def observe(self, outcome: StepOutcome) -> None:
        pass

    def record(self) -> dict[str, Any]:
        return {"chosen": list(self._chosen)}
