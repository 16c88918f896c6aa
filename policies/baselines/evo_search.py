"""``evo-search``: EvoPress-style evolutionary search over per-unit sparsities (arXiv 2410.14649).

The search (a :class:`~policies.base.DirectPolicy`: it sets unit sparsities exactly through
``env.apply_allocation``, off the env's action grid):

1. **Start** from an allocation: uniform (every unit at the target) or the plan of any planned baseline
   (``start="owl-wanda"``, ``"dlp-wanda"``, ...). It becomes the parent and is committed to the env.
2. **Offspring**: ``offspring`` distinct children of the parent, each after ``min(U{1..3}, U{1..3})`` level
   switches (:mod:`policies.baselines.evo_levels`: a switch moves a constant number of weights from one unit
   to another, so every candidate's planned sparsity is the target exactly).
3. **Staged selection** on growing token budgets: every child is scored on the first ``windows[0]`` validation
   windows and the best ``survivors[0]`` go on, and so on; the last survivors are scored on all validation
   windows, where the parent (its all-window fitness kept from when it was scored) is re-entered: a child
   replaces it only if strictly better there. A new parent is committed through ``env.apply_allocation`` (one
   more counted evaluation), so the next children differ from the env's state in a few units and the block
   cache re-runs only the blocks from the first one that changed.
4. Repeat while the next generation's worst-case cost fits the budget.

**Fitness** (:class:`prune_env.candidates.CandidateEvaluator`): ``kl`` (default, EvoPress's), the mean
per-token KL divergence of the candidate's next-token distribution from the dense model's on the validation
windows (dense log-probabilities cached once); ``ppl`` as an option. A candidate's fitness on a window count is
deterministic, so it is computed once (memoised, not counted again).

**Budget**: validation tokens (``budget_tokens``: what ``compare`` hands over from the agent's run, or the
default). Every scored candidate and every commit is counted in the env's ``evaluations`` and
``tokens_evaluated``; a generation starts only if its worst case (every child scored at every stage, one
commit) fits what is left, so the budget is never passed. ``max_generations`` caps the generations too.

Differences from EvoPress's code: the stages score fixed prefixes of the validation windows (EvoPress samples
a fresh random minibatch per stage); whole windows, not token counts; the pruned weights of a level are
computed on demand by the env's own kernel (and cached) instead of a precomputed database on disk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from prune_env.candidates import FITNESSES, CandidateEvaluator

from ..base import EnvView
from .evo_levels import (
    draw_switches,
    level_bounds,
    level_delta,
    level_steps,
    mutate,
    sparsities,
    survivors,
)

# Validation tokens when no budget is given, sized so that `prune-gym compare --policies uniform-wanda,owl-wanda,
# dlp-wanda,alphapruning-wanda,evo-search --target 0.5 --tasks none` at the default sizes finishes within 30
# minutes on 2 CPU cores (issue 13; docs/BENCHMARKS.md, "evo-search's default budget"): 8 validation windows of 256
# tokens, 10,240-12,288 tokens a generation (~35-60 s each there), so 11 generations. 300,000 (25 generations)
# took that compare to 37.7 min; the benchmark tables name their larger budgets (budget_tokens=300000).
DEFAULT_BUDGET_TOKENS = 140_000


def _stage_list(value: Sequence[int] | str | int, what: str) -> tuple[int, ...]:
    """``(1, 2)``, ``"1/2"`` or ``3`` -> a tuple of ints >= 1 (the command line gives ``a/b`` strings)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(",", "/").split("/") if p.strip()]
        try:
            value = [int(p) for p in parts]
        except ValueError as err:
            raise ValueError(f"evo-search: {what} must be integers separated by '/', e.g. '4/2', got {value!r}") from err
    elif isinstance(value, int):
        value = [value]
    out = tuple(int(v) for v in value)
    if any(v < 1 for v in out):
        raise ValueError(f"evo-search: every {what} entry must be >= 1, got {out}")
    return out


class EvoSearchPolicy:
    """Evolutionary allocation search; see the module docstring."""

    name = "evo-search"

    def __init__(self, budget_tokens: int | None = None, offspring: int = 16, survivors: Sequence[int] | str = (4, 2),
                 windows: Sequence[int] | str = (1, 2), levels: int = 8, spread: float = 0.5, max_switches: int = 3,
                 fitness: str = "kl", start: str = "uniform", seed: int = 0, max_generations: int | None = None,
                 progress: bool = False) -> None:
        self.survivors = _stage_list(survivors, "survivors")
        self.windows = _stage_list(windows, "windows")
        if len(self.survivors) != len(self.windows):
            raise ValueError(f"evo-search: survivors {self.survivors} and windows {self.windows} need one entry per "
                             "screening stage each (the last stage, all validation windows, is implied)")
        if list(self.survivors) != sorted(self.survivors, reverse=True) or self.survivors[0] > int(offspring):
            raise ValueError(f"evo-search: survivors {self.survivors} must not grow from stage to stage and start at "
                             f"most at offspring ({offspring})")
        if list(self.windows) != sorted(self.windows):
            raise ValueError(f"evo-search: windows {self.windows} must grow from stage to stage")
        if fitness not in FITNESSES:
            raise ValueError(f"evo-search: fitness must be one of {', '.join(FITNESSES)}, got {fitness!r}")
        if int(offspring) < 1 or int(levels) < 1 or int(max_switches) < 1 or not 0 < float(spread) <= 1:
            raise ValueError("evo-search: offspring, levels and max_switches must be >= 1 and spread in (0, 1], got "
                             f"{offspring}, {levels}, {max_switches}, {spread}")
        if budget_tokens is not None and int(budget_tokens) < 1:
            raise ValueError(f"evo-search: budget_tokens must be >= 1 (validation tokens), got {budget_tokens}")
        if max_generations is not None and int(max_generations) < 0:
            raise ValueError(f"evo-search: max_generations must be >= 0, got {max_generations}")
        self.budget_tokens = DEFAULT_BUDGET_TOKENS if budget_tokens is None else int(budget_tokens)
        self.budget_is_default = budget_tokens is None
        self.offspring, self.levels, self.spread = int(offspring), int(levels), float(spread)
        self.max_switches, self.fitness, self.start, self.seed = int(max_switches), fitness, start, int(seed)
        self.max_generations = None if max_generations is None else int(max_generations)
        self.progress = bool(progress)
        self._progress_sink: Callable[[dict[str, Any]], None] | None = None
        self._obs: dict[str, np.ndarray] = {}
        self._info: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self._summary: dict[str, Any] = {}

    # ------------------------------------------------------------------ Policy / DirectPolicy
    def reset(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        self._obs, self._info = obs, info
        self.history, self._summary = [], {}

    def set_progress(self, write: Callable[[dict[str, Any]], None]) -> None:
        """Where each generation's record is written as it finishes (the runner's steps.jsonl)."""
        self._progress_sink = write

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        raise RuntimeError("evo-search is a direct policy: the runner calls apply(), not act()")

    def observe(self, outcome: Any) -> None:
        """Nothing to learn from env steps: the search takes none."""

    def record(self) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, Any]:
        return dict(self._summary)

    def apply(self, view: EnvView) -> dict[str, Any]:
        """Run the search on ``view.env``; return the final state's record (``ppl``, ``unit_sparsity``,
        ``checkpoint``) and the search's summary."""
        env = view.env
        if env is None:
            raise ValueError("evo-search needs the env itself (EnvView.of(env))")
        t0 = time.perf_counter()
        tokens_at_start = int(env.tokens_evaluated)
        evals_at_start = int(env.evaluations)
        n_windows, seqlen = int(env.tokens.validation.shape[0]), int(env.tokens.validation.shape[1])
        if self.windows[-1] > n_windows:
            raise ValueError(f"evo-search: stage windows {self.windows} need at least {self.windows[-1]} validation "
                             f"windows, the env has {n_windows}: raise reward_eval_samples or pass "
                             f"windows=... (e.g. evo-search:windows=1/{n_windows})")
        numel = np.asarray(view.unit_numel, dtype=np.float64)
        start, delta, steps = self._level_grid(view)
        lo, hi = level_bounds(start, steps, self.levels, view.max_unit_sparsity)
        rng = np.random.default_rng(self.seed)

        def used() -> int:
            return int(env.tokens_evaluated) - tokens_at_start

        full_cost = n_windows * seqlen
        if 2 * full_cost > self.budget_tokens:
            raise ValueError(f"evo-search: a budget of {self.budget_tokens} validation tokens cannot even commit and "
                             f"score the start ({2 * full_cost} tokens: 2 evaluations of {n_windows} windows x "
                             f"{seqlen} tokens); give budget_tokens >= {2 * full_cost}")
        evaluator = CandidateEvaluator(env, fitness=self.fitness, stage_windows=self.windows)
        memo: dict[tuple[tuple[int, ...], int], float] = {}

        def score(k: np.ndarray, windows: int) -> float:
            key = (tuple(int(v) for v in k), windows)
            if key not in memo:
                memo[key] = evaluator.fitness(sparsities(start, steps, k), windows)
            return memo[key]

        parent = np.zeros(len(start), dtype=np.int64)
        info = self._commit(env, start, view)
        parent_fitness = score(parent, n_windows)
        generation_cost = (self.offspring * self.windows[0] + sum(
            s * w for s, w in zip(self.survivors, (*self.windows[1:], n_windows)))) * seqlen + full_cost
        self._entry(generation=0, parent=parent, parent_fitness=parent_fitness, accepted=True, used=used(),
                    evals=int(env.evaluations) - evals_at_start, seconds=time.perf_counter() - t0, ppl=info["ppl"])
        bar = tqdm(desc="evo-search", unit="gen", disable=not self.progress,
                   total=max(0, (self.budget_tokens - used()) // generation_cost))
        generation = 0
        while used() + generation_cost <= self.budget_tokens and (
                self.max_generations is None or generation < self.max_generations):
            generation += 1
            children = self._offspring(parent, lo, hi, rng)
            if not children:
                break  # no distinct child can be made (a tiny model at its bounds)
            pool = children
            for keep, windows in zip(self.survivors, self.windows):
                values = [score(c, windows) for c in pool]
                pool = [pool[i] for i in survivors(values, keep)]
            final = [score(c, n_windows) for c in pool]
            best = survivors([parent_fitness, *final], 1)[0]
            accepted = best > 0
            if accepted:
                parent, parent_fitness = pool[best - 1], final[best - 1]
                info = self._commit(env, sparsities(start, steps, parent), view)
            self._entry(generation=generation, parent=parent, parent_fitness=parent_fitness, accepted=accepted,
                        used=used(), evals=int(env.evaluations) - evals_at_start, seconds=time.perf_counter() - t0,
                        ppl=info["ppl"], best_child=min(final))
            bar.update(1)
            bar.set_postfix(fitness=f"{parent_fitness:.4f}", tokens=used())
        bar.close()
        allocation = sparsities(start, steps, parent)
        self._summary = {
            "budget_tokens": self.budget_tokens, "budget_is_default": self.budget_is_default,
            "tokens_used": used(), "evaluations_used": int(env.evaluations) - evals_at_start,
            "generations": generation, "accepted": sum(1 for h in self.history[1:] if h["accepted"]),
            "fitness": self.fitness, "start": self.start, "final_fitness": parent_fitness,
            "start_fitness": self.history[0]["parent_fitness"], "levels": parent.tolist(),
            "level_delta_weights": delta, "planned_sparsity": float((allocation * numel).sum() / numel.sum()),
            "reference": evaluator.reference_form, "offspring": self.offspring, "survivors": list(self.survivors),
            "windows": [*self.windows, n_windows], "seconds": time.perf_counter() - t0, "history": self.history,
        }
        return {"ppl": info["ppl"], "unit_sparsity": info["unit_sparsity"], "checkpoint": info["checkpoint"],
                "search": {k: v for k, v in self._summary.items() if k != "history"}}

    # ------------------------------------------------------------------ internals
    def _level_grid(self, view: EnvView) -> tuple[np.ndarray, float, np.ndarray]:
        """``(start, delta, steps)``: the start allocation, weights per level and each unit's sparsity per level
        (the search and the rebuilding of its path share them)."""
        start = self._start_allocation(view)
        delta = level_delta(view.unit_numel, view.target_sparsity, self.levels, self.spread)
        return start, delta, level_steps(view.unit_numel, delta)

    def _start_allocation(self, view: EnvView) -> np.ndarray:
        if self.start == "uniform":
            return np.full(view.n_units, float(view.target_sparsity))
        from ..registry import make_policy, spec

        planner = make_policy(self.start)
        plan = getattr(planner, "plan", None)
        if plan is None:
            raise ValueError(f"evo-search: start={self.start!r} is not a planned baseline (one with a fixed plan, "
                             "e.g. owl-wanda, dlp-wanda, alphapruning-wanda); use start=uniform or one of those")
        required = spec(self.start).required_method
        if required is not None and required != view.method:
            raise ValueError(f"evo-search: start={self.start!r} plans for the {required} kernel, the env prunes with "
                             f"{view.method}; pick the start of the same kernel")
        ratios = np.asarray(plan(view, self._obs, self._info), dtype=np.float64)
        if abs(view.global_sparsity(ratios) - view.target_sparsity) > 1e-9:
            raise ValueError(f"evo-search: the start plan's sparsity {view.global_sparsity(ratios)} is not the target")
        return ratios

    def _offspring(self, parent: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Up to ``offspring`` distinct children, none equal to the parent (fewer if the bounds allow fewer)."""
        seen = {tuple(parent.tolist())}
        children: list[np.ndarray] = []
        for _ in range(100 * self.offspring):
            if len(children) == self.offspring:
                break
            child = mutate(parent, lo, hi, draw_switches(rng, self.max_switches), rng)
            key = tuple(child.tolist())
            if key not in seen:
                seen.add(key)
                children.append(child)
        return children

    def _commit(self, env: Any, ratios: np.ndarray, view: EnvView) -> dict[str, Any]:
        """Make ``ratios`` the env's state (one counted evaluation: the env re-measures the validation ppl)."""
        return env.apply_allocation(dict(zip(view.unit_names, (float(r) for r in ratios))))

    def _entry(self, *, generation: int, parent: np.ndarray, parent_fitness: float, accepted: bool, used: int,
               evals: int, seconds: float, ppl: float, best_child: float | None = None) -> None:
        """One generation's record (an accepted one carries the new parent's levels, so the search's path can be
        rebuilt and scored afterwards, e.g. test perplexity against evaluations in scripts/bench_policies.py)."""
        entry = {"generation": generation, "parent_fitness": parent_fitness, "best_child_fitness": best_child,
                 "accepted": accepted, "tokens_used": used, "evaluations_used": evals, "validation_ppl": ppl,
                 "seconds": seconds}
        if accepted:
            entry["levels"] = parent.tolist()
        self.history.append(entry)
        if self._progress_sink is not None:
            self._progress_sink(dict(entry))
        if not math.isfinite(parent_fitness):
            raise FloatingPointError(f"evo-search: non-finite fitness at generation {generation}")

    def allocation_at(self, view: EnvView, levels: Sequence[int]) -> dict[str, float]:
        """The unit sparsities of recorded ``levels`` (a history entry's), for rebuilding the search's path."""
        start, _, steps = self._level_grid(view)
        ratios = sparsities(start, steps, np.asarray(levels))
        return dict(zip(view.unit_names, (float(r) for r in ratios)))
