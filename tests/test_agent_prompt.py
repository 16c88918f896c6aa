"""The prompt: its bound in the agent model's own tokens (SmolLM2-135M-Instruct's tokenizer and chat template,
read from the packaged GGUF) for the default model's 30 blocks and 210 linears (grouped per block) with the
default history size; what it states (pace, spare steps, unit sizes, the gradient profile's age); the outcome
memory off; and answers naming groups."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from policies.agent.answer import AnswerError, answer_schema, parse_answer, validate_answer
from policies.agent.memory import Cost
from policies.agent.pacing import pace_plan
from policies.agent.prompt import (
    HistoryEntry,
    PromptState,
    build_messages,
    choose_rows,
    messages_tokens,
    system_prompt,
    unit_rows,
    worst_case_messages,
)
from policies.agent.settings import AgentSettings
from policies.base import EnvView
from prune_env.env import short_unit_names

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


def preset_view(model_dir, granularity: str) -> EnvView:
    """The default preset's units (names and sizes from its config.json), at the env's default settings."""
    cfg = json.loads((model_dir / "config.json").read_text())
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * cfg.get("head_dim", h // cfg["num_attention_heads"])
    sizes = dict(zip(LINEARS, (h * h, h * kv, h * kv, h * h, h * inter, h * inter, inter * h)))
    if granularity == "block":
        names = tuple(f"model.layers.{i}" for i in range(layers))
        numel = (sum(sizes.values()),) * layers
    else:
        names = tuple(f"model.layers.{i}.{lin}" for i in range(layers) for lin in LINEARS)
        numel = tuple(sizes[lin] for _ in range(layers) for lin in LINEARS)
    return EnvView(unit_names=names, unit_numel=numel, n_levels=4, step_size=0.05, max_unit_sparsity=0.95,
                   target_sparsity=0.5, max_steps=40, method="wanda", granularity=granularity, rollback_threshold=0.1)


@pytest.fixture(scope="module")
def smollm2_tokens():
    """Token count of a conversation as the local server sends it to SmolLM2-135M-Instruct."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from policies.agent.server import default_gguf

    llm = llama_cpp.Llama(model_path=str(default_gguf()), vocab_only=True, verbose=False)
    template = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    def count(messages):  # the prompt as the chat template renders it, with the assistant turn opened
        prompt = template(messages=messages).prompt
        return len(llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))
    return count


@pytest.mark.parametrize("granularity, units, grouped", [("block", 30, False), ("linear", 210, True)])
@pytest.mark.parametrize("memory", [True, False], ids=["memory", "no-memory"])
def test_the_prompt_stays_within_the_context_in_the_models_own_tokens(default_model_dir, smollm2_tokens,
                                                                      granularity, units, grouped, memory):
    settings = AgentSettings(memory=memory)  # the defaults: history 8, reflections 240 chars, 4096 - 384 tokens
    view = preset_view(default_model_dir, granularity)
    short = short_unit_names(list(view.unit_names))
    rows = choose_rows(view, short, history_size=settings.history_size, reflection_chars=settings.reflection_chars,
                       context_tokens=settings.context_tokens, max_tokens=settings.max_tokens, memory=memory)
    assert view.n_units == units and rows.grouped == grouped and len(rows.names) == 30
    worst = worst_case_messages(view, rows, history_size=settings.history_size,
                                reflection_chars=settings.reflection_chars, memory=memory)
    tokens = smollm2_tokens(worst)
    assert tokens <= settings.context_tokens - settings.max_tokens
    assert messages_tokens(worst) >= tokens  # the estimate the agent sizes its prompt with is conservative
    text = worst[1]["content"]
    assert text.count("\n  rationale: ") == 2 and "History (last 8 of 9 steps)" in text
    if grouped:  # a per-unit table would not fit
        flat = worst_case_messages(view, unit_rows(short, False), history_size=settings.history_size,
                                   reflection_chars=settings.reflection_chars, memory=memory)
        assert smollm2_tokens(flat) > settings.context_tokens - settings.max_tokens


def test_a_prompt_that_cannot_fit_says_what_to_change(default_model_dir):
    view = preset_view(default_model_dir, "block")
    with pytest.raises(ValueError, match="lower history_size"):
        choose_rows(view, short_unit_names(list(view.unit_names)), history_size=40, reflection_chars=240,
                    context_tokens=4096, max_tokens=384)


def small_view(**kw) -> EnvView:
    base = dict(unit_names=("model.layers.0", "model.layers.1", "model.layers.2"), unit_numel=(100, 100, 100),
                n_levels=4, step_size=0.05, max_unit_sparsity=0.95, target_sparsity=0.5, max_steps=20,
                method="wanda", granularity="block", rollback_threshold=0.1)
    return EnvView(**{**base, **kw})


def small_obs(**kw) -> dict[str, np.ndarray]:
    base = {"sparsity": np.array([0.1, 0.0, 0.2]), "wanda_z": np.array([1.2, -0.3, -0.9]),
            "grad_z": np.array([0.4, 0.1, -0.5]), "global_sparsity": np.array([0.1]), "steps_left": np.array([12]),
            "grad_age": np.array([3]), "target": np.array([0.5])}
    return {**base, **kw}


def test_the_prompt_states_the_pace_the_sizes_and_the_gradients_age():
    view = small_view()
    pace = pace_plan(0.4, 12, rollbacks=1, reserve=4, largest_kept=0.02)   # 3 spare steps: 0.4 / 9
    state = PromptState(pace=pace, paced=True, rollbacks=1, reserve=4, costs=[Cost(0.012, 2), Cost(None, 0),
                                                                              Cost(-0.003, 1)])
    text = build_messages(view, small_obs(), state, unit_rows(["0", "1", "2"], False), history_size=8,
                          reflection_chars=240)[1]["content"]
    assert "Goal: global sparsity 0.500, now 0.100: add 0.400 in the 12 steps left (of 20)." in text
    assert ("This step: add 0.0444 (0.400 over 9 steps), about 3 levels on units of average size (w=33.3%). "
            "Spare steps for rollbacks: 3 of 4 left (1 rollback).") in text
    assert "Pacing tops up a smaller choice (at most +0.0333)" in text
    assert "(zg from 3 steps ago)" in text and "every unit w=33.3% of the weights" in text
    assert "0: s=0.10 zw=+1.2 zg=+0.4 cost=+1.2% n=2\n1: s=0.00 zw=-0.3 zg=+0.1 cost=?\n2: s=0.20" in text
    assert "Rolled back so far: none." in text and "more than 10% is undone" in text
    # units of different sizes get a w column; a fresh gradient profile says so
    unequal = small_view(unit_numel=(100, 300, 600))
    text = build_messages(unequal, small_obs(grad_age=np.array([0])), PromptState(), unit_rows(["0", "1", "2"], False),
                          history_size=8, reflection_chars=240)[1]["content"]
    assert "1: s=0.00 zw=-0.3 zg=+0.1 w=30.0%\n" in text and "(zg of this state)" in text
    assert "This step" not in text and "cost" not in text  # no pace given, memory off


def test_the_memory_off_leaves_out_the_costs_and_the_rollbacks():
    view = small_view()
    entry = HistoryEntry(step=1, levels={"1": 2}, ppl_before=10.0, ppl_after=12.0, sparsity_after=0.1,
                         rolled_back=True, chosen={"1": 2}, chosen_gain=0.033)
    rows = unit_rows(["0", "1", "2"], False)
    on = build_messages(view, small_obs(), PromptState(history=[entry], costs=[Cost(None, 0)] * 3), rows,
                        history_size=8, reflection_chars=240)
    off = build_messages(view, small_obs(), PromptState(history=[entry]), rows, history_size=8, reflection_chars=240)
    assert on[0]["content"] == system_prompt(True) and off[0]["content"] == system_prompt(False)
    assert "cost" in system_prompt(True) and "cost" not in system_prompt(False)
    assert "Rolled back so far" in on[1]["content"] and "Rolled back so far" not in off[1]["content"]
    assert "cost=?" in on[1]["content"] and "cost" not in off[1]["content"]
    assert "step 1: you chose {1: 2} (+0.033) -> perplexity +20.0%, ROLLED BACK" in off[1]["content"]


def test_a_grouped_table_is_answered_with_groups():
    short = [f"{b}.{lin}" for b in range(3) for lin in ("q", "k", "up")]
    rows = unit_rows(short, True, numel=[4, 1, 10] * 3)
    assert rows.names == ("0", "1", "2") and rows.members[1] == (3, 4, 5)
    schema = answer_schema(rows.names, 4)
    assert schema["properties"]["prune"]["items"]["properties"]["unit"]["enum"] == ["0", "1", "2"]
    sparsity = np.array([0.0, 0.0, 0.0, 0.9, 0.85, 0.0, 0.95, 0.95, 0.95])
    def validate(text):
        return validate_answer(parse_answer(text), short_names=short, full_names=short, sparsity=sparsity,
                               n_levels=4, step_size=0.05, cap=0.95, groups=rows.groups()).tolist()
    # a group's level goes to each of its units, cut to the room each has; a unit may still be named alone
    assert validate('{"prune": {"1": 2, "0.q": 3}}') == [3, 0, 0, 1, 2, 2, 0, 0, 0]
    with pytest.raises(AnswerError, match="group 2: every unit of it is at the cap"):
        validate('{"prune": {"2": 1}}')
    with pytest.raises(AnswerError, match="listed twice"):
        validate('{"prune": {"0": 1, "0.k": 2}}')
    with pytest.raises(AnswerError, match=re.escape("unknown group '7'; groups are: 0, 1, 2")):
        validate('{"prune": {"7": 1}}')
    # the history speaks in groups: a uniform group by its level, a mixed one by its weighted level
    from policies.agent.prompt import format_levels
    assert format_levels({"0.q": 1, "0.k": 1, "0.up": 1, "1.up": 2}, rows) == "{0: 1, 1: ~1.3}"
