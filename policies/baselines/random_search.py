"""``random-search``: search over allocations with a fixed budget of perplexity evaluations (env steps).

The fair comparison for an agent is a search that may evaluate as many allocations as the agent took env
steps (``budget``; every env step is one reward-perplexity evaluation). To make each candidate cost one
step, all candidates share a base: every unit at ``base = (ceil(target / step) - span) * step`` (a few
uniform steps, checkpointed once). A candidate is a level vector ``l`` in ``{0..n_levels-1}^L`` whose step
reaches the target; the env scales it to land exactly, so unit ``i`` ends at ``base + c * step * l_i``
(``c`` common). After each candidate the base checkpoint is restored (``Restore``: no evaluation); when
the budget is spent the best candidate's checkpoint is restored and the episode ends there.

``mode="evolve"`` (default) is a (1+1) evolutionary search in the spirit of EvoPress: the first candidate is
uniform (all levels equal), each next one moves ``moves`` levels between random unit pairs of the best so far
(the mean, hence the scale, is kept); ``mode="random"`` draws every candidate uniformly (then repairs it to
reach the target). Candidates are scored by the reward perplexity.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..base import EnvView, Restore, StepOutcome
from .allocation import GRID_EPS, grid_levels
from .planned import current_ratios

MODES = ("evolve", "random")


def base_sparsity(target: float, step: float, span: int) -> float:
    """The shared starting point: ``span`` steps below the target's grid ceiling (never below 0)."""
    return max(0.0, (math.ceil(target / step - GRID_EPS) - span) * step)


def base_steps(base: float, step: float, max_level: int) -> int:
    """Env steps from the dense model to the uniform base."""
    return math.ceil(round(base / step) / max_level) if base > 0 else 0


def repair(levels: np.ndarray, numel: np.ndarray, need_levels: float, max_level: int,
           rng: np.random.Generator) -> np.ndarray:
    """Raise random units (with room) one level at a time until the numel-weighted mean level reaches
    ``need_levels`` (so the step reaches the target)."""
    levels = levels.copy()
    w = np.asarray(numel, dtype=np.float64) / float(np.sum(numel))
    while float((levels * w).sum()) < need_levels - 1e-9:
        room = np.flatnonzero(levels < max_level)
        levels[rng.choice(room)] += 1
    return levels


def mutate(levels: np.ndarray, moves: int, max_level: int, rng: np.random.Generator) -> np.ndarray:
    """Move one level from a random unit (level > 0) to another (level < max) ``moves`` times."""
    levels = levels.copy()
    for _ in range(moves):
        donors, takers = np.flatnonzero(levels > 0), np.flatnonzero(levels < max_level)
        if not len(donors) or not len(takers):
            break
        i, j = rng.choice(donors), rng.choice(takers)
        if i != j:
            levels[i] -= 1
            levels[j] += 1
    return levels


class RandomSearchPolicy:
    """Backtracking search policy; see the module docstring."""

    name = "random-search"

    def __init__(self, budget: int = 20, span: int = 2, mode: str = "evolve", moves: int = 2, seed: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"random-search: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if budget < 1 or span < 1 or moves < 1:
            raise ValueError(f"random-search: budget, span and moves must be >= 1, got {budget}, {span}, {moves}")
        self.budget, self.span, self.mode, self.moves, self.seed = int(budget), int(span), mode, int(moves), seed
        self.view: EnvView | None = None

    # ------------------------------------------------------------------ Policy
    def reset(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        max_level = view.n_levels - 1
        span = min(self.span, max_level)
        self.base = base_sparsity(view.target_sparsity, view.step_size, span)
        self.need_levels = (view.target_sparsity - self.base) / view.step_size
        needed = base_steps(self.base, view.step_size, max_level) + 1
        if self.budget < needed:
            raise ValueError(f"random-search: a budget of {self.budget} evaluations cannot reach the target: the "
                             f"shared base takes {needed - 1} steps and each candidate one more (give >= {needed})")
        if self.budget > view.max_steps:
            raise ValueError(f"random-search: budget {self.budget} exceeds the env's max_steps {view.max_steps}; "
                             "raise max_steps")
        self.view, self.rng = view, np.random.default_rng(self.seed)
        self.used = 0
        self.base_checkpoint: int | None = None
        self.at_base = False
        self.best: tuple[float, int, np.ndarray] | None = None  # (ppl, checkpoint, levels)
        self.candidates: list[dict[str, Any]] = []
        self._pending: np.ndarray | None = None
        self._current_checkpoint = info.get("checkpoint")
        self._phase = "base"

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray | Restore:
        view = self.view
        if view is None:
            raise RuntimeError("random-search: call reset() before act()")
        max_level = view.n_levels - 1
        if self.base_checkpoint is None:
            base_levels = grid_levels(current_ratios(view, info), np.full(view.n_units, self.base),
                                      step=view.step_size, max_level=max_level)
            if base_levels.any():
                self._phase = "base"
                return base_levels
            self.base_checkpoint, self.at_base = int(info["checkpoint"]), True
        if self.used >= self.budget:
            if self.best is None:
                raise RuntimeError("random-search: budget spent before any candidate was evaluated")
            return Restore(self.best[1], final=True)
        if not self.at_base:
            self.at_base = True
            return Restore(self.base_checkpoint)
        self._phase = "candidate"
        self._pending = self._propose()
        return self._pending

    def observe(self, outcome: StepOutcome) -> None:
        self.used += 1
        self._current_checkpoint = outcome.info.get("checkpoint")
        if self._phase != "candidate":
            return
        self.at_base = False
        ppl = float(outcome.info["ppl"])
        entry = {"levels": self._pending.tolist(), "ppl": ppl, "checkpoint": int(outcome.info["checkpoint"]),
                 "reached_target": bool(outcome.terminated)}
        self.candidates.append(entry)
        if outcome.terminated and (self.best is None or ppl < self.best[0]):
            self.best = (ppl, entry["checkpoint"], self._pending.copy())

    def wants_more(self) -> bool:
        return self.used < self.budget or (self.best is not None and self._current_checkpoint != self.best[1])

    def record(self) -> dict[str, Any]:
        return {"phase": self._phase, "evaluations_used": self.used, "candidates": len(self.candidates),
                "best_ppl": None if self.best is None else self.best[0]}

    def summary(self) -> dict[str, Any]:
        return {"budget": self.budget, "base": self.base, "candidates": self.candidates,
                "best_levels": None if self.best is None else self.best[2].tolist()}

    # ------------------------------------------------------------------ search
    def _propose(self) -> np.ndarray:
        view = self.view
        max_level = view.n_levels - 1
        numel = np.asarray(view.unit_numel)
        if self.best is None:  # first candidate: uniform
            return np.full(view.n_units, min(max_level, math.ceil(self.need_levels - GRID_EPS)), dtype=np.int64)
        if self.mode == "random":
            draw = self.rng.integers(0, max_level + 1, size=view.n_units)
        else:
            draw = mutate(self.best[2], self.moves, max_level, self.rng)
        return repair(draw.astype(np.int64), numel, self.need_levels, max_level, self.rng)
