"""Retention: how much of a dense model's score a pruned model keeps, per task and metric.

For scores where higher is better (accuracy, exact match) retention is ``pruned / dense``; for
perplexity-like metrics, where lower is better, it is ``dense / pruned``. Either way 1.0 means unchanged
and lower means worse (it can exceed 1.0 when pruning happens to help).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["LOWER_IS_BETTER", "lower_is_better", "retention"]

# Metric names (before any ",filter" suffix) where a lower value is better.
LOWER_IS_BETTER = frozenset({"word_perplexity", "byte_perplexity", "bits_per_byte", "perplexity"})


def lower_is_better(metric: str) -> bool:
    """True for perplexity-like metrics (``word_perplexity``, ``bits_per_byte``...)."""
    base = metric.partition(",")[0]
    return base in LOWER_IS_BETTER or base.endswith("perplexity")


def _ratio(pruned: float, dense: float, metric: str) -> float:
    num, den = (dense, pruned) if lower_is_better(metric) else (pruned, dense)
    if den == 0:
        return math.nan if num == 0 else math.inf
    return num / den


def retention(pruned: Mapping[str, Mapping[str, float]],
              dense: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """``{task: {metric: ratio}}`` for every task and metric present in both results.

    Standard errors (``*_stderr``) are skipped. A dense score of 0 gives ``nan`` (0/0) or ``inf``.
    """
    result: dict[str, dict[str, float]] = {}
    for task, metrics in pruned.items():
        if task not in dense:
            continue
        ratios = {m: _ratio(float(v), float(dense[task][m]), m) for m, v in metrics.items()
                  if m in dense[task] and not m.partition(",")[0].endswith("_stderr")}
        if ratios:
            result[task] = ratios
    return result
