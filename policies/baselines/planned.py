"""Orchestration shared by baselines that fix an allocation at reset and then walk the env toward it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..base import EnvView, StepOutcome
from .allocation import centre_on_target, levels_toward, weighted_rms


def block_plan(view: EnvView, block_values: Mapping[int, float],
               sparsities: Callable[[list[float], list[int]], Sequence[float]]) -> np.ndarray:
    """Per-unit plan from a per-block formula: ``sparsities(values, block_numel)`` over the blocks in order, each
    unit taking its (first) block's ratio, then centred on the target within the cap (OWL's and DLP's shape)."""
    env = view.env
    blocks = sorted(block_values)
    block_numel = [sum(lin.numel for lin in env.structure.linears_in_block(b)) for b in blocks]
    per_block = dict(zip(blocks, sparsities([block_values[b] for b in blocks], block_numel)))
    units = [per_block[unit.blocks[0]] for unit in env.units]
    return centre_on_target(np.array(units), np.asarray(view.unit_numel), view.target_sparsity,
                            view.max_unit_sparsity)


def current_ratios(view: EnvView, info: dict[str, Any]) -> np.ndarray:
    """Unit sparsities from ``info["unit_sparsity"]`` (float64, unlike the float32 observation), in unit order."""
    levels = info["unit_sparsity"]
    return np.array([levels[name] for name in view.unit_names], dtype=np.float64)


class PlannedPolicy:
    """Plan per-unit sparsities at reset (:meth:`plan`), then emit the levels that move toward them.

    See :mod:`policies.baselines.allocation` for how discrete levels reach a non-uniform plan. Rollbacks are
    not expected (baselines run without ``rollback_threshold``); after one, the same levels are proposed
    again, so a rejected plan ends in truncation rather than silently changing the plan.
    """

    name = "planned"

    def __init__(self) -> None:
        self.view: EnvView | None = None
        self.planned: np.ndarray | None = None
        self._last_info: dict[str, Any] = {}

    def plan(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        """Per-unit target sparsities whose numel-weighted mean is ``view.target_sparsity``."""
        raise NotImplementedError

    def reset(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        self.view = view
        planned = np.asarray(self.plan(view, obs, info), dtype=np.float64)
        if planned.shape != (view.n_units,):
            raise ValueError(f"{self.name}: a plan needs one sparsity per unit ({view.n_units}), got {planned.shape}")
        if abs(view.global_sparsity(planned) - view.target_sparsity) > 1e-6:
            raise ValueError(f"{self.name}: the plan's global sparsity {view.global_sparsity(planned):.4f} is not the "
                             f"target {view.target_sparsity}")
        self.planned = planned
        self._last_info = info

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        view = self._require_view()
        self._last_info = info
        return levels_toward(current_ratios(view, info), self.planned, np.asarray(view.unit_numel), step=view.step_size,
                             max_level=view.n_levels - 1, cap=view.max_unit_sparsity, target=view.target_sparsity)

    def observe(self, outcome: StepOutcome) -> None:
        self._last_info = outcome.info

    def record(self) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, Any]:
        """The plan and how far the reached allocation is from it (numel-weighted RMS and max, in sparsity)."""
        view = self._require_view()
        if self.planned is None or "unit_sparsity" not in self._last_info:
            return {}
        reached = current_ratios(view, self._last_info)
        return {"planned": dict(zip(view.unit_names, np.round(self.planned, 6).tolist())),
                "plan_rms_deviation": weighted_rms(reached, self.planned, np.asarray(view.unit_numel)),
                "plan_max_deviation": float(np.abs(reached - self.planned).max())}

    def _require_view(self) -> EnvView:
        if self.view is None:
            raise RuntimeError(f"{self.name}: call reset() before act()")
        return self.view
