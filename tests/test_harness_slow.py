"""The tasks on the packaged default model (SmolLM2-135M): real knowledge is measured, and pruning loses it.

Marked slow (minutes on 2 CPU cores): one module fixture loads the preset, scores every offline task on a
``limit=`` subset, prunes 70% by magnitude and scores again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import harness_tasks
from harness_tasks import OnlineDataUnavailable
from prune_env.models import DEFAULT_MODEL, load_model
from prune_env.pruner import make_spec, prune
from prune_env.structure import discover

CAPITALS_MC = "pg_factual_mc_worldcapitals"
CAPITALS_QA = "pg_factual_qa_worldcapitals"
LIMIT = 20  # of 189 capitals questions (MC: 3-shot, four choices each; QA: 3-shot)


# Two markers in one list: a second `pytestmark = ...` would silently replace the first (it did: the module ran
# in `make test-fast`).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def scores() -> dict[str, dict[str, dict[str, float]]]:
    """Dense: every offline task (limit 1), capitals MC and open QA; then 70% magnitude: MC and wiki again."""
    loaded = load_model(DEFAULT_MODEL, device="cpu")

    def run(tasks: list[str], limit: int) -> dict[str, dict[str, float]]:
        return harness_tasks.evaluate(loaded.model, loaded.tokenizer, tasks, limit=limit)

    dense = {**run(["pg_knowledge", "pg_wiki_ppl"], 1), **run([CAPITALS_MC, CAPITALS_QA], LIMIT)}
    prune(loaded.model, make_spec(discover(loaded.model), "magnitude", 0.7), None, progress=False)
    pruned = {**run(["pg_wiki_ppl"], 1), **run([CAPITALS_MC], LIMIT)}
    return {"dense": dense, "pruned": pruned}


def test_every_offline_task_runs_on_the_preset(scores):
    dense = scores["dense"]
    for task in ("pg_factual_qa", "pg_factual_mc", "pg_mmlu_dev", "pg_mmlu_dev_stem", "pg_wiki_ppl",
                 "pg_factual_qa_general", "pg_factual_mc_geography", "pg_mmlu_dev_anatomy"):
        assert dense[task], task
    assert 5 < dense["pg_wiki_ppl"]["word_perplexity"] < 200


def test_dense_preset_knows_capitals_far_above_chance(scores):
    dense = scores["dense"]
    assert dense[CAPITALS_MC]["acc"] >= 0.75  # chance is 0.25
    assert dense[CAPITALS_QA]["exact_match"] >= 0.1  # open QA is much harder for a 135M model


def test_magnitude_70_percent_loses_knowledge_and_fluency(scores):
    dense, pruned = scores["dense"], scores["pruned"]
    print(f"capitals MC acc: dense {dense[CAPITALS_MC]['acc']:.3f}, 70% magnitude {pruned[CAPITALS_MC]['acc']:.3f}; "
          f"wiki word ppl: dense {dense['pg_wiki_ppl']['word_perplexity']:.1f}, "
          f"pruned {pruned['pg_wiki_ppl']['word_perplexity']:.1f}; capitals QA EM {dense[CAPITALS_QA]['exact_match']:.3f}")
    assert pruned[CAPITALS_MC]["acc"] <= dense[CAPITALS_MC]["acc"] - 0.25
    assert pruned["pg_wiki_ppl"]["word_perplexity"] > 3 * dense["pg_wiki_ppl"]["word_perplexity"]
    kept = harness_tasks.retention(pruned, dense)
    assert kept[CAPITALS_MC]["acc"] < 0.7
    assert kept["pg_wiki_ppl"]["word_perplexity"] < 1 / 3  # dense/pruned: lower is worse


def test_lm_eval_command_line_finds_the_tasks_and_loads_a_saved_model(tmp_path, tiny_llm_dir):
    out = tmp_path / "out"
    include = subprocess.run([sys.executable, "-m", "harness_tasks", "path"], capture_output=True, text=True,
                             check=True).stdout.strip()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
         f"pretrained={tiny_llm_dir},dtype=float32", "--include_path", include, "--tasks",
         "pg_factual_mc_uscapitals", "pg_wiki_ppl", "--limit", "2", "--device", "cpu", "--output_path", str(out)],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert "acc,none" in results["pg_factual_mc_uscapitals"]
    assert results["pg_wiki_ppl"]["word_perplexity,none"] > 1


def _tiny(model_dir: Path) -> tuple[Any, Any]:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), AutoTokenizer.from_pretrained(model_dir)


def test_lm_eval_builtin_task_offline_fails_with_a_clear_message(monkeypatch, tiny_llm_dir):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OnlineDataUnavailable, match="nq_open") as info:
        harness_tasks.evaluate(*_tiny(tiny_llm_dir), ["nq_open"], limit=1)
    assert "pg_knowledge" in str(info.value)
