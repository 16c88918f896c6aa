"""The LLM agent drives a real PruningEnv (tiny 4-block Llama) through the episode runner, talking real HTTP
to a scripted server that answers validly, with malformed JSON, an unknown unit, over the cap, HTTP 500/503
and a timeout. The env stays consistent, and replaying the transcript reproduces the run exactly."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from scripted_chat_server import Reply, ScriptedChatServer, answer

from policies.agent import make_agent
from policies.agent.transcript import read_transcript
from policies.runner import load_steps, run_episode
from prune_env.env import PruningEnv

ENV = dict(seqlen=32, calib_samples=4, reward_eval_samples=2, final_eval_samples=2, gradient_samples=2,
           gradient_every=2, step_size=0.1, n_levels=3, max_unit_sparsity=0.35, target_sparsity=0.3,
           max_steps=10)
AGENT = dict(model="scripted", api_key="test", timeout=0.5, max_retries=2, answer_retries=2, backoff=0.01,
             response_format="json_object", history_size=3, pace=False)  # exact scripted actions; pacing: below
ROW = re.compile(r"^(\d+): s=([0-9.]+) ", re.MULTILINE)


def first_unit_with_room(body: dict) -> Reply:
    """Like a cautious model: one level on the first unit of the table that has room under the cap."""
    table = body["messages"][1]["content"]
    for unit, s in ROW.findall(table):
        if float(s) + ENV["step_size"] <= ENV["max_unit_sparsity"] + 1e-6:
            return answer({unit: 1}, f"unit {unit} has room", "one level at a time")
    return answer({"0": 1})


SCRIPT = [
    answer({"0": 1, "3": 2}, "late block first", "nothing to reflect on yet"),    # step 1: valid
    Reply('{"reflection": "ok", "prune": [{"unit": "1", "level": 1}'),          # step 2: malformed JSON ...
    answer({"1": 1}),                                                           # ... then valid
    answer({"7": 1}),                                                           # step 3: unknown unit ...
    Reply(status=500), Reply(content="too late", delay=1.0),                    # ... HTTP 500, timeout ...
    answer({"3": 1}),                                                           # ... then valid
    answer({"3": 1}), answer({"3": 1}), answer({"3": 1}),                       # step 4: at the cap x3
    Reply(status=503), Reply(status=503), Reply(status=503),                    # step 5: endpoint down
]


def make_env(model_dir) -> PruningEnv:
    return PruningEnv(model=str(model_dir), **ENV)


def weights(env: PruningEnv) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in env.model.state_dict().items()}


@pytest.fixture(scope="module")
def scripted_run(tiny_llm4_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("agent-run")
    env = make_env(tiny_llm4_dir)
    with ScriptedChatServer(SCRIPT, default=first_unit_with_room) as server:
        agent = make_agent(env={}, base_url=server.base_url, transcript_path=out / "transcript.jsonl", **AGENT)
        result = run_episode(env, agent, steps_path=out / "steps.jsonl", progress=False)
    return {"env": env, "result": result, "steps": [s for s in load_steps(out / "steps.jsonl") if s["kind"] == "step"],
            "transcript": out / "transcript.jsonl", "requests": server.requests, "weights": weights(env),
            "history": agent.history}


def test_the_agent_retries_falls_back_and_records_every_step(scripted_run):
    steps, result = scripted_run["steps"], scripted_run["result"]
    agent = [s["policy"] for s in steps]
    assert steps[0]["action"] == [1, 0, 0, 2] and agent[0]["rationale"] == "late block first"
    assert agent[0]["reflection"] == "nothing to reflect on yet" and not agent[0]["fallback"]
    assert agent[1]["answer_retries"] == 1 and "no valid JSON object" in agent[1]["answer_errors"][0]
    assert steps[1]["action"] == [0, 1, 0, 0]
    assert (agent[2]["answer_retries"], agent[2]["network_retries"], agent[2]["requests"]) == (1, 2, 4)
    assert "unknown unit '7'" in agent[2]["answer_errors"][0] and steps[2]["action"] == [0, 0, 0, 1]
    assert ["http 500" in e or "timeout" in e for e in agent[2]["transport_errors"]] == [True, True]
    assert agent[3]["fallback"] and "at the cap" in agent[3]["fallback_reason"]
    assert agent[4]["fallback"] and "503" in agent[4]["fallback_reason"]
    assert sum(a["fallback"] for a in agent) == 2 == result.totals["fallbacks"]
    for a, s in zip(agent, steps):  # a fallback is one level on one unit
        assert not a["fallback"] or sorted(s["action"]) == [0, 0, 0, 1]
    assert all(a["prompt_tokens"] > 0 for a in agent if "503" not in (a["fallback_reason"] or ""))
    assert result.terminated and result.global_sparsity == pytest.approx(0.3, abs=0.02)
    # whose pruning it was: two fallback steps of one level (0.1) on one of 4 equal blocks, of 0.3 in all
    summary = result.summary
    assert summary["sparsity_gain"] == pytest.approx(scripted_run["env"].global_sparsity_planned, abs=1e-6)
    assert summary["fallback_share"] == pytest.approx(2 * 0.1 / 4 / 0.3, abs=1e-6) and summary["topped_up_share"] == 0
    assert summary["own_share"] + summary["fallback_share"] == pytest.approx(1.0)
    assert summary["requests"] == len(scripted_run["requests"]) == result.totals["requests"]
    assert summary["tokens"] == result.totals["prompt_tokens"] + result.totals["completion_tokens"]
    assert summary["llm_wait_s"] == pytest.approx(result.totals["llm_wait_s"])
    assert result.totals["gain_fallback"] == pytest.approx(summary["fallback_gain"])
    # the history the model saw is bounded, and it saw its own earlier reflections
    last_prompt = scripted_run["requests"][-1]["messages"][1]["content"]
    assert f"last 3 of {len(steps) - 1} steps" in last_prompt and "one level at a time" in last_prompt


def test_the_env_is_consistent_with_the_recorded_actions(scripted_run, tiny_llm4_dir):
    steps, env = scripted_run["steps"], scripted_run["env"]
    planned = np.zeros(4)
    for s in steps[:-1]:  # before the last step (which may be scaled down to land on the target)
        planned = np.minimum(planned + 0.1 * np.asarray(s["action"]), 0.35)
        assert list(s["unit_sparsity"].values()) == pytest.approx(planned.tolist())
    assert max(env.sparsity_map().values()) <= 0.35 + 1e-9
    # a fresh env driven with the same actions ends with the same weights and perplexity
    fresh = make_env(tiny_llm4_dir)
    fresh.reset(seed=0)
    for s in steps:
        fresh.step(np.asarray(s["action"]))
    same = weights(fresh)
    assert all(torch.equal(same[k], v) for k, v in scripted_run["weights"].items())
    assert fresh.ppl == env.ppl and fresh.sparsity_map() == env.sparsity_map()


def test_replaying_the_transcript_reproduces_the_run_without_the_endpoint(scripted_run, tiny_llm4_dir, tmp_path):
    env = make_env(tiny_llm4_dir)
    agent = make_agent(replay_path=scripted_run["transcript"], transcript_path=tmp_path / "again.jsonl")
    result = run_episode(env, agent, steps_path=tmp_path / "steps.jsonl", progress=False)
    replayed = [s for s in load_steps(tmp_path / "steps.jsonl") if s["kind"] == "step"]
    assert [s["action"] for s in replayed] == [s["action"] for s in scripted_run["steps"]]
    assert [s["ppl"] for s in replayed] == [s["ppl"] for s in scripted_run["steps"]]
    assert [s["policy"]["fallback_reason"] for s in replayed] == [s["policy"]["fallback_reason"] for s in scripted_run["steps"]]
    assert result.final_ppl == scripted_run["result"].final_ppl
    assert all(torch.equal(weights(env)[k], v) for k, v in scripted_run["weights"].items())
    assert agent.session.transport.remaining == 0
    # the replay's own transcript holds the same requests
    def bodies(path):
        return [json.dumps(r["request"], sort_keys=True) for r in read_transcript(path) if r["type"] == "request"]
    assert bodies(tmp_path / "again.jsonl") == bodies(scripted_run["transcript"])


def test_a_resumed_agent_remembers_its_recorded_reasoning(scripted_run, tiny_llm4_dir, tmp_path):
    recorded = scripted_run["steps"][:4]
    env = make_env(tiny_llm4_dir)
    with ScriptedChatServer([], default=first_unit_with_room) as server:
        agent = make_agent(env={}, base_url=server.base_url, **AGENT)
        run_episode(env, agent, steps_path=tmp_path / "steps.jsonl", start_from=recorded, progress=False)
    original = scripted_run["history"][:4]
    assert [(h.rationale, h.reflection, h.fallback, h.levels) for h in agent.history[:4]] == \
        [(h.rationale, h.reflection, h.fallback, h.levels) for h in original]
    assert agent.history[0].rationale == "late block first" and agent.history[3].fallback
    # the first prompt after the resume shows the recalled steps as the original run's prompt did
    assert "fallback" in server.requests[0]["messages"][1]["content"]
