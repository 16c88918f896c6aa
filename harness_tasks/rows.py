"""Deterministic task rows (plain dicts, one JSONL line each) built from the packaged sources.

Factual facts are split per source, seeded: ``FEWSHOT_PER_SOURCE`` facts form the few-shot split and the
rest the test split, in shuffled order (so ``limit=`` takes a random-looking, fixed subset, not the
countries starting with A). The multiple-choice rows use the same facts and splits: the canonical answer
against three distractors drawn from the canonical answers of other facts of the same kind (capitals
against capitals, states against states), never one that matches an accepted answer of the question.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .normalize import normalize_answer
from .sources.facts import FACT_SOURCES, MC_SOURCES, Fact, load_facts
from .sources.mmlu import load_mmlu_questions
from .sources.wiki import heldout_wiki_docs

__all__ = ["FEWSHOT_PER_SOURCE", "N_CHOICES", "SEED", "factual_rows", "mmlu_rows", "wiki_rows"]

SEED = 1234
FEWSHOT_PER_SOURCE = 8
N_CHOICES = 4

Row = dict[str, Any]


def _split(facts: Sequence[Fact], source: str) -> dict[str, list[Fact]]:
    order = list(facts)
    random.Random(f"{SEED}:{source}:split").shuffle(order)
    return {"fewshot": order[:FEWSHOT_PER_SOURCE], "test": order[FEWSHOT_PER_SOURCE:]}


def _key(answer: str) -> str:
    return normalize_answer(answer).replace(" ", "")


def _distractor_pool(facts: Sequence[Fact]) -> dict[str, list[str]]:
    """kind -> canonical answers of that kind, one per normal form, in first-seen order."""
    pools: dict[str, dict[str, str]] = {}
    for fact in facts:
        if fact.kind is not None:
            pools.setdefault(fact.kind, {}).setdefault(_key(fact.answers[0]), fact.answers[0])
    return {kind: list(answers.values()) for kind, answers in pools.items()}


def _mc_row(fact: Fact, pool: Sequence[str], row_id: str) -> Row:
    accepted = {_key(a) for a in fact.answers}
    candidates = [a for a in pool if _key(a) not in accepted]
    if len(candidates) < N_CHOICES - 1:
        raise ValueError(f"only {len(candidates)} distractors of kind {fact.kind!r} for {fact.question!r}")
    rng = random.Random(f"{SEED}:{row_id}:choices")
    choices = rng.sample(candidates, N_CHOICES - 1)
    label = rng.randrange(N_CHOICES)
    choices.insert(label, fact.answers[0])
    return {"id": row_id, "source": fact.source, "question": fact.question, "choices": choices,
            "label": label, "answer": fact.answers[0]}


def factual_rows(source: str) -> dict[str, dict[str, list[Row]]]:
    """``{"qa": {split: rows}, "mc": {split: rows}}`` for one source ("mc" is empty for general)."""
    if source not in FACT_SOURCES:
        raise ValueError(f"unknown fact source {source!r}; sources are: {', '.join(FACT_SOURCES)}")
    facts = load_facts(source)
    pools = _distractor_pool(facts)
    result: dict[str, dict[str, list[Row]]] = {"qa": {}, "mc": {}}
    for split, members in _split(facts, source).items():
        ids = [(f"{source}-{split}-{i:04d}", f) for i, f in enumerate(members)]
        result["qa"][split] = [{"id": i, "source": source, "question": f.question, "answer": f.answers[0],
                                "answers": list(f.answers)} for i, f in ids]
        if source in MC_SOURCES:
            result["mc"][split] = [_mc_row(f, pools[f.kind], i) for i, f in ids if f.kind]
    return result


def _subject_name(subject: str) -> str:
    return subject.replace("_", " ")


def mmlu_rows() -> dict[str, list[Row]]:
    """subject -> its questions as rows (``answer`` is the choice index)."""
    rows: dict[str, list[Row]] = {}
    for q in load_mmlu_questions():
        subject_rows = rows.setdefault(q.subject, [])
        subject_rows.append({"id": f"{q.subject}-{len(subject_rows):02d}", "subject": q.subject,
                             "subject_name": _subject_name(q.subject), "category": q.category,
                             "question": q.question, "choices": list(q.choices), "answer": q.answer})
    return rows


def wiki_rows(text: str | None = None) -> list[Row]:
    """The held-out Wikipedia documents as rows with their character offset."""
    return [{"id": f"wiki-{i:03d}", "start": d.start, "text": d.text}
            for i, d in enumerate(heldout_wiki_docs(text))]
