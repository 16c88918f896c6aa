"""Pure math for reaching a planned per-unit allocation with the env's discrete levels.

The env adds ``level * step_size`` to a unit per step (capped) and, when a step would overshoot the global
target, scales all of that step's increments by one common factor so the step lands on the target exactly
(``PruningEnv._planned_ratios``; :func:`simulate_step` mirrors it). A plan ``r`` (numel-weighted mean = the
target) is therefore reached in two phases:

* **grid phase**: while some unit is a whole step or more below its plan, raise every unit by the whole
  steps it still needs (at most ``n_levels - 1`` per step). These steps never overshoot the target, so
  the env never scales them; afterwards every residual ``e_i = r_i - s_i`` is below one step.
* **final step**: one step whose levels ``l_i`` the env scales by ``c``, so unit ``i`` ends at
  ``s_i + c * step * l_i``. :func:`final_levels` picks the levels whose scaled result is closest (numel-
  weighted RMS) to the plan. The residuals are then matched to within about ``step / (2 * max_level)``
  per unit instead of ``step / 2`` for plain rounding; the global target is always hit exactly.
"""

from __future__ import annotations

import math

import numpy as np

GRID_EPS = 1e-9


def simulate_step(current: np.ndarray, levels: np.ndarray, numel: np.ndarray, *, step: float, cap: float,
                  target: float) -> np.ndarray:
    """The unit sparsities after a step with ``levels``, exactly as the env computes them."""
    current = np.asarray(current, dtype=np.float64)
    numel = np.asarray(numel, dtype=np.float64)
    proposed = np.minimum(current + np.asarray(levels) * step, cap)
    delta = proposed - current
    total = numel.sum()
    if float((proposed * numel).sum() / total) > target + 1e-12:
        need = target - float((current * numel).sum() / total)
        gain = float((delta * numel).sum() / total)
        proposed = current + delta * (need / gain)
    return np.round(proposed, 12)


def weighted_rms(a: np.ndarray, b: np.ndarray, numel: np.ndarray) -> float:
    """Numel-weighted root mean square of ``a - b`` (how far an allocation is from a plan)."""
    w = np.asarray(numel, dtype=np.float64)
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return math.sqrt(float((w * d * d).sum() / w.sum()))


def grid_levels(current: np.ndarray, plan: np.ndarray, *, step: float, max_level: int) -> np.ndarray:
    """Whole steps each unit still needs toward its plan, at most ``max_level`` (the grid phase)."""
    residual = np.asarray(plan, dtype=np.float64) - np.asarray(current, dtype=np.float64)
    whole = np.floor(residual / step + GRID_EPS)
    return np.clip(whole, 0, max_level).astype(np.int64)


def final_levels(current: np.ndarray, plan: np.ndarray, numel: np.ndarray, *, step: float, max_level: int,
                 cap: float, target: float) -> np.ndarray:
    """Levels of a target-reaching last step whose env-scaled result is closest to ``plan``.

    Candidate per-level increments ``d`` are every ``e_i / k`` (``k = 1..max_level``) and ``step``; for
    each, ``l_i = round(e_i / d)``; the env's actual scaling is simulated and the closest landing kept.
    Falls back to ``max_level`` on every unit below the cap (always lands, since ``cap >= target``).
    """
    current = np.asarray(current, dtype=np.float64)
    plan = np.asarray(plan, dtype=np.float64)
    residual = np.clip(plan - current, 0.0, None)
    deltas = {step} | {float(e / k) for e in residual if e > 0 for k in range(1, max_level + 1)}
    best, best_err = None, math.inf
    for d in sorted(deltas):
        levels = np.clip(np.round(residual / d), 0, max_level).astype(np.int64)
        if not levels.any():
            continue
        after = simulate_step(current, levels, numel, step=step, cap=cap, target=target)
        if _global(after, numel) < target - 1e-9:
            continue  # this step would not reach the target
        err = weighted_rms(after, plan, numel)
        if err < best_err - 1e-15:
            best, best_err = levels, err
    if best is None:
        best = np.where(current < cap, max_level, 0).astype(np.int64)
    return best


def levels_toward(current: np.ndarray, plan: np.ndarray, numel: np.ndarray, *, step: float, max_level: int,
                  cap: float, target: float) -> np.ndarray:
    """The next action toward ``plan``: a grid-phase step while any unit is a whole step short, else the
    final (scaled) step."""
    levels = grid_levels(current, plan, step=step, max_level=max_level)
    if levels.any():
        return levels
    return final_levels(current, plan, numel, step=step, max_level=max_level, cap=cap, target=target)


def steps_to_reach(plan: np.ndarray, *, step: float, max_level: int) -> int:
    """How many env steps :func:`levels_toward` takes from the dense model (grid steps + one final step)."""
    whole = np.floor(np.asarray(plan, dtype=np.float64) / step + GRID_EPS)
    grid = int(math.ceil(float(whole.max()) / max_level)) if whole.max() > 0 else 0
    exact = bool(np.allclose(whole * step, plan, atol=1e-9))
    return grid if exact else grid + 1


def centre_on_target(ratios: np.ndarray, numel: np.ndarray, target: float, cap: float) -> np.ndarray:
    """Shift ``ratios`` so their numel-weighted mean is ``target``, clip to ``[0, cap]``, and repeat the shift
    (clipping moves the mean) until it holds."""
    r = np.asarray(ratios, dtype=np.float64).copy()
    for _ in range(100):
        r = np.clip(r + (target - _global(r, numel)), 0.0, cap)
        if abs(_global(r, numel) - target) < 1e-12:
            break
    return r


def _global(ratios: np.ndarray, numel: np.ndarray) -> float:
    w = np.asarray(numel, dtype=np.float64)
    return float((np.asarray(ratios, dtype=np.float64) * w).sum() / w.sum())
