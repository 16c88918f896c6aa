"""The agent's outcome memory: what pruning each unit has cost so far, and the steps that were rolled back
(pure functions of the episode's outcomes).

This is the paper's self-reflection made concrete: instead of asking a (possibly small) model to infer from
raw history lines which units hurt, the prompt states it. Per step the memory keeps the planned per-unit
sparsity increments (:func:`policies.agent.accounting.planned_increments`: cap and the env's scaling onto the
target applied) and the change in log-perplexity the step caused (the rejected perplexity for a rolled-back
step). A step's change is split over its units in proportion to the weights each added
(``increment x numel``); a unit's (or a group's) **cost** is its attributed change summed over the steps
that touched it, rolled-back ones included, divided by the levels it was given in them (``increment /
step_size``; for a group, the group's numel-weighted sparsity increase in levels), with the number of steps
it rests on. Units never touched have no cost yet (``None``).

**Barred levels**: a rolled-back step restores the state it started from, and the env is deterministic, so
choosing the same units at the same or higher levels from that state is rolled back again (a small model
does this, step after step). :func:`bar_rejected` keeps, per unit, the lowest level the model itself chose in
a rolled-back step; :func:`barred_violations` lists the units of a new choice at or above it (the agent asks
again, naming them). A bar holds until a kept step prunes that unit (:func:`release_bars`): while the unit
is as it was, the rest of the model only gets sparser, which does not make the same increment on it cheaper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .accounting import planned_increments


@dataclass(frozen=True)
class Outcome:
    """One step as the memory keeps it."""

    step: int
    added: np.ndarray          # planned sparsity increment per unit
    log_ppl_change: float      # log(perplexity the step produced) - log(perplexity before it)
    rolled_back: bool
    levels: dict[str, int]     # the applied levels by short unit name (for the rollback lines)

    @property
    def ppl_change(self) -> float:
        """Relative perplexity change of the step (before any rollback)."""
        return math.expm1(self.log_ppl_change)


@dataclass(frozen=True)
class Cost:
    """What pruning a unit (or a group of units) has cost so far."""

    per_level: float | None    # attributed change in log-perplexity per level; None: never touched
    steps: int                 # steps that touched it


def outcome_of(step: int, sparsity_before: np.ndarray, levels: np.ndarray, numel: Sequence[int], *, step_size: float,
               cap: float, target: float, ppl_before: float, ppl_after: float, rolled_back: bool,
               short_names: Sequence[str]) -> Outcome:
    """The memory's record of one step, from the per-unit sparsity before it, the applied levels and the
    perplexity before and after (the rejected one when rolled back)."""
    added = planned_increments(sparsity_before, np.asarray(numel), levels, step_size=step_size, cap=cap, target=target)
    names = {short_names[i]: int(lv) for i, lv in enumerate(np.asarray(levels)) if lv}
    return Outcome(step, added, math.log(ppl_after) - math.log(ppl_before), rolled_back, names)


def attributed_change(outcome: Outcome, numel: Sequence[int]) -> np.ndarray:
    """The step's change in log-perplexity split over its units by the weights each added (sums to it)."""
    weights = outcome.added * np.asarray(numel, dtype=np.float64)
    total = float(weights.sum())
    if total <= 0:
        return np.zeros_like(weights)
    return outcome.log_ppl_change * weights / total


def costs(outcomes: Sequence[Outcome], numel: Sequence[int], step_size: float,
          groups: Sequence[Sequence[int]]) -> list[Cost]:
    """The cost of each group of unit indices (singletons for a per-unit table), in the order given."""
    w = np.asarray(numel, dtype=np.float64)
    change = np.zeros(len(w))
    levels_added = np.zeros(len(w))   # in weights x levels, so a group's levels are numel-weighted
    touched = [set() for _ in range(len(w))]
    for o in outcomes:
        change += attributed_change(o, numel)
        levels_added += o.added / step_size * w
        for i in np.flatnonzero(o.added > 0):
            touched[i].add(o.step)
    out = []
    for members in groups:
        idx = list(members)
        levels = float(levels_added[idx].sum() / w[idx].sum())
        steps = len(set().union(*(touched[i] for i in idx)))
        out.append(Cost(float(change[idx].sum()) / levels if levels > 0 else None, steps))
    return out


def bar_rejected(barred: dict[int, int], own_levels: np.ndarray) -> dict[int, int]:
    """The bars after a rolled-back step whose own (pre-pacing) levels were ``own_levels``: each unit it chose is
    barred from that level up (the lowest such level over the rolled-back steps while the unit is unchanged)."""
    out = dict(barred)
    for i in np.flatnonzero(np.asarray(own_levels) > 0):
        level = int(np.asarray(own_levels)[i])
        out[int(i)] = min(out.get(int(i), level), level)
    return out


def barred_violations(levels: np.ndarray, barred: dict[int, int]) -> list[tuple[int, int, int]]:
    """``(unit, chosen level, barred from)`` for every unit ``levels`` puts at or above its bar."""
    levels = np.asarray(levels)
    return [(i, int(levels[i]), bar) for i, bar in sorted(barred.items()) if levels[i] >= bar > 0]


def release_bars(barred: dict[int, int], kept_levels: np.ndarray) -> dict[int, int]:
    """The bars after a kept step that applied ``kept_levels``: the units it pruned are free again."""
    kept = np.asarray(kept_levels)
    return {i: level for i, level in barred.items() if kept[i] == 0}
