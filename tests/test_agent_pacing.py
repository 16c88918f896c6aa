"""Pacing: the top-up never exceeds its bound (max of the largest kept step's gain and remaining / steps
left), rollbacks the reserve covers do not change the pace, the pace has no cliff at the end; and scripted
timid and greedy agents, talking real HTTP to a scripted server, reach the target on a real PruningEnv (the
tiny 4-block Llama)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from policy_envs import make_env
from scripted_chat_server import ScriptedChatServer, answer

from policies.agent import make_agent
from policies.agent.accounting import planned_increments
from policies.agent.fallback import fallback_action
from policies.agent.pacing import pace_action, pace_plan, planned_gain
from policies.agent.ranking import unit_order
from policies.runner import run_episode
from prune_env.wrappers import AutoRollback

EPS = 1e-6  # pacing's tolerance (the observation is float32)


def state(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    s = rng.integers(0, 12, n) * 0.05
    return {"sparsity": s, "wanda_z": rng.normal(size=n), "grad_z": rng.normal(size=n), "target": np.array([0.7])}


def test_the_top_up_never_exceeds_the_bound_and_stops_only_when_it_must():
    """Random states (units up to 8x apart), own actions and paces, some right after a rollback."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(2, 12))
        obs = state(rng, n)
        numel = rng.choice([1, 3, 8], size=n) * 100      # units differ up to eightfold, as linears do
        own = rng.integers(0, 2, n)
        own = np.where(obs["sparsity"] + own * 0.05 <= 0.95 + EPS, own, 0)
        now = float((obs["sparsity"] * numel).sum() / numel.sum())
        rejected = [None, 0.01, 0.06][int(rng.integers(0, 3))]
        pace = pace_plan(max(0.7 - now, 0.0), int(rng.integers(1, 30)), rollbacks=int(rng.integers(0, 6)),
                         reserve=4, largest_kept=float(rng.choice([0.0, 0.01, 0.05])), rejected=rejected)
        def gain(levels, obs=obs, numel=numel):
            return planned_gain(levels, obs["sparsity"], numel, step_size=0.05, cap=0.95, target=0.7)
        paced, added = pace_action(own, obs, numel, step_size=0.05, n_levels=4, cap=0.95, pace=pace)
        assert np.all(paced >= own) and int((paced - own).sum()) == added          # only adds
        assert gain(paced) - gain(own) <= pace.bound + EPS                          # the bound
        ceiling = pace.limit if rejected is not None else np.inf
        assert added == 0 or gain(paced) <= ceiling + EPS                           # after a rollback
        if gain(paced) < min(pace.required, gain(own) + pace.bound, ceiling) - EPS:  # short of the pace:
            for i in range(n):                                                       # no level fits any more
                more = paced.copy()
                more[i] += 1
                if more[i] <= 3 and obs["sparsity"][i] + more[i] * 0.05 <= 0.95 + EPS:
                    assert gain(more) - gain(own) > pace.bound + EPS or gain(more) > ceiling + EPS


def test_the_reserve_absorbs_rollbacks_and_the_last_step_can_always_finish():
    first = pace_plan(0.4, 40, rollbacks=0, reserve=4, largest_kept=0.0)
    assert (first.reserve_left, first.required, first.bound) == (4, pytest.approx(0.4 / 36), pytest.approx(0.01))
    for k in range(1, 5):  # each rollback loses a step and spends a spare one: the same pace
        assert pace_plan(0.4, 40 - k, rollbacks=k, reserve=4, largest_kept=0.0).required == pytest.approx(0.4 / 36)
    past = pace_plan(0.4, 30, rollbacks=6, reserve=4, largest_kept=0.0)   # past the reserve: every step left
    assert (past.reserve_left, past.required) == (0, pytest.approx(0.4 / 30))
    last = pace_plan(0.05, 1, rollbacks=0, reserve=4, largest_kept=0.01)  # no spare step at the end
    assert (last.reserve_left, last.required, last.bound) == (0, 0.05, 0.05)


def test_the_last_step_fills_the_target_from_a_float32_observation():
    """The observation is float32: ``target - global_sparsity`` is 0.09999999404 where the planned gain of 60
    levels is 0.09999999963. Pacing must still add all 60 (a measured episode stopped at 59 and ended below
    its target), so the env's planned sparsity (float64) reaches the target."""
    planned = np.array([0.05, 0.6, 0.75, 0.45, 0.5, 0.05, 0.05, 0.8, 0.7, 0.6, 0.55, 0.7, 0.1, 0.1, 0.4, 0.5, 0.65,
                        0.4, 0.1, 0.45, 0.05, 0.2, 0.6, 0.4, 0.45, 0.35, 0.65, 0.45, 0.3, 0.05])  # mean 0.4
    obs = {"sparsity": planned.astype(np.float32), "wanda_z": np.zeros(30, np.float32),
           "grad_z": np.zeros(30, np.float32), "target": np.array([0.5], np.float32)}
    numel = np.full(30, 3_538_944)
    remaining = 0.5 - float(np.float32(planned.mean()))
    pace = pace_plan(remaining, 1, rollbacks=11, reserve=4, largest_kept=0.02, rejected=0.0483)
    own = np.zeros(30, dtype=np.int64)
    own[11] = 1
    paced, added = pace_action(own, obs, numel, step_size=0.05, n_levels=4, cap=0.95, pace=pace)
    assert (int(paced.sum()), added) == (60, 59)
    after = planned + planned_increments(planned, numel, paced, step_size=0.05, cap=0.95, target=0.5)
    assert after.mean() >= 0.5 - 1e-9  # the env's termination test


def test_the_pace_is_even_to_the_end():
    """Pacing alone (an agent adding one level on one unit) over 40 steps with 3 rollbacks: every kept step
    adds about the same, the last as much as the first (within two levels: no cliff), and the target is
    reached with a spare step left."""
    n, numel, step, target = 30, np.full(30, 1000), 0.05, 0.5
    s, kept, rollbacks, rolled = np.zeros(n), [], 0, {5, 17, 30}
    used = 40
    for k in range(40):
        now = float((s * numel).sum() / numel.sum())
        if now >= target - 1e-9:
            used = k
            break
        pace = pace_plan(target - now, 40 - k, rollbacks=rollbacks, reserve=4, largest_kept=max(kept, default=0.0))
        obs = {"sparsity": s, "wanda_z": np.zeros(n), "grad_z": np.linspace(-1, 1, n), "target": np.array([target])}
        own = np.zeros(n, dtype=np.int64)
        own[k % n] = 1
        paced, _ = pace_action(own, obs, numel, step_size=step, n_levels=4, cap=0.95, pace=pace)
        if k in rolled:
            rollbacks += 1
            continue
        kept.append(planned_gain(paced, s, numel, step_size=step, cap=0.95, target=target))
        s = s + planned_increments(s, numel, paced, step_size=step, cap=0.95, target=target)
    assert float((s * numel).sum() / numel.sum()) == pytest.approx(target)
    assert max(kept) - min(kept[:-1]) <= 2 * step / n + EPS   # the last step is no larger than the others
    assert rollbacks == 3 and used == 40 - (4 - 3)  # on the target with the unspent spare step left


# ---------------------------------------------------------------- scripted agents on a real env
ROW = re.compile(r"^(\S+): s=([0-9.]+) ", re.MULTILINE)
STEP, LEVELS, CAP = 0.05, 4, 0.95


def rows(body: dict) -> list[tuple[str, float]]:
    return [(u, float(s)) for u, s in ROW.findall(body["messages"][1]["content"])]


def timid(body: dict):
    """One level on the first unit of the table with room: far too little for the target."""
    unit = next(u for u, s in rows(body) if s + STEP <= CAP + 1e-6)
    return answer({unit: 1}, "one level at a time", "small steps are safe")


def greedy(body: dict):
    """The top level on every unit with room: far more than the pace."""
    levels = {u: min(LEVELS - 1, int((CAP - s) / STEP + 1e-6)) for u, s in rows(body)}
    return answer({u: lv for u, lv in levels.items() if lv > 0}, "prune everything", "more is faster")


def run(model_dir, policy, tmp_path, *, rollback: float | None, max_steps: int = 40):
    env = make_env(model_dir, max_steps=max_steps)
    env = AutoRollback(env, max_ppl_increase=rollback) if rollback else env
    with ScriptedChatServer([], default=policy) as server:
        agent = make_agent(env={}, base_url=server.base_url, model="scripted", api_key="t", timeout=10,
                           response_format="json_object", pace=True, history_size=3,
                           bar_rejected=False)  # the scripted agents ignore the prompt: pacing alone is tested
        result = run_episode(env, agent, steps_path=tmp_path / "steps.jsonl", progress=False)
    return env, agent, result


def bound_holds(agent, target: float, max_steps: int) -> None:
    """Every step's top-up is within max(largest kept gain before it, remaining / steps left)."""
    before, largest = 0.0, 0.0
    for k, e in enumerate(agent.history):
        bound = max(largest, (target - before) / (max_steps - k))
        assert e.added_gain <= bound + 1e-9, (k, e)
        if not e.rolled_back:
            largest = max(largest, e.chosen_gain + e.added_gain)
        before = e.sparsity_after


@pytest.mark.parametrize("rollback", [None, 0.008], ids=["no-rollback", "rollback-0.8%"])
def test_a_timid_agent_is_paced_onto_the_target(tiny_llm4_dir, tmp_path, one_thread, rollback):
    """One level a step on a 12-step episode: pacing does most of it, within its bound; a rollback (the tiny
    model's perplexity moves ~0.5% a step) is followed by a step of at most half the rejected one."""
    env, agent, result = run(tiny_llm4_dir, timid, tmp_path, rollback=rollback, max_steps=12)
    history = agent.history
    assert result.terminated and env.unwrapped.global_sparsity_planned == pytest.approx(0.5, abs=1e-6)
    assert all(len(e.own) == 1 and sum(e.own.values()) == 1 for e in history)   # its own choices, as asked
    assert sum(bool(e.added) for e in history) >= len(history) - 1                # pacing did the rest
    bound_holds(agent, 0.5, 12)
    summary = agent.summary()
    assert summary["topped_up_share"] > 0.5 and summary["own_share"] + summary["topped_up_share"] == pytest.approx(1)
    assert result.rollbacks == (1 if rollback else 0)
    for k, (prev, e) in enumerate(zip(history, history[1:]), 1):
        if prev.rolled_back:
            even = (0.5 - prev.sparsity_after) / (12 - k)
            assert e.chosen_gain + e.added_gain <= max((prev.chosen_gain + prev.added_gain) / 2, even) + 1e-9


def test_a_greedy_agent_reaches_the_target_without_pacing(tiny_llm4_dir, tmp_path, one_thread):
    env, agent, result = run(tiny_llm4_dir, greedy, tmp_path, rollback=None)
    assert result.terminated and env.unwrapped.global_sparsity_planned == pytest.approx(0.5, abs=1e-6)
    assert all(not e.added for e in agent.history) and agent.summary()["own_share"] == pytest.approx(1.0)
    bound_holds(agent, 0.5, 40)


def test_scaffold_order_is_by_measured_cost_then_importance_with_rolled_back_units_last():
    obs = {"sparsity": np.zeros(5), "wanda_z": np.array([-2.0, 0.0, 1.0, -1.0, 0.5]), "grad_z": np.zeros(5)}
    assert unit_order(obs) == [0, 3, 1, 4, 2]                                   # nothing measured: importance
    cost = [0.05, 0.01, None, 0.02, None]                                       # untried: the median 0.02
    assert unit_order(obs, cost=cost) == [1, 3, 4, 2, 0]                        # 3 before the untried 4, 2 by z
    assert unit_order(obs, cost=cost, avoid={1}) == [3, 4, 2, 0, 1]
    # the fallback and pacing's top-up follow it: unit 0 (least important by z, but the costliest) is not first
    assert fallback_action(obs, step_size=0.1, cap=0.95, cost=cost).tolist() == [0, 1, 0, 0, 0]
    assert fallback_action(obs, step_size=0.1, cap=0.95, cost=cost, avoid={1, 3}).tolist() == [0, 0, 0, 0, 1]
    pace = pace_plan(0.2, 10, rollbacks=0, reserve=0, largest_kept=0.0)        # 0.02 = one unit-level
    obs["target"] = np.array([0.5])
    paced, added = pace_action(np.zeros(5, dtype=np.int64), obs, np.full(5, 100), step_size=0.1, n_levels=3,
                               cap=0.95, pace=pace, cost=cost)
    assert (added, paced.tolist()) == (1, [0, 1, 0, 0, 0])


def test_the_band_ranks_units_far_above_the_global_sparsity_after_the_others():
    # unit 1 is the cheapest but already 0.3 above the global 0.3; with a band of 0.15 it goes after the units
    # within the band (cheapest first among them), still before a rolled-back unit
    obs = {"sparsity": np.array([0.2, 0.6, 0.3, 0.1]), "global_sparsity": np.array([0.3], dtype=np.float32),
           "wanda_z": np.zeros(4), "grad_z": np.zeros(4), "target": np.array([0.5])}
    cost = [0.04, 0.01, 0.03, 0.02]
    assert unit_order(obs, cost=cost) == [1, 3, 2, 0]
    assert unit_order(obs, cost=cost, band=0.15) == [3, 2, 0, 1]
    assert unit_order(obs, cost=cost, band=0.15, avoid={3}) == [2, 0, 1, 3]
    assert unit_order(obs, cost=cost, band=0.3) == [1, 3, 2, 0]                 # 0.6 is exactly at the band's edge
    assert fallback_action(obs, step_size=0.1, cap=0.95, cost=cost, band=0.15).tolist() == [0, 0, 0, 1]
    pace = pace_plan(0.25, 10, rollbacks=0, reserve=0, largest_kept=0.0)       # 0.025: one unit-level (0.1 of 1/4)
    paced, added = pace_action(np.zeros(4, dtype=np.int64), obs, np.full(4, 100), step_size=0.1, n_levels=3,
                               cap=0.95, pace=pace, cost=cost, band=0.15)
    assert (added, paced.tolist()) == (1, [0, 0, 0, 1])
