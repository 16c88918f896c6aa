"""Pacing: top up the agent's action so the episode reaches its target in the steps left, evenly (pure).

An LLM (a small one especially) may prune far too little per step and end the episode truncated below the
target, which would make its result incomparable with the baselines (all at the target). The plan of a step
(:func:`pace_plan`), from what is missing ``R``, the steps left ``n`` and the rollbacks so far:

* ``reserve_left = min(reserve - rollbacks, n - 1)`` (at least 0): spare steps kept for rollbacks. A rollback
  spends one (a step is lost, and one spare step with it), so the pace does not change after a rollback the
  reserve covers; only rollbacks past the reserve make the remaining steps larger.
* ``required = R / (n - reserve_left)``: what is missing, spread evenly over the steps that are not spare
  (no cliff at the end: kept steps of ``required`` each land on the target with the reserve untouched).
* ``bound = max(largest kept step's gain so far, R / n)``: pacing never adds more than this in one step, a
  size a kept step has already survived or the bare even pace; ``R / n`` is all of ``R`` at the last step,
  so the last step can always finish.
* ``limit``: right after a rollback, pacing keeps the step under half the rejected step's gain (but not
  under the even pace ``R / n``), so it does not repeat a step the threshold just rejected (the same state and
  the same top-up would be rejected again, spending the reserve step by step).

:func:`pace_action` adds levels (``required - chosen gain``, at most ``bound``) one at a time, in passes over
the units in :func:`policies.agent.ranking.unit_order` (the cheapest by the outcome memory's measured cost
per level among units within ``band`` of the global sparsity, units of a step just rolled back last, the least important ``wanda_z + grad_z`` among equals and
before anything is measured; the fallback uses the same order), so the top-up is spread rather than piled on
one unit, and only to units with room under the cap. The agent's own choices are kept; only the shortfall is filled. Gains are in global sparsity
(numel-weighted, with the cap and the env's scaling onto the target). ``pace=False`` turns it off.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from .accounting import planned_increments
from .ranking import unit_order

# Comparisons of gains tolerate float32 rounding: the observation (``obs["sparsity"]``, ``global_sparsity``) is
# float32, so ``target - global_sparsity`` and the planned gain of the same levels differ by up to ~1e-7; with a
# tighter tolerance the last step's top-up stopped one level short of the target (measured: 59 of the 60 levels
# a 0.100 step needed, so the episode ended at 0.399 of 0.5).
EPS = 1e-6


@dataclass(frozen=True)
class Pace:
    """The pace of one step, in global sparsity."""

    remaining: float     # target - global sparsity
    steps_left: int
    reserve_left: int    # spare steps still kept for rollbacks
    required: float      # remaining / (steps_left - reserve_left): what this step should add
    bound: float         # pacing adds at most this in one step
    limit: float | None = None  # after a rollback: pacing keeps the step's gain under this


def pace_plan(remaining: float, steps_left: int, *, rollbacks: int, reserve: int, largest_kept: float,
              rejected: float | None = None) -> Pace:
    """The pace of a step (see the module docstring); ``rejected``: the gain of the step just rolled back."""
    remaining = max(float(remaining), 0.0)
    steps_left = max(int(steps_left), 0)
    reserve_left = max(min(reserve - rollbacks, steps_left - 1), 0)
    required = remaining / max(steps_left - reserve_left, 1)
    even = remaining / steps_left if steps_left > 0 else remaining
    limit = max(rejected / 2, even) if rejected is not None else None
    return Pace(remaining, steps_left, reserve_left, required, max(float(largest_kept), even), limit)


def planned_gain(action: np.ndarray, sparsity: np.ndarray, numel: np.ndarray, *, step_size: float, cap: float,
                 target: float = 1.0) -> float:
    """Global sparsity the action would add (numel-weighted, with the per-unit cap and the env's scaling onto
    ``target``)."""
    w = np.asarray(numel, dtype=np.float64)
    delta = planned_increments(sparsity, w, action, step_size=step_size, cap=cap, target=target)
    return float((delta * w).sum() / w.sum())


def pace_action(action: np.ndarray, obs: dict[str, np.ndarray], numel: np.ndarray, *, step_size: float,
                n_levels: int, cap: float, pace: Pace, avoid: Collection[int] = (),
                cost: Sequence[float | None] | None = None, band: float | None = None) -> tuple[np.ndarray, int]:
    """``(action topped up towards pace.required, number of levels added)``. The top-up adds at most
    ``pace.bound`` to the action's own gain (and tops up at most to ``pace.limit``); units in the order of
    :func:`unit_order` (``avoid``: units of a step just rolled back, last; ``cost``: measured cost per level)."""
    sparsity = np.asarray(obs["sparsity"], dtype=np.float64)
    numel = np.asarray(numel, dtype=np.float64)
    target = float(obs["target"][0])
    out = np.asarray(action, dtype=np.int64).copy()
    if pace.remaining <= 1e-9 or pace.steps_left <= 0:
        return out, 0

    def gain(levels: np.ndarray) -> float:
        return planned_gain(levels, sparsity, numel, step_size=step_size, cap=cap, target=target)

    own = gain(out)
    ceiling = pace.limit if pace.limit is not None else float("inf")
    want = min(pace.required, own + pace.bound, ceiling)
    if own >= want - EPS:
        return out, 0
    order = unit_order(obs, avoid=avoid, cost=cost, band=band)
    added, current = 0, own
    while current < want - EPS:
        grew = False
        for i in order:  # one pass: one more level on each unit that can take it, cheapest first
            if out[i] >= n_levels - 1 or sparsity[i] + (out[i] + 1) * step_size > cap + 1e-9:
                continue
            out[i] += 1
            after = gain(out)
            if after - own > pace.bound + EPS or after > ceiling + EPS:  # past: a smaller unit may still fit
                out[i] -= 1
                continue
            added, current, grew = added + 1, after, True
            if current >= want - EPS:
                break
        if not grew:
            break  # every unit is at the top level, the cap or the bound: nothing more this step
    return out, added
