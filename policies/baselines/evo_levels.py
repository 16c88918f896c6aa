"""Pure math of ``evo-search``: EvoPress's level database, level-switch mutations and staged selection.

**Levels** (EvoPress, arXiv 2410.14649, ``prune.py``): every unit ``i`` has sparsity levels
``s_i(k) = start_i + k * delta / numel_i`` for integer ``k`` in ``[lo_i, hi_i]`` (``|k| <= levels``, inside
``[0, cap]``): one level is the same number of weights ``delta`` in every unit. A *level switch* lowers one unit
by a level and raises another by one, so it moves ``delta`` weights from one unit to another and the global
sparsity never changes: with ``sum(k) = 0`` it is exactly the start's. ``delta = spread * min(t, 1 - t) /
levels * median_i numel_i`` (EvoPress: ``0.5 * min(t, 1 - t) / num_levels * hidden^2``; hidden^2 is the size of
a Llama's q and o projections, the median of its seven linears, so the median is the same rule for any
architecture and granularity), so a unit of median size spans ``start +- spread * min(t, 1 - t)``, smaller
units (GQA's k and v) more, larger ones (the MLP's) less, as in EvoPress; with equal units (blocks) every unit
spans the same range.

**Mutation**: ``min(U{1..3}, U{1..3})`` switches (biased to few), each between a random unit that can go down
and a different random unit that can go up.

**Selection** keeps the ``n`` lowest fitnesses, ties broken by candidate order (so the parent, listed first,
wins ties).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPS = 1e-9


def level_delta(numel: Sequence[int], target: float, levels: int, spread: float) -> float:
    """Weights per level, the same for every unit (EvoPress's ``weights_diff``), from the median unit size."""
    return spread * min(target, 1.0 - target) / levels * float(np.median(np.asarray(numel, dtype=np.float64)))


def level_steps(numel: Sequence[int], delta: float) -> np.ndarray:
    """Sparsity per level of each unit: ``delta / numel_i``."""
    return delta / np.asarray(numel, dtype=np.float64)


def level_bounds(start: np.ndarray, steps: np.ndarray, levels: int, cap: float) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``: the lowest and highest level of each unit, within ``levels`` of the start and inside
    ``[0, cap]``."""
    start = np.asarray(start, dtype=np.float64)
    down = np.floor(start / steps + EPS).astype(np.int64)
    up = np.floor((cap - start) / steps + EPS).astype(np.int64)
    return -np.minimum(down, levels), np.minimum(np.maximum(up, 0), levels)


def sparsities(start: np.ndarray, steps: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Unit sparsities at levels ``k``, clipped to ``[0, 1]`` so that rounding at a bound (``start - k * step``
    a few ulps below 0) never yields a negative sparsity."""
    s = np.asarray(start, dtype=np.float64) + np.asarray(k, dtype=np.float64) * steps
    return np.clip(s, 0.0, 1.0)


def draw_switches(rng: np.random.Generator, most: int = 3) -> int:
    """How many level switches an offspring gets: ``min(U{1..most}, U{1..most})``."""
    return int(min(rng.integers(1, most + 1), rng.integers(1, most + 1)))


def mutate(k: np.ndarray, lo: np.ndarray, hi: np.ndarray, switches: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` after ``switches`` level switches (each: one unit down a level, a different one up); stops early when
    no switch is possible. The sum of the levels is unchanged."""
    k = np.asarray(k, dtype=np.int64).copy()
    for _ in range(switches):
        down = np.flatnonzero(k > lo)
        if not len(down):
            break
        i = int(rng.choice(down))
        up = np.flatnonzero((k < hi) & (np.arange(len(k)) != i))
        if not len(up):
            break
        j = int(rng.choice(up))
        k[i] -= 1
        k[j] += 1
    return k


def survivors(fitness: Sequence[float], n: int) -> list[int]:
    """Indices of the ``n`` lowest fitnesses, lowest first; ties keep the earlier candidate first."""
    order = sorted(range(len(fitness)), key=lambda i: (fitness[i], i))
    return order[:n]
