"""``random-search``: search over allocations with a fixed budget of validation evaluations.

The fair comparison for an agent is a search that may spend as much validation work as the agent did. The
budget is ``budget_tokens`` (validation tokens evaluated, the env's ``tokens_evaluated`` counter: what
``compare`` hands over from the agent's run, rejected steps included) or, without it, ``budget`` env steps
(every env step is one validation evaluation). The search stops when its next evaluation would pass the
budget; the env's ``max_steps`` does not bound it (the runner lets a search that wants more go on). To make
each candidate cost one
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
DEFAULT_BUDGET = 20  # env steps, when no token budget is given


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


def evaluation_tokens(env: Any) -> int | None:
    """Validation tokens one env step evaluates on ``env`` (the unwrapped PruningEnv: all its validation
    windows), None when unknown (then the first step measures it)."""
    validation = getattr(getattr(env, "tokens", None), "validation", None)
    return None if validation is None else int(validation.numel())


class RandomSearchPolicy:
    """Backtracking search policy; see the module docstring."""

    name = "random-search"

    def __init__(self, budget: int = DEFAULT_BUDGET, span: int = 2, mode: str = "evolve", moves: int = 2,
                 seed: int = 0, budget_tokens: int | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"random-search: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if budget < 1 or span < 1 or moves < 1:
            raise ValueError(f"random-search: budget, span and moves must be >= 1, got {budget}, {span}, {moves}")
        if budget_tokens is not None and int(budget_tokens) < 1:
            raise ValueError(f"random-search: budget_tokens must be >= 1 (validation tokens), got {budget_tokens}")
        self.budget, self.span, self.mode, self.moves, self.seed = int(budget), int(span), mode, int(moves), seed
        self.budget_tokens = None if budget_tokens is None else int(budget_tokens)
        self.view: EnvView | None = None

    # ------------------------------------------------------------------ Policy
    def reset(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        max_level = view.n_levels - 1
        span = min(self.span, max_level)
        self.base = base_sparsity(view.target_sparsity, view.step_size, span)
        self.need_levels = (view.target_sparsity - self.base) / view.step_size
        self.needed = base_steps(self.base, view.step_size, max_level) + 1
        self.view, self.rng = view, np.random.default_rng(self.seed)
        self.used = 0
        self._last_tokens: int | None = None
        self._tokens_at_reset = self._env_tokens()
        self._eval_cost = evaluation_tokens(view.env)
        if self.budget_tokens is not None and self._tokens_at_reset is None:
            raise ValueError("random-search: budget_tokens needs an env that counts its validation tokens "
                             "(PruningEnv.tokens_evaluated); give budget=N (env steps) instead")
        self._check_reachable(self.needed)
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
                self._check_reachable(self.needed - self.used)
                self._phase = "base"
                return base_levels
            self.base_checkpoint, self.at_base = int(info["checkpoint"]), True
        if not self.can_afford(1):
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
        before = self.tokens_used
        self.used += 1
        self._last_tokens = self._env_tokens()
        if self.tokens_used is not None and before is not None and self.tokens_used > before:
            self._eval_cost = max(self._eval_cost or 0, self.tokens_used - before)  # what one step really costs
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
        return self.can_afford(1) or (self.best is not None and self._current_checkpoint != self.best[1])

    def record(self) -> dict[str, Any]:
        return {"phase": self._phase, "evaluations_used": self.used, "tokens_used": self.tokens_used,
                "candidates": len(self.candidates), "best_ppl": None if self.best is None else self.best[0]}

    def summary(self) -> dict[str, Any]:
        return {"budget": self.budget if self.budget_tokens is None else None, "budget_tokens": self.budget_tokens,
                "evaluations_used": self.used, "tokens_used": self.tokens_used, "tokens_per_evaluation":
                self._eval_cost, "base": self.base, "candidates": self.candidates,
                "best_levels": None if self.best is None else self.best[2].tolist()}

    # ------------------------------------------------------------------ budget
    @property
    def tokens_used(self) -> int | None:
        """Validation tokens this episode has evaluated so far (the env's counter since reset)."""
        if self._tokens_at_reset is None:
            return None
        now = self._last_tokens
        return (now if now is not None else self._tokens_at_reset) - self._tokens_at_reset

    def can_afford(self, evaluations: int) -> bool:
        """Whether ``evaluations`` more env steps stay within the budget (tokens: at the cost per evaluation
        measured so far, or the env's own figure before the first step)."""
        if self.budget_tokens is None:
            return self.used + evaluations <= self.budget
        return self.tokens_used + evaluations * (self._eval_cost or 0) <= self.budget_tokens

    def _check_reachable(self, evaluations: int) -> None:
        if self.can_afford(evaluations):
            return
        if self.budget_tokens is None:
            raise ValueError(f"random-search: a budget of {self.budget} evaluations cannot reach the target: the "
                             f"shared base takes {self.needed - 1} steps and each candidate one more (give >= "
                             f"{self.needed})")
        raise ValueError(f"random-search: a budget of {self.budget_tokens} validation tokens cannot reach the "
                         f"target: the shared base takes {self.needed - 1} steps and each candidate one more, "
                         f"{self._eval_cost} tokens each (give >= {self.needed * self._eval_cost})")

    def _env_tokens(self) -> int | None:
        value = getattr(self.view.env, "tokens_evaluated", None) if self.view is not None else None
        return None if value is None else int(value)

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
