"""Which units the scaffold prunes when the model did not choose them: pacing's top-up and the fallback (pure).

Order, cheapest first: units of the steps rolled back since the last kept one (``avoid``) come last; then the
**measured cost** per level of the outcome memory (:func:`policies.agent.memory.costs`: the change in
log-perplexity a level on the unit has caused so far), an untried unit taking the median of the measured
costs (a neutral prior, so it is neither always first nor always last); ties, and every unit before anything
was measured, by **importance** ``wanda_z + grad_z`` of the observation, then lower sparsity, then index.

Why measured cost first: the z-scores are proxies, and on the default model a misleading one (the early
blocks have the smallest Wanda scores and are the most sensitive, `shared/RESEARCH.md`); the memory states what
pruning each unit actually did to perplexity on this episode.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np


def unit_order(obs: dict[str, np.ndarray], *, avoid: Collection[int] = (),
               cost: Sequence[float | None] | None = None) -> list[int]:
    """Unit indices, the one to prune first first (see the module docstring)."""
    sparsity = np.asarray(obs["sparsity"], dtype=np.float64)
    importance = np.asarray(obs["wanda_z"], dtype=np.float64) + np.asarray(obs["grad_z"], dtype=np.float64)
    n = len(sparsity)
    known = [c for c in (cost or ()) if c is not None]
    prior = float(np.median(known)) if known else 0.0
    measured = [prior if cost is None or cost[i] is None else float(cost[i]) for i in range(n)]
    return sorted(range(n), key=lambda i: (i in avoid, measured[i], importance[i], sparsity[i], i))
