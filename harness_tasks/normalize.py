"""Exact-match scoring for open QA: SQuAD-style answer normalisation, extended for trivia answers.

Two strings match when their normal forms are equal, or equal once spaces are removed too
("Washington, D.C." = "washington dc" = "washingtondc", "Porto-Novo" = "porto novo"). The normal form:
Unicode accents folded ("Brasília" = "Brasilia"), lower case, "&" read as "and", punctuation removed,
the articles a/an/the dropped as words, whitespace collapsed. A prediction is first cut to its first line
and stripped, so a model that goes on after its answer ("Paris\\nQuestion: ...") is scored on "Paris".
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable

__all__ = ["exact_match_any", "normalize_answer"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation + "‘’“”–—…·")
_SPACES = re.compile(r"\s+")


def _fold_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def normalize_answer(text: object) -> str:
    """The comparable form of an answer (numbers are compared as their decimal text)."""
    s = _fold_accents(str(text)).lower().replace("&", " and ")
    s = s.translate(_PUNCT)
    s = _ARTICLES.sub(" ", s)
    return _SPACES.sub(" ", s).strip()


def _first_line(prediction: str) -> str:
    stripped = prediction.strip()
    return stripped.splitlines()[0] if stripped else ""


def exact_match_any(prediction: str, answers: Iterable[object]) -> float:
    """1.0 when the prediction's first line matches any accepted answer after normalisation, else 0.0.

    An empty prediction never matches, even an answer that normalises to "" (e.g. "The").
    """
    pred = normalize_answer(_first_line(prediction))
    if not pred:
        return 0.0
    pred_nospace = pred.replace(" ", "")
    for answer in answers:
        gold = normalize_answer(answer)
        if gold and (pred == gold or pred_nospace == gold.replace(" ", "")):
            return 1.0
    return 0.0
