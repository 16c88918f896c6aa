"""Every offline task runs through lm-eval on a tiny model, in memory and from a saved directory.

The model is conftest's ``tiny_llm_dir``: a 2-block random Llama with SmolLM2's real tokenizer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import harness_tasks
from harness_tasks import OnlineDataUnavailable, UnknownTaskError
from harness_tasks import freebaseqa as fbqa
from harness_tasks.sources.facts import FACT_SOURCES, MC_SOURCES
from harness_tasks.sources.mmlu import CATEGORIES, load_mmlu_questions
from prune_env.pruner import make_spec, prune
from prune_env.saving import save_pruned
from prune_env.structure import discover

pytestmark = pytest.mark.usefixtures("one_thread")


def _load(model_dir: Path) -> tuple[Any, Any]:
    """A fresh model object and its tokenizer from a saved directory."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def all_offline_results(tiny_llm_dir):
    model, tokenizer = _load(tiny_llm_dir)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()  # lm-eval switches it to eval mode for scoring; evaluate gives it back as it came
    results = harness_tasks.evaluate(model, tokenizer, ["pg_knowledge", "pg_wiki_ppl"], limit=2)
    return results, model, calls, before


def test_every_offline_task_and_subtask_reports_its_metrics(all_offline_results):
    results = all_offline_results[0]
    for source in FACT_SOURCES:
        assert set(results[f"pg_factual_qa_{source}"]) == {"exact_match"}
    for source in MC_SOURCES:
        assert set(results[f"pg_factual_mc_{source}"]) == {"acc", "acc_norm"}
    subjects = {q.subject for q in load_mmlu_questions()}
    assert all(set(results[f"pg_mmlu_dev_{s}"]) == {"acc"} for s in subjects)
    for group in ["pg_mmlu_dev", *(f"pg_mmlu_dev_{c}" for c in CATEGORIES)]:
        assert set(results[group]) == {"acc"}
    assert set(results["pg_factual_qa"]) == {"exact_match"}
    assert set(results["pg_factual_mc"]) == {"acc", "acc_norm"}
    for task, metrics in results.items():
        for metric, value in metrics.items():
            assert isinstance(value, float) and math.isfinite(value), (task, metric)
            if metric in ("acc", "acc_norm", "exact_match"):
                assert 0.0 <= value <= 1.0
    ppl = results["pg_wiki_ppl"]
    # A random model over a 49152-token vocabulary: near-uniform per token, so far above any real model.
    assert ppl["byte_perplexity"] > 5 and ppl["word_perplexity"] > 1e4
    assert ppl["bits_per_byte"] == pytest.approx(math.log2(ppl["byte_perplexity"]), rel=1e-6)


def test_the_in_memory_model_is_scored_as_is(all_offline_results):
    _, model, calls, before = all_offline_results
    assert len(calls) > 0  # the forward passes ran through this very object, not a copy
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_saved_pruned_model_scores_the_same_from_its_directory(tmp_path, tiny_llm_dir):
    model, tokenizer = _load(tiny_llm_dir)
    prune(model, make_spec(discover(model), "magnitude", 0.5), None, progress=False)
    save_pruned(model, tokenizer, tmp_path, {"note": "test"})
    tasks = ["pg_factual_mc_uscapitals", "pg_wiki_ppl"]
    in_memory = harness_tasks.evaluate_raw(model, tokenizer, tasks, limit=3, log_samples=True)
    from_dir = harness_tasks.evaluate_raw(str(tmp_path), None, tasks, limit=3, log_samples=True, device="cpu")
    for task in tasks:
        a = [s["filtered_resps"] for s in in_memory["samples"][task]]
        b = [s["filtered_resps"] for s in from_dir["samples"][task]]
        assert len(a) == 3
        flat_a = torch.tensor([float(x[0]) if isinstance(x, (list, tuple)) else float(x) for r in a for x in r])
        flat_b = torch.tensor([float(x[0]) if isinstance(x, (list, tuple)) else float(x) for r in b for x in r])
        assert torch.allclose(flat_a, flat_b, rtol=1e-4, atol=1e-3), task
    assert harness_tasks.summarize(in_memory)["pg_factual_mc_uscapitals"] == pytest.approx(
        harness_tasks.summarize(from_dir)["pg_factual_mc_uscapitals"])


def test_unknown_task_error_lists_ours(tiny_llm_dir):
    with pytest.raises(UnknownTaskError, match="pg_factual_mc") as info:
        harness_tasks.evaluate(*_load(tiny_llm_dir), ["pg_knowlege"], limit=1)
    message = str(info.value)
    assert "pg_knowlege" in message
    assert all(name in message for name in (*harness_tasks.OFFLINE_TASKS, *harness_tasks.ONLINE_TASKS))


def test_online_task_offline_fails_with_a_clear_message(tmp_path, monkeypatch, tiny_llm_dir):
    monkeypatch.setattr(fbqa, "harness_root", lambda: tmp_path)  # nothing cached from an earlier online run
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(OnlineDataUnavailable, match="pg_freebaseqa needs internet access") as info:
        harness_tasks.evaluate(*_load(tiny_llm_dir), ["pg_freebaseqa"], limit=1)
    assert "pg_factual_qa" in str(info.value)  # the offline alternative is named


def test_freebaseqa_reads_a_cached_release(tmp_path, monkeypatch):
    """Once fetched, the online task's data loads from the cache; accepted answers come from every parse."""
    monkeypatch.setattr(fbqa, "harness_root", lambda: tmp_path)
    question = {"Question-ID": "FreebaseQA-eval-0", "RawQuestion": "Who played James Bond in GoldenEye?",
                "Parses": [{"Answers": [{"AnswersName": ["pierce brosnan"]}]},
                           {"Answers": [{"AnswersName": [["brosnan"]]}]}]}
    (tmp_path / "freebaseqa").mkdir()
    for split in ("eval", "dev"):
        (tmp_path / "freebaseqa" / f"FreebaseQA-{split}.json").write_text(
            json.dumps({"Dataset": "FreebaseQA", "Questions": [question]}))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    dataset = fbqa.load_freebaseqa()
    assert dataset["test"][0]["answers"] == ["pierce brosnan", "brosnan"]
    assert dataset["fewshot"][0]["question"] == "Who played James Bond in GoldenEye?"
