"""Functions the task YAMLs call through lm-eval's ``!function`` (via the ``pg_functions.py`` shim)."""

from __future__ import annotations

import re
from typing import Any

from .freebaseqa import load_freebaseqa
from .normalize import exact_match_any

__all__ = ["load_freebaseqa", "process_qa_results", "process_wiki_results"]

_WORDS = re.compile(r"\s+")


def process_qa_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of the generation against any of the doc's accepted ``answers``."""
    return {"exact_match": exact_match_any(results[0], doc["answers"])}


def process_wiki_results(doc: dict[str, Any], results: list[float]) -> dict[str, tuple[float, int]]:
    """(log-likelihood, count) pairs that lm-eval's perplexity aggregations weight by words or bytes."""
    (loglikelihood,) = results
    text = doc["text"]
    words = len(_WORDS.split(text.strip()))
    n_bytes = len(text.encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, n_bytes),
            "bits_per_byte": (loglikelihood, n_bytes)}
