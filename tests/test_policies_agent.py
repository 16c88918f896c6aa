"""The LLM agent without a model: answer parsing and validation, fallback, prompt bounds, settings, and the
agent's retries / fallback / transcript against a real scripted HTTP server on 127.0.0.1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scripted_chat_server import Reply, ScriptedChatServer, answer

from policies.agent import make_agent
from policies.agent.answer import AnswerError, answer_schema, parse_answer, response_format, validate_answer
from policies.agent.chat import EndpointError, backoff_delay
from policies.agent.fallback import fallback_action
from policies.agent.prompt import HistoryEntry, PromptState, build_messages, history_text, unit_rows
from policies.agent.settings import resolve_settings
from policies.agent.transcript import ReplayError, read_transcript
from policies.base import EnvView, StepOutcome

NAMES = tuple(f"model.layers.{i}" for i in range(4))
SHORT = ["0", "1", "2", "3"]


def view(**overrides) -> EnvView:
    base = dict(unit_names=NAMES, unit_numel=(100, 100, 100, 100), n_levels=3, step_size=0.1,
                max_unit_sparsity=0.95, target_sparsity=0.5, max_steps=10, method="wanda", granularity="block",
                rollback_threshold=0.2)
    return EnvView(**{**base, **overrides})


def obs(sparsity=(0.0, 0.0, 0.0, 0.0), wanda=(0.5, -1.0, 1.5, -1.0), grad=(0.0, 0.2, -0.5, 0.1)) -> dict:
    s = np.asarray(sparsity, dtype=np.float32)
    return {"wanda_z": np.asarray(wanda, dtype=np.float32), "grad_z": np.asarray(grad, dtype=np.float32),
            "sparsity": s, "global_sparsity": np.array([s.mean()], dtype=np.float32),
            "target": np.array([0.5], dtype=np.float32), "ppl_ratio": np.array([1.0], dtype=np.float32),
            "steps_left": np.array([10], dtype=np.float32)}


def validate(text: str, sparsity=(0.0, 0.0, 0.0, 0.0), cap: float = 0.95) -> np.ndarray:
    return validate_answer(parse_answer(text), short_names=SHORT, full_names=NAMES,
                           sparsity=np.asarray(sparsity), n_levels=3, step_size=0.1, cap=cap)


# ---------------------------------------------------------------- answers
@pytest.mark.parametrize("text", [
    '{"reflection": "x", "rationale": "y", "prune": [{"unit": "1", "level": 2}, {"unit": "3", "level": 1}]}',
    'Sure!\n```json\n{"prune": [{"unit": "1", "level": 2}, {"unit": "3", "level": 1}]}\n```\nDone.',
    'I think {"prune": {"1": 2, "3": 1}} is best',
    '{"prune": [["1", 2], ["3", "1"]]}',
    '{"prune": [{"unit": 1, "level": 2.0}, {"unit": "model.layers.3", "level": 1}]}',
    '{"actions": [{"1": 2}, {"3": 1}]}',
    '{"reflection": "two\nlines", "prune": [{"unit": "1", "level": 2}, {"unit": "3", "level": 1}]}',  # raw newline
])
def test_tolerant_parser_accepts_common_shapes(text):
    assert validate(text).tolist() == [0, 2, 0, 1]


@pytest.mark.parametrize("text, needle", [
    ("", "empty"),
    ("prune block 3 please", "no valid JSON object"),
    ('{"prune": [{"unit": "1", "level": 2}', "no valid JSON object"),
    ('{"rationale": "r"}', 'no "prune" field'),
    ('{"prune": "all"}', "must be a list"),
    ('{"prune": [{"unit": "7", "level": 1}]}', "unknown unit '7'"),
    ('{"prune": [{"unit": "1", "level": 3}]}', "integer 0..2"),
    ('{"prune": [{"unit": "1", "level": -1}]}', "integer 0..2"),
    ('{"prune": [{"unit": "1", "level": 1.5}]}', "integer 0..2"),
    ('{"prune": [{"unit": "1", "level": true}]}', "integer 0..2"),
    ('{"prune": [{"unit": "1", "level": 1}, {"unit": "1", "level": 2}]}', "listed twice"),
    ('{"prune": [{"unit": "1", "level": 0}]}', "at least one unit"),
])
def test_invalid_answers_say_what_is_wrong(text, needle):
    with pytest.raises(AnswerError, match=needle):
        validate(text)


def test_the_cap_is_enforced_per_unit():
    assert validate('{"prune": {"2": 1}}', sparsity=(0, 0, 0.8, 0), cap=0.9).tolist() == [0, 0, 1, 0]
    # a level past the room under the cap is cut to the room (as the env caps a step), not refused
    assert validate('{"prune": {"2": 2, "0": 2}}', sparsity=(0, 0, 0.8, 0), cap=0.9).tolist() == [2, 0, 1, 0]
    with pytest.raises(AnswerError, match="at the cap 0.9: it cannot be pruned further"):
        validate('{"prune": {"2": 1}}', sparsity=(0, 0, 0.9, 0), cap=0.9)


def test_schema_and_response_format_modes():
    schema = answer_schema(SHORT, 3)
    item = schema["properties"]["prune"]["items"]["properties"]
    assert item["unit"]["enum"] == SHORT and item["level"]["enum"] == [0, 1, 2]
    assert response_format("json_schema", schema)["json_schema"]["schema"] is schema
    assert response_format("json_object", schema) == {"type": "json_object", "schema": schema}
    assert response_format("none", schema) is None


# ---------------------------------------------------------------- fallback, prompt, settings
def test_fallback_prunes_the_least_important_unit_below_the_cap_by_one_level():
    # importance = wanda_z + grad_z = [0.5, -0.8, 1.0, -0.9]: unit 3 is the least important
    assert fallback_action(obs(), step_size=0.1, cap=0.95).tolist() == [0, 0, 0, 1]
    # unit 3 at the cap: the next least important, unit 1
    assert fallback_action(obs(sparsity=(0, 0, 0, 0.9)), step_size=0.1, cap=0.95).tolist() == [0, 1, 0, 0]
    assert not fallback_action(obs(sparsity=(0.9,) * 4), step_size=0.1, cap=0.95).any()


def entry(step: int, **kw) -> HistoryEntry:
    base = dict(step=step, levels={"1": 1}, ppl_before=10.0, ppl_after=11.0, sparsity_after=0.1 * step,
                rolled_back=False, rationale=f"because {step} " + "x" * 500, reflection=f"learned {step}")
    return HistoryEntry(**{**base, **kw})


def test_history_is_bounded_and_keeps_reflections_and_rollbacks():
    history = [entry(i, rolled_back=(i == 19), ppl_after=20.0 if i == 19 else 11.0) for i in range(1, 21)]
    text = history_text(history, limit=3, reflection_chars=60, reasoned=2)
    assert "last 3 of 20 steps" in text and "17 earlier steps not shown (0 rolled back" in text
    assert [ln.split(":")[0] for ln in text.splitlines() if ln.startswith("step ")] == ["step 18", "step 19", "step 20"]
    assert "learned 19" in text and "ROLLED BACK" in text and "+100.0%" in text
    assert "learned 18" not in text  # the reasoning of the last 2 shown steps only
    assert max(len(ln) for ln in text.splitlines()) < 140  # long rationales are clipped
    # the prompt does not grow with the episode
    rows = unit_rows(SHORT, False)
    def prompt(h):
        return build_messages(view(), obs(), PromptState(history=h), rows, history_size=3, reflection_chars=60)[1]["content"]
    short, long = prompt(history[:4]), prompt(history * 10)
    assert abs(len(long) - len(short)) < 40
    assert "Goal: global sparsity 0.500" in short and "0: s=0.00 zw=+0.5 zg=+0.0" in short
    assert "more than 20%" in short


def test_the_history_marks_what_pacing_added_and_the_fallback_separately():
    paced = entry(1, levels={"1": 2, "3": 1}, chosen={"1": 1}, chosen_gain=0.025, added_gain=0.05, reflection="",
                  rationale="mine")
    fallback = entry(2, levels={"2": 1, "0": 1}, chosen={"2": 1}, fallback=True, chosen_gain=0.025,
                     added_gain=0.025, rationale="", reflection="")
    plain = entry(3, levels={"0": 2}, chosen={"0": 2}, chosen_gain=0.05, rationale="", reflection="")
    lines = history_text([paced, fallback, plain], limit=3, reflection_chars=60, reasoned=3).splitlines()
    assert lines[1].startswith("step 1: you chose {1: 1} (+0.025); pacing added {1: 1, 3: 1} (+0.050) -> perplexity")
    assert lines[3].startswith("step 2: no valid answer; fallback {2: 1} (+0.025), not yours; pacing added {0: 1} (+0.025)")
    assert lines[4].startswith("step 3: you chose {0: 2} (+0.050) -> ") and "pacing" not in lines[4]
    assert paced.added == {"1": 1, "3": 1} and plain.added == {} and entry(4).own == {"1": 1}


def test_settings_come_from_arguments_then_env_variables():
    env = {"OPENAI_BASE_URL": "http://h:1/v1", "OPENAI_API_KEY": "k", "OPENAI_MODEL": "m",
           "PRUNE_GYM_AGENT_MODEL": "m2", "PRUNE_GYM_AGENT_TEMPERATURE": "0.7", "PRUNE_GYM_AGENT_SEED": "3"}
    s = resolve_settings(env, max_retries=1)
    assert (s.base_url, s.api_key, s.model, s.temperature, s.seed, s.max_retries) == ("http://h:1/v1", "k", "m2", 0.7, 3, 1)
    assert resolve_settings(env, model="m3").model == "m3"
    assert resolve_settings({}, temperature="0.5", max_retries="3", seed="none").temperature == 0.5  # CLI strings
    assert resolve_settings({}).model is None and resolve_settings({}).response_format == "auto"
    with pytest.raises(ValueError, match="response_format"):
        resolve_settings({}, response_format="xml")
    with pytest.raises(ValueError, match="must be a number"):
        resolve_settings({"PRUNE_GYM_AGENT_TIMEOUT": "soon"})
    with pytest.raises(ValueError, match="unknown agent setting"):
        resolve_settings({}, temprature=1)
    with pytest.raises(ValueError, match="model name"):
        make_agent(env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert [backoff_delay(k, 0.5, 3.0) for k in range(4)] == [0.5, 1.0, 2.0, 3.0]


# ---------------------------------------------------------------- the agent over real HTTP
def agent_on(server: ScriptedChatServer, sleeps: list[float], tmp_path, **options):
    settings = dict(base_url=server.base_url, model="scripted", api_key="test", timeout=0.5, max_retries=2,
                    answer_retries=2, backoff=0.01, response_format="json_object", pace=False)
    agent = make_agent(env={}, sleep=sleeps.append, transcript_path=tmp_path / "t.jsonl", **{**settings, **options})
    agent.reset(view(), obs(), {"ppl": 10.0})
    return agent


def test_valid_answer_is_acted_on_and_recorded(tmp_path):
    sleeps: list[float] = []
    with ScriptedChatServer([answer({"1": 2, "3": 1}, "low scores", "first step")]) as server:
        agent = agent_on(server, sleeps, tmp_path)
        action = agent.act(obs(), {})
    assert action.tolist() == [0, 2, 0, 1]
    rec = agent.record()
    assert rec["rationale"] == "low scores" and rec["reflection"] == "first step" and not rec["fallback"]
    assert rec["prompt_tokens"] == 100 and rec["completion_tokens"] > 0 and rec["fallbacks"] == 0
    assert rec["requests"] == 1 and (rec["network_retries"], rec["answer_retries"]) == (0, 0) and rec["latency_s"] > 0
    sent = server.requests[0]
    assert sent["model"] == "scripted" and sent["seed"] == 0 and sent["temperature"] == 0.0
    assert sent["response_format"]["type"] == "json_object" and sent["messages"][0]["role"] == "system"
    assert "0: s=0.00" in sent["messages"][1]["content"] and not sleeps


def test_invalid_answers_are_retried_with_the_error_fed_back(tmp_path):
    script = [Reply('{"prune": [{"unit": "1", "level": 2}'),      # malformed JSON
              answer({"9": 1}),                                  # unknown unit
              answer({"2": 1}, "fixed", "")]
    with ScriptedChatServer(script) as server:
        agent = agent_on(server, [], tmp_path)
        action = agent.act(obs(), {})
    assert action.tolist() == [0, 0, 1, 0]
    rec = agent.record()
    assert not rec["fallback"] and rec["answer_retries"] == 2 and rec["requests"] == 3
    assert "no valid JSON object" in rec["answer_errors"][0] and "unknown unit '9'" in rec["answer_errors"][1]
    second, third = server.requests[1]["messages"], server.requests[2]["messages"]
    assert second[-2] == {"role": "assistant", "content": '{"prune": [{"unit": "1", "level": 2}'}
    assert "no valid JSON object" in second[-1]["content"]
    assert len(third) == 4 and "unknown unit '9'" in third[-1]["content"]  # the retry prompt does not pile up


def test_answers_that_stay_invalid_lead_to_the_recorded_fallback(tmp_path):
    over_cap = answer({"1": 1})  # unit 1 is at 0.9 with cap 0.95
    with ScriptedChatServer([over_cap] * 3) as server:
        agent = agent_on(server, [], tmp_path)
        action = agent.act(obs(sparsity=(0, 0.9, 0, 0)), {})
    assert action.tolist() == [0, 0, 0, 1]  # the fallback: least important unit, one level
    rec = agent.record()
    assert rec["fallback"] and "3 invalid answers" in rec["fallback_reason"] and "at the cap" in rec["fallback_reason"]
    assert len(server.requests) == 3
    decision = [r for r in read_transcript(tmp_path / "t.jsonl") if r["type"] == "decision"]
    assert decision == [{"type": "decision", "step": 1, "action": [0, 0, 0, 1], "fallback": True,
                         "fallback_reason": rec["fallback_reason"], "topped_up_levels": 0}]


def test_http_500_and_timeouts_are_retried_with_backoff(tmp_path):
    sleeps: list[float] = []
    script = [Reply(status=500), Reply(content="late", delay=1.0), answer({"0": 1})]
    with ScriptedChatServer(script) as server:
        agent = agent_on(server, sleeps, tmp_path)
        action = agent.act(obs(), {})
    assert action.tolist() == [1, 0, 0, 0]
    rec = agent.record()
    assert rec["network_retries"] == 2 and not rec["fallback"] and sleeps == [0.01, 0.02]
    assert "http 500" in rec["transport_errors"][0] and "timeout" in rec["transport_errors"][1]
    kinds = [r["type"] for r in read_transcript(tmp_path / "t.jsonl")]
    assert kinds == ["meta", "request", "error", "request", "error", "request", "response", "decision"]


def test_an_endpoint_that_stays_down_leads_to_the_fallback(tmp_path):
    sleeps: list[float] = []
    with ScriptedChatServer([Reply(status=503)] * 3 + [answer({"0": 1})]) as server:
        agent = agent_on(server, sleeps, tmp_path)
        action = agent.act(obs(), {})
        assert action.tolist() == [0, 0, 0, 1] and len(server.requests) == 3 and len(sleeps) == 2
        rec = agent.record()
        assert rec["fallback"] and "no answer from the endpoint" in rec["fallback_reason"]
        assert "503" in rec["fallback_reason"]
        # the agent remembers the step, and tells the model that it was not its own
        agent.observe(StepOutcome(step=1, action=action, reward=0.0, terminated=False, truncated=False,
                                  obs=obs(sparsity=(0, 0, 0, 0.1)), info={"ppl": 10.5, "rolled_back": False}))
        assert agent.history[0].fallback and agent.history[0].levels == {"3": 1}
        assert agent.act(obs(sparsity=(0, 0, 0, 0.1)), {}).tolist() == [1, 0, 0, 0]
    prompt = server.requests[3]["messages"][1]["content"]
    assert "step 1: no valid answer; fallback {3: 1} (+0.025), not yours -> perplexity +5.0%" in prompt


def test_a_refused_configuration_raises_instead_of_falling_back(tmp_path):
    with ScriptedChatServer([Reply(status=401, content="bad key")]) as server:
        agent = agent_on(server, [], tmp_path)
        with pytest.raises(EndpointError, match="OPENAI_API_KEY"):
            agent.act(obs(), {})


def test_auto_response_format_falls_back_to_json_object_on_llama_cpp_style_500(tmp_path):
    def server_like_llama_cpp(body):
        if body.get("response_format", {}).get("type") == "json_schema":
            return Reply(status=500, content="json_schema is not supported")
        return answer({"2": 1})

    sleeps: list[float] = []
    with ScriptedChatServer([], default=server_like_llama_cpp) as server:
        agent = agent_on(server, sleeps, tmp_path, response_format="auto")
        assert agent.act(obs(), {}).tolist() == [0, 0, 1, 0]
        agent.act(obs(), {})
    assert [r["response_format"]["type"] for r in server.requests] == ["json_schema", "json_object", "json_object"]
    assert not sleeps and agent.record()["response_format"] == "json_object"


def test_replay_checks_every_request(tmp_path):
    with ScriptedChatServer([answer({"1": 1})]) as server:
        agent = agent_on(server, [], tmp_path)
        agent.act(obs(), {})
    replay = make_agent(replay_path=tmp_path / "t.jsonl")
    replay.reset(view(), obs(), {"ppl": 10.0})
    with pytest.raises(ReplayError, match=r"request\.messages\[1\]\.content"):
        replay.act(obs(sparsity=(0.1, 0, 0, 0)), {})  # a different observation: the run diverged
    replay = make_agent(replay_path=tmp_path / "t.jsonl")
    replay.reset(view(), obs(), {"ppl": 10.0})
    assert replay.act(obs(), {}).tolist() == [0, 1, 0, 0]
    with pytest.raises(ReplayError, match="only 1 recorded requests"):
        replay.act(obs(), {})
    with pytest.raises(ReplayError, match="does not exist"):
        make_agent(replay_path=tmp_path / "missing.jsonl")
    meta = read_transcript(tmp_path / "t.jsonl")[0]
    assert meta["settings"]["api_key"] == "<set>" and "test" not in json.dumps(meta)


def test_a_rollback_is_remembered_with_the_rejected_perplexity(tmp_path):
    with ScriptedChatServer([answer({"0": 2}, "try early", "early is cheap"), answer({"3": 1})]) as server:
        agent = agent_on(server, [], tmp_path)
        action = agent.act(obs(), {})
        agent.observe(StepOutcome(step=1, action=action, reward=-1.0, terminated=False, truncated=False, obs=obs(),
                                  info={"ppl": 10.0, "rolled_back": True, "rejected_ppl": 14.0}))
        agent.act(obs(), {})
    e = agent.history[0]
    assert (e.ppl_before, e.ppl_after, e.rolled_back, e.reflection) == (10.0, 14.0, True, "early is cheap")
    prompt = server.requests[1]["messages"][1]["content"]
    assert "step 1: you chose {0: 2} (+0.050) -> perplexity +40.0%, ROLLED BACK" in prompt and "early is cheap" in prompt
    # the memory keeps the rollback, and charges unit 0 for it: log(1.4) over its 2 levels
    assert "Rolled back so far (1 of 1 steps):\nstep 1: {0: 2} -> perplexity +40.0% > 20%, undone" in prompt
    assert f"0: s=0.00 zw=+0.5 zg=+0.0 cost={100 * np.log(1.4) / 2:+.1f}% n=1" in prompt and "1: s=0.00" in prompt


def test_a_rolled_back_choice_is_barred_until_a_kept_step_prunes_the_unit(tmp_path):
    rolled_back = {"ppl": 10.0, "rolled_back": True, "rejected_ppl": 14.0}
    script = [answer({"0": 2, "1": 1}),          # step 1: rolled back
              answer({"0": 2}),                  # step 2: unit 0 at its barred level: asked again
              answer({"0": 1, "1": 2}),          # still barred (unit 1 from level 1 up)
              answer({"0": 1, "3": 2}),          # valid; rolled back too: unit 3 barred from 2, unit 0 from 1
              answer({"0": 1}),                  # step 3: barred
              answer({"3": 1}),                  # valid; kept: unit 3 is pruned, so it is free again
              answer({"1": 1}),                  # step 4: unit 1 is unchanged since its rollback: still barred
              answer({"2": 1, "3": 2})]          # valid
    with ScriptedChatServer(script) as server:
        agent = agent_on(server, [], tmp_path)
        for step, info in enumerate([rolled_back, rolled_back, {"ppl": 11.0}, {"ppl": 11.0}], start=1):
            action = agent.act(obs(), {})
            agent.observe(StepOutcome(step=step, action=action, reward=0.0, terminated=False, truncated=False,
                                      obs=obs(), info=info))
    assert [h.own for h in agent.history] == [{"0": 2, "1": 1}, {"0": 1, "3": 2}, {"3": 1}, {"2": 1, "3": 2}]
    assert len(server.requests) == 8
    assert "Barred" not in server.requests[0]["messages"][1]["content"]
    assert "Barred (rolled back; until a kept step prunes them): {0: >=2, 1: >=1}." in server.requests[1]["messages"][1]["content"]
    assert "0 at level 2 (barred from 2)" in server.requests[2]["messages"][-1]["content"]
    assert "1 at level 2 (barred from 1)" in server.requests[3]["messages"][-1]["content"]
    assert "{0: >=1, 1: >=1, 3: >=2}" in server.requests[4]["messages"][1]["content"]
    assert "{0: >=1, 1: >=1}." in server.requests[6]["messages"][1]["content"]
    assert "1 at level 1 (barred from 1)" in server.requests[7]["messages"][-1]["content"]


def test_a_choice_that_stays_barred_leads_to_the_fallback(tmp_path):
    with ScriptedChatServer([answer({"0": 2})] * 4) as server:
        agent = agent_on(server, [], tmp_path)
        action = agent.act(obs(), {})
        agent.observe(StepOutcome(step=1, action=action, reward=-1.0, terminated=False, truncated=False, obs=obs(),
                                  info={"ppl": 10.0, "rolled_back": True, "rejected_ppl": 14.0}))
        action = agent.act(obs(), {})
    assert action.tolist() == [0, 0, 0, 1]  # the fallback (least important unit), not the barred {0: 2}
    rec = agent.record()
    assert rec["fallback"] and "3 invalid answers" in rec["fallback_reason"] and "barred from 2" in rec["fallback_reason"]


def test_without_bar_rejected_a_rolled_back_choice_may_be_repeated(tmp_path):
    with ScriptedChatServer([answer({"0": 2}), answer({"0": 2})]) as server:
        agent = agent_on(server, [], tmp_path, bar_rejected=False)
        action = agent.act(obs(), {})
        agent.observe(StepOutcome(step=1, action=action, reward=-1.0, terminated=False, truncated=False, obs=obs(),
                                  info={"ppl": 10.0, "rolled_back": True, "rejected_ppl": 14.0}))
        assert agent.act(obs(), {}).tolist() == [2, 0, 0, 0]
    assert len(server.requests) == 2 and "Barred" not in server.requests[1]["messages"][1]["content"]


def test_pacing_tops_up_the_least_important_units_only_by_the_shortfall():
    from policies.agent.pacing import pace_action, pace_plan, planned_gain

    o = obs()  # global 0, target 0.5, 10 steps left
    numel = np.array([100, 100, 100, 100])
    pace = pace_plan(0.5, 10, rollbacks=0, reserve=2, largest_kept=0.1)  # 0.5 over 8 steps: 0.0625
    assert (pace.reserve_left, pace.required, pace.bound) == (2, 0.0625, 0.1)
    mine = np.array([0, 0, 1, 0])  # +0.1 on one unit = 0.025 global: too little
    paced, added = pace_action(mine, o, numel, step_size=0.1, n_levels=3, cap=0.95, pace=pace)
    assert paced[2] == 1  # the agent's own choice is kept
    assert added == 2 and paced.tolist() == [0, 1, 1, 1]  # spread: unit 3 (-0.9, least important), then unit 1
    assert planned_gain(paced, o["sparsity"], numel, step_size=0.1, cap=0.95) >= 0.0625
    # units of a step just rolled back are topped up last
    assert pace_action(mine, o, numel, step_size=0.1, n_levels=3, cap=0.95, pace=pace, avoid={3})[0].tolist() == [1, 1, 1, 0]
    enough = np.array([2, 2, 0, 0])
    kept, none_added = pace_action(enough, o, numel, step_size=0.1, n_levels=3, cap=0.95, pace=pace)
    assert kept.tolist() == enough.tolist() and none_added == 0
    done = pace_plan(0.0, 10, rollbacks=0, reserve=2, largest_kept=0.1)
    assert pace_action(mine, o, numel, step_size=0.1, n_levels=3, cap=0.95, pace=done)[1] == 0
    full = obs(sparsity=(0.9, 0.9, 0.9, 0.9))  # everything at the cap: nothing to add, no endless loop
    assert pace_action(np.zeros(4, dtype=np.int64), full, numel, step_size=0.1, n_levels=3, cap=0.95, pace=pace)[1] == 0
