"""Pure math of the baselines: reaching a plan with discrete levels, OWL's formula, block choice."""

from __future__ import annotations

import numpy as np
import pytest

from policies.baselines.allocation import (
    centre_on_target,
    final_levels,
    grid_levels,
    levels_toward,
    simulate_step,
    steps_to_reach,
    weighted_rms,
)
from policies.baselines.greedy import pick_least_sensitive, units_needed
from policies.baselines.owl import outlier_ratio, owl_sparsities
from policies.baselines.random_search import base_sparsity, mutate, repair
from policies.baselines.structured import choose_blocks


def walk(plan, numel, *, step=0.05, max_level=3, cap=0.95, target=None, limit=50):
    """Follow levels_toward with simulate_step from zero; return (final ratios, steps)."""
    target = float((plan * numel).sum() / numel.sum()) if target is None else target
    ratios = np.zeros_like(plan)
    for steps in range(1, limit + 1):
        levels = levels_toward(ratios, plan, numel, step=step, max_level=max_level, cap=cap, target=target)
        ratios = simulate_step(ratios, levels, numel, step=step, cap=cap, target=target)
        if float((ratios * numel).sum() / numel.sum()) >= target - 1e-9:
            return ratios, steps
    raise AssertionError("plan not reached")


def test_uniform_plan_is_hit_exactly_in_equal_steps():
    numel = np.full(6, 100.0)
    ratios, steps = walk(np.full(6, 0.5), numel)
    np.testing.assert_allclose(ratios, 0.5, atol=1e-12)
    assert steps == 4 == steps_to_reach(np.full(6, 0.5), step=0.05, max_level=3)  # 0.15, 0.30, 0.45, 0.50


@pytest.mark.parametrize("seed", range(5))
def test_random_plans_land_on_target_and_close_to_plan(seed):
    rng = np.random.default_rng(seed)
    numel = rng.integers(50, 200, size=8).astype(float)
    plan = centre_on_target(rng.uniform(0.35, 0.65, size=8), numel, 0.5, 0.95)
    ratios, _ = walk(plan, numel, target=0.5)
    assert float((ratios * numel).sum() / numel.sum()) == pytest.approx(0.5, abs=1e-9)
    # the final scaled step matches residuals < one step much better than rounding to the grid (step / 2)
    assert np.abs(ratios - plan).max() < 0.05 / 2
    assert weighted_rms(ratios, plan, numel) < 0.05 / 4


def test_final_levels_beats_plain_rounding():
    numel = np.full(4, 1.0)
    current = np.full(4, 0.40)
    plan = np.array([0.41, 0.44, 0.47, 0.48])  # mean 0.45
    levels = final_levels(current, plan, numel, step=0.05, max_level=3, cap=0.95, target=0.45)
    after = simulate_step(current, levels, numel, step=0.05, cap=0.95, target=0.45)
    assert after.mean() == pytest.approx(0.45)
    rounded = current + np.round((plan - current) / 0.05) * 0.05
    assert weighted_rms(after, plan, numel) < weighted_rms(rounded, plan, numel)


def test_grid_levels_never_overshoot_the_plan():
    plan = np.array([0.52, 0.31, 0.05, 0.0])
    levels = grid_levels(np.zeros(4), plan, step=0.05, max_level=3)
    assert levels.tolist() == [3, 3, 1, 0]
    assert np.all(levels * 0.05 <= plan + 1e-12)


def test_owl_sparsities_formula():
    d = np.array([0.01, 0.02, 0.04, 0.03])
    s = owl_sparsities(d, 0.5, lam=0.08)
    norm = (d - 0.01) / 0.03 * 0.16
    np.testing.assert_allclose(s, 0.5 - norm + norm.mean())
    assert s.mean() == pytest.approx(0.5)
    assert s.max() - s.min() == pytest.approx(0.16)
    assert np.argmin(s) == 2  # most outliers: pruned least
    np.testing.assert_allclose(owl_sparsities(np.full(3, 0.02), 0.5), 0.5)  # no spread: uniform


def test_outlier_ratio_counts_scores_above_m_times_mean():
    import torch

    scores = torch.tensor([1.0] * 98 + [100.0, 200.0])  # mean 3.98 -> threshold 19.9: two outliers
    assert outlier_ratio(scores, 5.0) == pytest.approx(0.02)


def test_choose_blocks_lowest_influence_until_target():
    influence = {0: 0.9, 1: 0.1, 2: 0.3, 3: 0.2}
    numel = dict.fromkeys(influence, 10)
    assert choose_blocks(influence, numel, 40, 0.5) == [1, 3]
    assert choose_blocks(influence, numel, 40, 0.6) == [1, 2, 3]  # 0.75 >= 0.6: next block, never short


def test_greedy_helpers():
    assert pick_least_sensitive(np.array([0.5, -1.0, 2.0, -3.0]), np.array([True, True, True, False]), 2).tolist() == [1, 0]
    assert units_needed(0.3, 2, 0.15 / 4, 4) == 4
    assert units_needed(0.0, 2, 0.1, 4) == 0


def test_random_search_helpers():
    rng = np.random.default_rng(0)
    assert base_sparsity(0.5, 0.05, 2) == pytest.approx(0.40)
    assert base_sparsity(0.05, 0.05, 2) == 0.0
    levels = mutate(np.full(6, 2), 3, 3, rng)
    assert levels.sum() == 12 and levels.min() >= 0 and levels.max() <= 3
    fixed = repair(np.zeros(6, dtype=np.int64), np.ones(6), 2.0, 3, rng)
    assert fixed.mean() >= 2.0 and fixed.max() <= 3
