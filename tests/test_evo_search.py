"""evo-search: level math, the candidate evaluator (KL and ppl fitness), staged selection, budgets, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from policies.base import EnvView
from policies.baselines.evo_levels import (
    draw_switches,
    level_bounds,
    level_delta,
    level_steps,
    mutate,
    sparsities,
    survivors,
)
from policies.baselines.evo_search import EvoSearchPolicy
from policies.registry import inline_options, make_policy, parse_name, spec
from policies.runner import run_episode
from prune_env.candidates import CandidateEvaluator
from prune_env.divergence import sequence_kl
from tests.policy_envs import make_env

# ------------------------------------------------------------------------------------------- pure level math


def test_level_switches_keep_the_global_sparsity_exactly_with_unequal_units():
    numel = np.array([589_824, 147_456, 147_456, 589_824, 2_359_296, 2_359_296, 2_359_296] * 3)
    target, cap = 0.6, 0.95
    start = np.full(len(numel), target)
    delta = level_delta(numel, target, levels=8, spread=0.5)
    steps = level_steps(numel, delta)
    lo, hi = level_bounds(start, steps, 8, cap)
    rng = np.random.default_rng(3)
    k = np.zeros(len(numel), dtype=np.int64)
    for _ in range(500):
        k = mutate(k, lo, hi, draw_switches(rng), rng)
        assert k.sum() == 0 and np.all(k >= lo) and np.all(k <= hi)
        s = sparsities(start, steps, k)
        assert abs(float((s * numel).sum() / numel.sum()) - target) < 1e-9
        assert s.min() >= 0 and s.max() <= cap
    # one level of every unit is the same number of weights; a unit of median size (589,824, EvoPress's hidden^2)
    # spans +- 0.5 * min(t, 1 - t), the 4x smaller k/v-like units 4x more (inside the cap), the MLP-like 4x less
    assert np.allclose(steps * numel, delta)
    assert delta == pytest.approx(0.5 * 0.4 / 8 * 589_824)
    assert steps[0] * 8 == pytest.approx(0.5 * 0.4) and steps[1] * 8 == pytest.approx(4 * 0.5 * 0.4)


def test_level_bounds_respect_zero_and_the_cap():
    steps = np.array([0.1, 0.1, 0.1])
    lo, hi = level_bounds(np.array([0.15, 0.5, 0.9]), steps, levels=8, cap=0.95)
    assert lo.tolist() == [-1, -5, -8] and hi.tolist() == [8, 4, 0]


def test_switch_count_is_biased_to_few_and_mutation_moves_levels_between_distinct_units():
    rng = np.random.default_rng(0)
    draws = [draw_switches(rng) for _ in range(3000)]
    counts = np.bincount(draws, minlength=4)[1:] / len(draws)
    assert counts == pytest.approx([5 / 9, 3 / 9, 1 / 9], abs=0.03)  # min of two U{1..3}
    k = mutate(np.zeros(2, dtype=np.int64), np.array([-1, -1]), np.array([1, 1]), 1, rng)
    assert sorted(k.tolist()) == [-1, 1]
    stuck = mutate(np.zeros(2, dtype=np.int64), np.array([0, 0]), np.array([0, 0]), 3, rng)
    assert stuck.tolist() == [0, 0]


def test_survivors_are_the_lowest_and_ties_keep_the_earlier():
    assert survivors([3.0, 1.0, 2.0, 1.0], 2) == [1, 3]
    assert survivors([1.0, 1.0], 1) == [0]  # the parent (listed first) keeps its place on a tie


# ------------------------------------------------------------------------------------------- KL


def test_sequence_kl_is_zero_for_the_reference_and_matches_torch():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    ref = torch.randn(3, 5, 11).log_softmax(-1)
    assert torch.allclose(sequence_kl(ref, ref), torch.zeros(3, dtype=torch.float64), atol=1e-6)
    direct = F.kl_div(logits.log_softmax(-1), ref, log_target=True, reduction="none").sum(-1).sum(-1)
    assert torch.allclose(sequence_kl(logits, ref), direct.double(), atol=1e-5)


def test_sequence_kl_is_bitwise_the_plain_formula_with_or_without_the_reference_probs():
    """The in-place form (and the cached probabilities) change the speed, not one bit of the value: the
    search's decisions, and so its published results, are the same as with the plain formula."""
    torch.manual_seed(1)
    logits = torch.randn(2, 7, 301) * 3
    ref = (torch.randn(4, 9, 301) * 3).log_softmax(-1)[:2, 1:8]  # a non-contiguous slice, as a stage reads it
    plain = (ref.exp() * (ref - logits.log_softmax(-1))).sum(-1).double().sum(1)
    assert torch.equal(sequence_kl(logits, ref), plain)
    assert torch.equal(sequence_kl(logits, ref, ref.exp()), plain)


# ------------------------------------------------------------------------------------------- the evaluator


@pytest.fixture(scope="module")
def env(tiny_llm4_dir, one_thread):
    e = make_env(tiny_llm4_dir, reward_eval_samples=3, gradient_samples=0)
    e.reset()
    return e


def _weights(env):
    return [lin.module.weight.detach().clone() for lin in env.structure.linears]


def _direct_kl(env, ratios) -> float:
    """KL(dense || candidate) per token on all validation windows, by two plain forwards (no cache)."""
    ids = env.tokens.validation
    with torch.no_grad():
        dense = env.model(input_ids=ids).logits[:, :-1].float().log_softmax(-1)
        env.apply_allocation(dict(zip(env.unit_names, ratios)))
        pruned = env.model(input_ids=ids).logits[:, :-1].float().log_softmax(-1)
    kl = (dense.exp() * (dense - pruned)).sum(-1)
    return float(kl.double().sum()) / kl.numel()


def test_kl_fitness_is_zero_dense_equals_a_direct_computation_and_leaves_the_env_alone(env):
    env.reset()
    ev = CandidateEvaluator(env, fitness="kl", stage_windows=(1,))
    L = len(env.unit_names)
    before, versions = _weights(env), [env.store.version(n) for n in env.unit_names]
    tokens = env.tokens_evaluated
    assert ev.fitness(np.zeros(L)) == pytest.approx(0.0, abs=1e-7)
    ratios = np.array([0.3, 0.6, 0.5, 0.6])
    value = ev.fitness(ratios)
    one_window = ev.fitness(ratios, 1)
    assert env.tokens_evaluated - tokens == env.tokens.validation.numel() * 2 + env.tokens.validation[:1].numel()
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(env)))  # trial weights written back bitwise
    assert versions == [env.store.version(n) for n in env.unit_names]
    assert value > 0 and one_window > 0
    assert value == pytest.approx(_direct_kl(env, ratios), rel=1e-5)
    env.reset()


def test_reference_recomputed_from_hidden_states_equals_the_stored_log_probs(env):
    env.reset()
    stored = CandidateEvaluator(env, fitness="kl")
    recomputed = CandidateEvaluator(env, fitness="kl")
    recomputed._reference = type(stored._reference)(  # same windows, forced into the hidden-state form
        env.model, env.structure.blocks, env.tokens.validation, stored._caches[3].final_hidden(),
        stored._caches[3].template, batch_size=env.config.batch_size, budget_bytes=0)
    assert recomputed.reference_form == "hidden" and stored.reference_form == "logprobs"
    ratios = np.array([0.5, 0.4, 0.6, 0.5])
    assert recomputed.fitness(ratios) == pytest.approx(stored.fitness(ratios), rel=1e-6)


def test_the_cached_reference_probs_change_no_bit_of_the_fitness(env):
    env.reset()
    with_probs = CandidateEvaluator(env, fitness="kl", stage_windows=(1,))
    reference = with_probs._reference
    logprob_bytes = reference.nbytes // 2  # log-probs and probs, as many bytes each
    without = CandidateEvaluator(env, fitness="kl", stage_windows=(1,))
    without._reference = type(reference)(  # the log-probs fit the budget, the probs as well do not
        env.model, env.structure.blocks, env.tokens.validation, without._caches[3].final_hidden(),
        without._caches[3].template, batch_size=env.config.batch_size, budget_bytes=logprob_bytes)
    assert without._reference._probs is None and reference._probs is not None
    assert without._reference.nbytes == logprob_bytes
    for ratios, windows in (([0.5, 0.4, 0.6, 0.5], 3), ([0.3, 0.7, 0.5, 0.5], 1)):
        assert with_probs.fitness(np.array(ratios), windows) == without.fitness(np.array(ratios), windows)


def test_ppl_fitness_after_commits_equals_the_envs_own_measurement(env):
    env.reset()
    ev = CandidateEvaluator(env, fitness="ppl", stage_windows=(1, 2))
    for ratios in ([0.5, 0.5, 0.5, 0.5], [0.4, 0.6, 0.5, 0.5], [0.4, 0.6, 0.45, 0.55]):
        predicted = ev.fitness(np.array(ratios))
        info = env.apply_allocation(dict(zip(env.unit_names, ratios)))  # a commit: the caches follow it
        assert predicted == pytest.approx(info["ppl"], rel=1e-9)
        assert ev.fitness(np.array(ratios)) == pytest.approx(info["ppl"], rel=1e-9)
    env.reset(options={"checkpoint": 0})  # a restore moves the units back: the caches follow that too
    assert ev.fitness(np.zeros(4)) == pytest.approx(env.dense_ppl, rel=1e-9)
    env.reset()


def test_bad_stage_windows_are_refused(env):
    with pytest.raises(ValueError, match="stage windows must be in 1..3"):
        CandidateEvaluator(env, stage_windows=(5,))
    with pytest.raises(ValueError, match="fitness must be one of"):
        CandidateEvaluator(env, fitness="mse")


# ------------------------------------------------------------------------------------------- the policy


def _search(env, tmp_path, name="run", **options):
    policy = EvoSearchPolicy(**{"offspring": 4, "survivors": (2,), "windows": (1,), "budget_tokens": 40 * 32,
                                **options})
    result = run_episode(env, policy, steps_path=tmp_path / f"{name}.jsonl", final_eval=False, progress=False)
    return policy, result


def test_search_reaches_the_target_exactly_within_budget_and_keeps_the_best_parent(env, tmp_path):
    policy, result = _search(env, tmp_path)
    summary = policy.summary()
    assert abs(summary["planned_sparsity"] - 0.5) < 1e-9
    assert abs(env.global_sparsity_planned - 0.5) < 1e-9
    assert result.global_sparsity == pytest.approx(0.5, abs=0.02)  # measured zeros: per-row rounding
    assert summary["tokens_used"] <= 40 * 32 and summary["generations"] >= 2
    assert result.tokens_evaluated == summary["tokens_used"] and result.evaluations == summary["evaluations_used"]
    history = summary["history"]
    fitness = [h["parent_fitness"] for h in history]
    assert all(b <= a for a, b in zip(fitness, fitness[1:]))  # the parent is only replaced by a better child
    for before, h in zip(history, history[1:]):
        if h["accepted"]:
            assert h["parent_fitness"] < before["parent_fitness"]
        else:
            assert h["parent_fitness"] == before["parent_fitness"] and h["best_child_fitness"] >= h["parent_fitness"]
    # the generations were written to the run log as they finished
    lines = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert [line["generation"] for line in lines if line["kind"] == "search"] == [h["generation"] for h in history]


def test_search_is_deterministic_under_its_seed(env, tmp_path):
    a, _ = _search(env, tmp_path, "a", seed=5)
    b, _ = _search(env, tmp_path, "b", seed=5)
    c, _ = _search(env, tmp_path, "c", seed=6, max_generations=6, budget_tokens=10_000)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a.summary()["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b.summary()["history"]]
    assert a.summary()["levels"] == b.summary()["levels"]
    assert c.summary()["generations"] == 6


def test_budget_too_small_and_bad_options_are_refused(env, tmp_path):
    with pytest.raises(Exception, match="cannot even commit"):
        _search(env, tmp_path, "small", budget_tokens=10)
    with pytest.raises(ValueError, match="survivors"):
        EvoSearchPolicy(survivors="4/2", windows="1")
    with pytest.raises(Exception, match="need at least 8 validation windows"):
        _search(env, tmp_path, "wide", windows=(8,))


def test_search_can_start_from_a_planned_baseline(env, tmp_path):
    policy, _ = _search(env, tmp_path, "owl", start="owl-wanda", max_generations=2)
    start = policy.summary()
    assert start["start"] == "owl-wanda" and abs(start["planned_sparsity"] - 0.5) < 1e-9
    with pytest.raises(Exception, match="not a planned baseline"):
        _search(env, tmp_path, "bad", start="greedy-sensitivity", max_generations=1)


def test_inline_options_name_a_second_configuration():
    assert parse_name("evo-search:budget_tokens=2000:fitness=ppl:spread=0.25") == (
        "evo-search", {"budget_tokens": 2000, "fitness": "ppl", "spread": 0.25})
    assert spec("evo-search:budget_tokens=10").is_search
    policy = make_policy("evo-search:offspring=7:survivors=3/1:windows=1/2", budget_tokens=99)
    assert (policy.offspring, policy.survivors, policy.windows, policy.budget_tokens) == (7, (3, 1), (1, 2), 99)
    assert make_policy("evo-search:budget_tokens=5000", budget_tokens=99).budget_tokens == 5000  # inline wins
    assert inline_options("evo-search") == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_name("evo-search:budget")
    with pytest.raises(TypeError, match="check the option names"):
        make_policy("evo-search:offsprung=3")


def test_view_without_env_is_refused():
    view = EnvView(("a",), (10,), 4, 0.05, 0.95, 0.5, 10, "wanda", "block", None)
    with pytest.raises(ValueError, match="needs the env"):
        EvoSearchPolicy().apply(view)
