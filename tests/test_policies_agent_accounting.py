"""Whose pruning was it: the share arithmetic on hand-computed numbers (pure), and the agent's summary over a
scripted episode with pacing on, a rolled-back step, a fallback step topped up by pacing and a step the env
scales onto the target, so the three shares are known exactly; a resumed agent rebuilds the same summary."""

from __future__ import annotations

import numpy as np
import pytest
from scripted_chat_server import Reply, ScriptedChatServer, answer

from policies.agent import make_agent
from policies.agent.accounting import SHARES, StepGain, gain_shares, step_gain
from policies.base import EnvView, StepOutcome

NUMEL = (600, 200, 100, 100)   # unequal units: a level on unit 0 is worth 6 levels on unit 3
TARGET, STEP, CAP = 0.3, 0.1, 0.95
WANDA, GRAD = (0.5, -1.0, 1.5, -1.0), (0.0, 0.2, -0.5, 0.1)  # importance 0.5, -0.8, 1.0, -0.9: units 3, 1, 0, 2


def view() -> EnvView:
    return EnvView(unit_names=tuple(f"model.layers.{i}" for i in range(4)), unit_numel=NUMEL, n_levels=3,
                   step_size=STEP, max_unit_sparsity=CAP, target_sparsity=TARGET, max_steps=10, method="wanda",
                   granularity="block", rollback_threshold=0.2)


def obs(sparsity, steps_left: int) -> dict[str, np.ndarray]:
    s = np.asarray(sparsity, dtype=np.float32)
    weighted = float((np.asarray(sparsity) * np.asarray(NUMEL)).sum() / sum(NUMEL))
    return {"wanda_z": np.asarray(WANDA, dtype=np.float32), "grad_z": np.asarray(GRAD, dtype=np.float32),
            "sparsity": s, "global_sparsity": np.array([weighted], dtype=np.float32),
            "target": np.array([TARGET], dtype=np.float32), "ppl_ratio": np.array([1.0], dtype=np.float32),
            "steps_left": np.array([steps_left], dtype=np.float32)}


# ---------------------------------------------------------------- pure
def test_step_gain_splits_the_planned_increments_llm_first_then_pacing():
    numel = np.array([100, 300])
    # own: unit 0 +0.2 (20 of 400 weights), pacing: unit 0 +0.1 more and unit 1 +0.1 (10 + 30)
    g = step_gain([0.0, 0.0], numel, [2, 0], [3, 1], step_size=0.1, cap=0.95, target=0.9, fallback=False)
    assert (g.own, g.topped_up, g.fallback) == pytest.approx((20 / 400, 40 / 400, 0.0))
    # the cap: unit 0 at 0.8 with cap 0.9 takes only 0.1 of the LLM's 2 levels; pacing's level there adds nothing
    g = step_gain([0.8, 0.0], numel, [2, 0], [3, 1], step_size=0.1, cap=0.9, target=0.9, fallback=False)
    assert (g.own, g.topped_up) == pytest.approx((10 / 400, 30 / 400))
    # pacing fills what the cap left to the LLM's level: unit 0 at 0.75, LLM 1 level (+0.1), pacing 1 (+0.05)
    g = step_gain([0.75, 0.0], numel, [1, 0], [2, 0], step_size=0.1, cap=0.9, target=0.9, fallback=False)
    assert (g.own, g.topped_up) == pytest.approx((10 / 400, 5 / 400))
    # overshooting the target: every increment scaled by need / gain = 0.1 / 0.15
    g = step_gain([0.0, 0.0], numel, [2, 0], [2, 1], step_size=0.1, cap=0.95, target=0.1, fallback=False)
    assert g.own + g.topped_up == pytest.approx(0.1)
    assert (g.own, g.topped_up) == pytest.approx((20 / 400 * 0.1 / 0.125, 30 / 400 * 0.1 / 0.125))
    # a fallback step: pacing on top of it is the fallback's too
    g = step_gain([0.0, 0.0], numel, [1, 0], [1, 1], step_size=0.1, cap=0.95, target=0.9, fallback=True)
    assert (g.own, g.topped_up, g.fallback) == pytest.approx((0.0, 0.0, 40 / 400))
    with pytest.raises(ValueError, match="pacing only adds"):
        step_gain([0.0, 0.0], numel, [2, 0], [1, 0], step_size=0.1, cap=0.95, target=0.9, fallback=False)


def test_gain_shares_sum_to_one_and_are_null_without_gain():
    shares = gain_shares([StepGain(own=0.03, topped_up=0.01), StepGain(), StepGain(fallback=0.04)])
    assert shares == pytest.approx({"own_share": 0.375, "topped_up_share": 0.125, "fallback_share": 0.5})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert gain_shares([]) == dict.fromkeys(SHARES) == gain_shares([StepGain(), StepGain()])


# ---------------------------------------------------------------- the agent over real HTTP
# Hand-computed episode (numel 600/200/100/100 of 1000, target 0.3, rollback_reserve 2; pacing.pace_plan):
# 1. s=0, 10 steps left: needs 0.3/(10-2)=0.0375, tops up by at most max(0, 0.3/10)=0.03. LLM {2: 1} = 0.01;
#    pacing +1 on unit 3 (0.01), unit 1 (0.02) -> 0.04 (0.03 added).
# 2. rolled back: LLM {0: 1} = 0.06 (enough, no pacing), nothing kept; it spends one of the 2 spare steps.
# 3. endpoint down (3 x 503): fallback [0,0,0,1] = 0.01; needs 0.26/(8-1)=0.0371, but right after a rollback
#    pacing stays under max(half the rejected 0.06, 0.26/8) = 0.0325; unit 0 (in the rolled-back step) comes
#    last: unit 3 again (0.01), unit 1 would pass 0.0325, unit 2 (0.01) -> 0.03.
# 4. s=(0,0.1,0.2,0.3): LLM {0: 2, 1: 2, 2: 2} = 0.12+0.04+0.02 = 0.18, enough.
# 5. s=(0.2,0.3,0.4,0.3), global 0.25: LLM {0: 1} = 0.06 overshoots the target: the env scales it to 0.05.
# Kept: own 0.01 + 0.18 + 0.05, topped up 0.03, fallback 0.03, total 0.30.
SCRIPT = [answer({"2": 1}), answer({"0": 1}), Reply(status=503), Reply(status=503), Reply(status=503),
          answer({"0": 2, "1": 2, "2": 2}), answer({"0": 1})]
STEPS = [  # (sparsity before, steps left, applied action, rolled back, sparsity after)
    ((0, 0, 0, 0), 10, [0, 1, 1, 1], False, (0, 0.1, 0.1, 0.1)),
    ((0, 0.1, 0.1, 0.1), 9, [1, 0, 0, 0], True, (0, 0.1, 0.1, 0.1)),
    ((0, 0.1, 0.1, 0.1), 8, [0, 0, 1, 2], False, (0, 0.1, 0.2, 0.3)),
    ((0, 0.1, 0.2, 0.3), 7, [2, 2, 2, 0], False, (0.2, 0.3, 0.4, 0.3)),
    ((0.2, 0.3, 0.4, 0.3), 6, [1, 0, 0, 0], False, (0.2 + 0.1 * 5 / 6, 0.3, 0.4, 0.3)),
]
PPL = [11.0, 14.0, 11.5, 12.0, 12.2]  # after each step (the rejected one for step 2; then back to 11.0)
EXPECTED = {"own_share": 0.24 / 0.30, "topped_up_share": 0.03 / 0.30, "fallback_share": 0.03 / 0.30}
AGENT = dict(model="scripted", api_key="t", timeout=5, max_retries=2, backoff=0.01, response_format="json_object",
             pace=True, rollback_reserve=2, bar_rejected=False)  # step 4 re-prunes unit 0 of rolled-back step 2


def outcome(step: int, action, rolled_back: bool, after) -> StepOutcome:
    ppl = PPL[step - 1]
    info = {"ppl": 11.0 if rolled_back else ppl, "rolled_back": rolled_back,
            **({"rejected_ppl": ppl} if rolled_back else {})}
    return StepOutcome(step=step, action=np.asarray(action), reward=0.0, terminated=step == len(STEPS),
                       truncated=False, obs=obs(after, 10 - step), info=info)


def test_the_three_shares_of_a_scripted_paced_episode_are_exact(tmp_path):
    records = []
    with ScriptedChatServer(SCRIPT) as server:
        agent = make_agent(env={}, base_url=server.base_url, sleep=lambda _s: None, **AGENT)
        agent.reset(view(), obs((0, 0, 0, 0), 10), {"ppl": 10.0})
        for step, (before, left, applied, rolled_back, after) in enumerate(STEPS, 1):
            assert agent.act(obs(before, left), {}).tolist() == applied
            agent.observe(outcome(step, applied, rolled_back, after))
            records.append(agent.record())
    assert [r["own_action"] for r in records] == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1], [2, 2, 2, 0], [1, 0, 0, 0]]
    assert [r["fallback"] for r in records] == [False, False, True, False, False]
    assert [r["topped_up_levels"] for r in records] == [2, 0, 2, 0, 0]
    gains = [(r["gain_own"], r["gain_topped_up"], r["gain_fallback"]) for r in records]
    assert gains == [pytest.approx(g, abs=1e-7)
                     for g in [(0.01, 0.03, 0), (0, 0, 0), (0, 0, 0.03), (0.18, 0, 0), (0.05, 0, 0)]]
    summary = agent.summary()
    assert {k: summary[k] for k in SHARES} == pytest.approx(EXPECTED, abs=1e-6)
    assert sum(summary[k] for k in SHARES) == pytest.approx(1.0)
    assert summary["sparsity_gain"] == pytest.approx(0.30, abs=1e-6)
    assert summary["requests"] == 7 == len(server.requests)
    assert summary["tokens"] == summary["prompt_tokens"] + summary["completion_tokens"] and summary["prompt_tokens"] == 400
    assert summary["llm_wait_s"] > 0 and summary["endpoint"] == server.base_url
    # the history keeps the model's choice apart from pacing's and the fallback's
    h = agent.history
    assert (h[0].own, h[0].added, h[0].fallback) == ({"2": 1}, {"1": 1, "3": 1}, False)
    assert (h[2].own, h[2].added, h[2].fallback) == ({"3": 1}, {"2": 1, "3": 1}, True)
    assert (h[3].own, h[3].added) == ({"0": 2, "1": 2, "2": 2}, {})
    assert (h[0].chosen_gain, h[0].added_gain) == pytest.approx((0.01, 0.03))
    last = server.requests[-1]["messages"][1]["content"]
    assert "step 1: you chose {2: 1} (+0.010); pacing added {1: 1, 3: 1} (+0.030) -> perplexity +10.0%, kept" in last
    assert "step 3: no valid answer; fallback {3: 1} (+0.010), not yours; pacing added {2: 1, 3: 1} (+0.020)" in last
    assert "step 2: you chose {0: 1} (+0.060) -> perplexity +27.3%, ROLLED BACK" in last

    # a resumed agent replays the recorded steps (recall + observe, no requests) to the same summary and history
    with ScriptedChatServer([]) as server:
        resumed = make_agent(env={}, base_url=server.base_url, **AGENT)
        resumed.reset(view(), obs((0, 0, 0, 0), 10), {"ppl": 10.0})
        for step, ((_, _, applied, rolled_back, after), extras) in enumerate(zip(STEPS, records), 1):
            resumed.recall(extras)
            resumed.observe(outcome(step, applied, rolled_back, after))
    again = resumed.summary()
    assert {k: again[k] for k in SHARES} == pytest.approx(EXPECTED, abs=1e-6) and not server.requests
    assert (again["requests"], again["tokens"]) == (summary["requests"], summary["tokens"])
    assert resumed.history == agent.history


def test_an_episode_without_kept_gain_has_null_shares(tmp_path):
    with ScriptedChatServer([answer({"0": 1})]) as server:
        agent = make_agent(env={}, base_url=server.base_url, model="scripted", api_key="t", pace=False,
                           response_format="json_object")
        agent.reset(view(), obs((0, 0, 0, 0), 10), {"ppl": 10.0})
        assert agent.summary()["own_share"] is None  # nothing yet
        action = agent.act(obs((0, 0, 0, 0), 10), {})
        agent.observe(outcome(1, action, True, (0, 0, 0, 0)))  # rolled back
    summary = agent.summary()
    assert all(summary[k] is None for k in SHARES) and summary["sparsity_gain"] == 0 and summary["requests"] == 1
