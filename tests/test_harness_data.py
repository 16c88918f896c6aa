"""The offline task data: read from installed packages, split deterministically, and built into the cache."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from transformers import AutoTokenizer

import harness_tasks
from harness_tasks import build
from harness_tasks.normalize import normalize_answer
from harness_tasks.paths import harness_root
from harness_tasks.rows import FEWSHOT_PER_SOURCE, N_CHOICES, factual_rows, mmlu_rows, wiki_rows
from harness_tasks.sources.facts import FACT_SOURCES, MC_SOURCES, load_facts
from harness_tasks.sources.mmlu import CATEGORIES, load_mmlu_questions
from harness_tasks.sources.wiki import HELDOUT_START_FRACTION, heldout_start
from prune_env.models import cache_dir
from prune_env.text import build_token_sets, load_text, packaged_wiki_text, tokenize_text


def _key(text: str) -> str:
    return normalize_answer(text).replace(" ", "")


def test_fact_sources_read_from_the_installed_packages():
    counts = {s: len(load_facts(s)) for s in FACT_SOURCES}
    # Red-Trivia 1.1.1: worldcapitals 197, uscapitals 55, elements 118, general 709 (a few repeat);
    # gensim: 67 US cities (Glendale is in two states) + 30 currencies.
    assert counts["worldcapitals"] == 197 and counts["uscapitals"] == 55 and counts["elements"] == 118
    assert 700 <= counts["general"] <= 709
    assert counts["geography"] == 97
    glendale = next(f for f in load_facts("geography") if "Glendale" in f.question)
    assert set(glendale.answers) == {"Arizona", "California"}
    assert all(f.answers and all(a.strip() for a in f.answers) for s in FACT_SOURCES for f in load_facts(s))


@pytest.mark.parametrize("source", FACT_SOURCES)
def test_factual_splits_are_disjoint_deterministic_and_complete(source):
    rows = factual_rows(source)
    assert rows == factual_rows(source)  # seeded
    fewshot = {r["question"] for r in rows["qa"]["fewshot"]}
    test = {r["question"] for r in rows["qa"]["test"]}
    assert len(fewshot) == FEWSHOT_PER_SOURCE and not fewshot & test
    assert len(fewshot) + len(test) == len(load_facts(source))
    for row in rows["qa"]["test"]:
        assert row["answer"] == row["answers"][0] and not row["answer"].startswith(" ")


@pytest.mark.parametrize("source", MC_SOURCES)
def test_multiple_choice_distractors_are_same_kind_and_never_correct(source):
    facts = {f.question: f for f in load_facts(source)}
    canonical_by_kind: dict[str, set[str]] = {}
    for f in facts.values():
        canonical_by_kind.setdefault(f.kind, set()).add(f.answers[0])
    rows = factual_rows(source)["mc"]
    assert [r["question"] for r in rows["test"]] == [r["question"] for r in factual_rows(source)["qa"]["test"]]
    for row in rows["test"] + rows["fewshot"]:
        fact = facts[row["question"]]
        choices = row["choices"]
        assert len(choices) == N_CHOICES and len({_key(c) for c in choices}) == N_CHOICES
        assert choices[row["label"]] == fact.answers[0]
        accepted = {_key(a) for a in fact.answers}
        distractors = [c for i, c in enumerate(choices) if i != row["label"]]
        assert not any(_key(d) in accepted for d in distractors)
        assert set(distractors) <= canonical_by_kind[fact.kind]  # capitals against capitals, etc.
    labels = [r["label"] for r in rows["test"]]
    assert len(set(labels)) == N_CHOICES  # the answer is not always in the same place


def test_general_trivia_has_no_multiple_choice():
    assert "general" not in MC_SOURCES and factual_rows("general")["mc"] == {}


def test_mmlu_questions_parse_from_lm_eval_prompts():
    questions = load_mmlu_questions()
    assert len(questions) == 281
    assert len({q.subject for q in questions}) == 57
    assert {q.category for q in questions} == set(CATEGORIES)
    assert all(0 <= q.answer < 4 and len(q.choices) == 4 and all(q.choices) for q in questions)
    assert not any(ch in q.question + "".join(q.choices) for q in questions for ch in "\x0c\r\x08")
    anatomy = [q for q in questions if q.subject == "anatomy"]
    assert anatomy[0].question.startswith("Which of the following is the body cavity")
    assert anatomy[0].choices == ("Abdominal", "Cranial", "Pleural", "Spinal") and anatomy[0].answer == 1
    assert sum(len(rows) for rows in mmlu_rows().values()) == 281


def test_wiki_documents_are_whole_paragraphs_after_the_heldout_start():
    text = packaged_wiki_text()
    rows = wiki_rows(text)
    start = heldout_start(text)
    assert start >= HELDOUT_START_FRACTION * len(text) and text[start - 2 : start] == "\n\n"
    assert rows[0]["start"] == start
    for row in rows:
        assert text[row["start"] : row["start"] + len(row["text"])] == row["text"]
    covered = sum(len(r["text"]) for r in rows)
    assert covered > 0.97 * (len(text) - start)  # everything but paragraph separators


def test_wiki_documents_are_disjoint_from_the_env_calibration_stream(default_model_dir):
    """The env's windowed tokens (SmolLM2, default split: calibration, validation, test) end before the
    held-out documents."""
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    text = packaged_wiki_text()
    sets = build_token_sets(tok, load_text("wiki"), seqlen=256, n_calib=1, n_test=1)
    calib_text = tok.decode(tokenize_text(tok, text)[: sets.ranges["test"].end])
    tail = calib_text[-300:]
    calib_end = text.index(tail) + len(tail)  # where the calibration stream ends in the text
    assert 0.75 * len(text) < calib_end < wiki_rows(text)[0]["start"]
    assert tail not in text[wiki_rows(text)[0]["start"]:]


def test_build_writes_yamls_with_absolute_data_paths():
    root = harness_tasks.ensure_built()
    manifest = json.loads((root / "manifest.json").read_text())
    tasks = root / "tasks"
    for name in ("pg_knowledge", "pg_factual_qa", "pg_factual_mc", "pg_mmlu_dev", "pg_wiki_ppl", "pg_freebaseqa"):
        assert (tasks / f"{name}.yaml").is_file() and name in manifest["tasks"]
    config = yaml.safe_load((tasks / "pg_factual_qa_worldcapitals.yaml").read_text().replace("!function", ""))
    files = config["dataset_kwargs"]["data_files"]
    assert set(files) == {"fewshot", "test"} and config["fewshot_split"] == "fewshot"
    for path in files.values():
        assert path.startswith("/") and str(root) in path
        with open(path) as f:
            assert json.loads(f.readline())["answers"]
    assert config["doc_to_target"] == "answer" and config["target_delimiter"] == " "
    assert (tasks / "pg_functions.py").is_file()


def test_cache_root_follows_prune_gym_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_GYM_CACHE", str(tmp_path))
    assert harness_root() == tmp_path / "harness" == cache_dir() / "harness"
    monkeypatch.delenv("PRUNE_GYM_CACHE")
    assert harness_root() == cache_dir() / "harness"


def test_build_is_cached_and_rebuilt_when_incomplete(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "harness_root", lambda: tmp_path)
    root = build.ensure_built()
    assert root.parent == tmp_path and (root / "manifest.json").is_file()
    before = (root / "data" / "wiki_ppl.test.jsonl").stat().st_mtime_ns
    assert build.ensure_built() == root
    assert (root / "data" / "wiki_ppl.test.jsonl").stat().st_mtime_ns == before  # not rebuilt
    (root / "manifest.json").unlink()  # an interrupted copy: rebuilt from scratch
    assert build.ensure_built() == root and (root / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no staging debris


def test_a_new_build_removes_old_unused_builds_and_clean_removes_the_rest(tmp_path, monkeypatch):
    import os
    import time

    monkeypatch.setattr(build, "harness_root", lambda: tmp_path)
    stale, recent = tmp_path / "build-0000000000000old", tmp_path / "build-000000000recent"
    for old in (stale, recent):
        old.mkdir()
        (old / "manifest.json").write_text("{}")
    long_ago = time.time() - (build.STALE_AFTER_DAYS + 1) * 86400
    os.utime(stale / "manifest.json", (long_ago, long_ago))
    root = build.ensure_built()  # builds the current fingerprint, drops the build unused for too long
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([root.name, recent.name])
    assert build.remove_old_builds(root) == [recent]  # what `python -m harness_tasks clean` does
    assert [p.name for p in tmp_path.iterdir()] == [root.name]


def test_module_cli_prints_the_include_path():
    out = subprocess.run([sys.executable, "-m", "harness_tasks", "path"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == str(harness_tasks.tasks_dir())


def test_task_manager_loads_the_groups_with_their_subtasks():
    manager = harness_tasks.task_manager(include_defaults=False)
    assert {"pg_knowledge", "pg_factual_mc", "pg_wiki_ppl", "pg_freebaseqa"} <= set(manager.all_tasks)
    loaded = manager.load(["pg_factual_mc"])
    assert set(loaded["tasks"]) == {f"pg_factual_mc_{s}" for s in MC_SOURCES}
    task = loaded["tasks"]["pg_factual_mc_worldcapitals"]
    assert len(task.eval_docs) == len(factual_rows("worldcapitals")["mc"]["test"])
    assert task.config.num_fewshot == 3 and task.config.fewshot_split == "fewshot"
