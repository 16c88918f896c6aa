"""The outcome memory: a step's change in log-perplexity split over its units by the weights each added, and
per unit (or group) the cost per level with the steps it rests on (pure); and, on a scripted episode over a
real PruningEnv (the tiny 4-block Llama at granularity="linear": 28 units of unequal sizes, AutoRollback),
the memory equals a direct computation from the run's step log, and the prompt shows it."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scripted_chat_server import ScriptedChatServer, answer

from policies.agent import make_agent
from policies.agent.memory import (
    Cost,
    Outcome,
    attributed_change,
    bar_rejected,
    barred_violations,
    costs,
    outcome_of,
    release_bars,
)
from policies.runner import load_steps, run_episode
from prune_env.env import PruningEnv, short_unit_names
from prune_env.wrappers import AutoRollback


def test_a_steps_change_is_split_by_the_weights_each_unit_added():
    numel = [100, 300, 600]
    o = outcome_of(1, np.array([0.0, 0.0, 0.9]), np.array([2, 1, 1]), numel, step_size=0.1, cap=0.95, target=0.9,
                   ppl_before=10.0, ppl_after=12.0, rolled_back=True, short_names=["a", "b", "c"])
    assert o.added == pytest.approx([0.2, 0.1, 0.05])           # the cap leaves unit c 0.05
    weights = np.array([20, 30, 30])                             # increment x numel
    assert attributed_change(o, numel) == pytest.approx(math.log(1.2) * weights / 80)
    assert attributed_change(o, numel).sum() == pytest.approx(math.log(1.2)) and o.ppl_change == pytest.approx(0.2)
    assert (o.levels, o.rolled_back) == ({"a": 2, "b": 1, "c": 1}, True)


def test_costs_per_level_per_unit_and_per_group():
    numel = [100, 300, 600]
    steps = [Outcome(1, np.array([0.2, 0.1, 0.0]), math.log(1.10), False, {}),
             Outcome(2, np.array([0.1, 0.0, 0.0]), math.log(0.98), True, {}),
             Outcome(3, np.array([0.0, 0.1, 0.0]), math.log(1.05), False, {})]
    d1, d2, d3 = math.log(1.10), math.log(0.98), math.log(1.05)
    unit_a = (d1 * 20 / 50 + d2) / (2 + 1)                       # levels: 0.2 and 0.1 at step_size 0.1
    unit_b = (d1 * 30 / 50 + d3) / (1 + 1)
    per_unit = costs(steps, numel, 0.1, [(0,), (1,), (2,)])
    assert per_unit[0] == Cost(pytest.approx(unit_a), 2) and per_unit[1] == Cost(pytest.approx(unit_b), 2)
    assert per_unit[2] == Cost(None, 0)                          # never touched
    # a group's levels are its sparsity increase in levels: (0.3 x 100 + 0.2 x 300) / 400 / 0.1
    group = costs(steps, numel, 0.1, [(0, 1)])[0]
    assert group == Cost(pytest.approx((d1 + d2 + d3) / ((0.3 * 100 + 0.2 * 300) / 400 / 0.1)), 3)


def test_bar_keeps_the_lowest_rejected_level_per_unit_and_names_violations():
    barred = bar_rejected({}, np.array([2, 0, 1, 0]))
    assert barred == {0: 2, 2: 1}
    barred = bar_rejected(barred, np.array([1, 0, 3, 2]))      # a second rolled-back step lowers unit 0's bar
    assert barred == {0: 1, 2: 1, 3: 2}
    assert barred_violations(np.array([0, 3, 0, 1]), barred) == []   # lower levels and unbarred units pass
    assert barred_violations(np.array([1, 0, 2, 2]), barred) == [(0, 1, 1), (2, 2, 1), (3, 2, 2)]
    assert release_bars(barred, np.array([0, 1, 2, 0])) == {0: 1, 3: 2}   # a kept step frees the units it pruned


# ---------------------------------------------------------------- a scripted episode on a real env
ENV = dict(seqlen=32, calib_samples=4, reward_eval_samples=2, final_eval_samples=2, gradient_samples=2,
           gradient_every=2, step_size=0.05, n_levels=4, max_unit_sparsity=0.95, target_sparsity=0.5, max_steps=8,
           granularity="linear")
SCRIPT = [answer({"0.mlp.up_proj": 3, "1.self_attn.k_proj": 1}), answer({"2.mlp.down_proj": 3, "0.mlp.up_proj": 2}),
          answer({"3.self_attn.q_proj": 2, "3.mlp.gate_proj": 1, "0.self_attn.v_proj": 3}),
          answer({"1.mlp.up_proj": 3, "1.mlp.gate_proj": 3, "1.mlp.down_proj": 3}),
          answer({"0.mlp.up_proj": 1, "2.self_attn.o_proj": 2}), answer({"3.mlp.up_proj": 3}),
          answer({"2.mlp.down_proj": 1, "1.self_attn.k_proj": 2}), answer({"0.mlp.gate_proj": 3})]
COST = re.compile(r"^(\S+): s=\S+ zw=\S+ zg=\S+ w=\S+ cost=(\?|[+-][0-9.]+% n=\d+)$", re.MULTILINE)


def direct_costs(steps: list[dict], units: list[str], numel: np.ndarray, dense_ppl: float) -> dict[str, tuple]:
    """Per unit: (sum over the steps that touched it of the step's log-perplexity change x its share of the
    weights the step added) / (levels it was given), and the number of those steps, from the step log."""
    step, cap, target = ENV["step_size"], ENV["max_unit_sparsity"], ENV["target_sparsity"]
    s, ppl = np.zeros(len(units)), dense_ppl
    change, levels, touched = np.zeros(len(units)), np.zeros(len(units)), np.zeros(len(units), dtype=int)
    for rec in steps:
        inc = np.minimum(s + step * np.asarray(rec["action"]), cap) - s
        gain = float(inc @ numel / numel.sum())
        now = float(s @ numel / numel.sum())
        if now + gain > target:  # the env scales the step onto the target
            inc *= (target - now) / gain
        after = rec["rejected_ppl"] if rec["rolled_back"] else rec["ppl"]
        weights = inc * numel
        change += math.log(after / ppl) * weights / weights.sum()
        levels += inc / step
        touched += inc > 0
        s = np.array([rec["unit_sparsity"][u] for u in units])
        ppl = rec["ppl"]
    return {u: (change[i] / levels[i] if levels[i] else None, int(touched[i])) for i, u in enumerate(units)}


def test_the_memory_equals_a_direct_computation_on_a_scripted_episode(tiny_llm4_dir, tmp_path, one_thread):
    env = AutoRollback(PruningEnv(model=str(tiny_llm4_dir), **ENV), max_ppl_increase=0.0001)
    with ScriptedChatServer(SCRIPT) as server:
        agent = make_agent(env={}, base_url=server.base_url, model="scripted", api_key="t", timeout=10,
                           response_format="json_object", pace=False, context_tokens=16384)  # a row per unit
        run_episode(env, agent, steps_path=tmp_path / "steps.jsonl", progress=False)
    log = load_steps(tmp_path / "steps.jsonl")
    start, steps = log[0], [r for r in log if r["kind"] == "step"]
    assert 1 <= sum(r["rolled_back"] for r in steps) < len(steps) == 8   # kept and rolled-back steps both
    units = list(env.unwrapped.unit_names)
    numel = np.array([u.numel for u in env.unwrapped.units], dtype=np.float64)
    assert len(set(numel)) > 2                                            # unequal units
    short = short_unit_names(units)
    memory = costs(agent.outcomes, numel, ENV["step_size"], [(i,) for i in range(len(units))])
    expected = direct_costs(steps, units, numel, start["dense_reward_ppl"])
    for i, unit in enumerate(units):
        cost, n = expected[unit]
        assert memory[i].steps == n and (memory[i].per_level is None) == (cost is None), short[i]
        if cost is not None:
            assert memory[i].per_level == pytest.approx(cost, rel=1e-9, abs=1e-12), short[i]
    # the last prompt shows the memory of the steps before it: costs per unit, and every rollback
    prompt = server.requests[-1]["messages"][1]["content"]
    before = direct_costs(steps[:-1], units, numel, start["dense_reward_ppl"])
    shown = dict(COST.findall(prompt))
    assert len(shown) == len(units)
    for i, unit in enumerate(units):
        cost, n = before[unit]
        assert shown[short[i]] == ("?" if cost is None else f"{100 * cost:+.1f}% n={n}"), short[i]
    back = [r["step"] for r in steps[:-1] if r["rolled_back"]]
    for k in back[-3:]:
        assert re.search(rf"^step {k}: .* > 0.01%, undone$", prompt, re.MULTILINE)
    assert f"Rolled back so far ({len(back)} of 7 steps" in prompt
