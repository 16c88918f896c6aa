"""The MMLU questions that ship inside lm-eval itself: the few-shot examples of its flan CoT prompts.

``lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json`` holds, per subject, a prompt of about five MMLU
dev questions with their four choices, a chain-of-thought and "The answer is (X)". The questions, choices
and letters are parsed out (the reasoning is dropped); the subject's category (stem, humanities,
social_sciences, other) is read from the ``tag`` of lm-eval's own ``mmlu/default`` subject configs. A few
LaTeX escapes were decoded by JSON as control characters (``\\frac`` -> form feed + "rac"); they are
restored. Questions without exactly four choices are skipped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["CATEGORIES", "MmluQuestion", "load_mmlu_questions", "subject_categories"]

CATEGORIES = ("stem", "humanities", "social_sciences", "other")
_LETTERS = "ABCD"
_BLOCK_SPLIT = re.compile(r"\n\s*\nQ: ")
_CHOICES_START = re.compile(r"\n\(A\)")
_CHOICE_MARK = re.compile(r"\s*\(([A-Z])\)\s*")
_ANSWER = re.compile(r"answer is \(([A-D])\)")
# Control characters that JSON made out of LaTeX commands (\frac, \right, \rho, \beta...).
_CONTROL_FIXES = {"\x0c": "\\f", "\r": "\\r", "\x08": "\\b"}


@dataclass(frozen=True)
class MmluQuestion:
    """One four-choice MMLU question; ``answer`` is the index of the correct choice."""

    subject: str
    category: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int


def _mmlu_dir() -> Path:
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / "mmlu"
    if not (path / "flan_cot_fewshot" / "_cot_prompts.json").is_file():
        raise FileNotFoundError(f"{path}/flan_cot_fewshot/_cot_prompts.json is missing from the installed "
                                f"lm-eval; reinstall it: pip install --force-reinstall 'lm-eval>=0.4.9,<0.5'")
    return path


def subject_categories() -> dict[str, str]:
    """MMLU subject -> category, from lm-eval's ``mmlu/default/mmlu_<subject>.yaml`` tags."""
    categories = {}
    for path in sorted((_mmlu_dir() / "default").glob("mmlu_*.yaml")):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        tag = str(config.get("tag", ""))
        category = next((c for c in CATEGORIES if tag == f"mmlu_{c}_tasks"), None)
        if category and "dataset_name" in config:
            categories[config["dataset_name"]] = category
    return categories


def _fix_controls(text: str) -> str:
    for bad, good in _CONTROL_FIXES.items():
        text = text.replace(bad, good)
    return text


def _parse_block(block: str) -> tuple[str, tuple[str, str, str, str], int] | None:
    """(question, choices, answer index) of one "Q: ... (A) ... A: ... The answer is (X)." block."""
    body, sep, reasoning = block.partition("\nA: ")
    start = _CHOICES_START.search(body)
    answer = _ANSWER.findall(reasoning)
    if not sep or start is None or not answer:
        return None
    question, choices_text = body[: start.start()].strip(), body[start.start():]
    parts = _CHOICE_MARK.split(choices_text)[1:]  # [letter, text, letter, text, ...]
    letters, texts = parts[0::2], [t.strip() for t in parts[1::2]]
    if "".join(letters) != _LETTERS or not question or not all(texts):
        return None
    return question, (texts[0], texts[1], texts[2], texts[3]), _LETTERS.index(answer[-1])


def load_mmlu_questions() -> list[MmluQuestion]:
    """Every parseable question of lm-eval's flan CoT prompts, in subject order."""
    prompts = json.loads((_mmlu_dir() / "flan_cot_fewshot" / "_cot_prompts.json").read_text(encoding="utf-8"))
    categories = subject_categories()
    questions = []
    for subject in sorted(prompts):
        if subject not in categories:
            raise ValueError(f"MMLU subject {subject!r} has no category in lm-eval's mmlu/default configs")
        blocks = _BLOCK_SPLIT.split(_fix_controls(prompts[subject]).strip())[1:]  # [0] is the header line
        for block in blocks:
            parsed = _parse_block(block)
            if parsed is not None:
                questions.append(MmluQuestion(subject, categories[subject], *parsed))
    return questions
