"""Which units the scaffold prunes when the model did not choose them: pacing's top-up and the fallback (pure).

Order, cheapest first: units of the steps rolled back since the last kept one (``avoid``) come last; before them,
units already more than ``band`` above the global sparsity (they have had their share: the **band**); then the
**measured cost** per level of the outcome memory (:func:`policies.agent.memory.costs`: the change in
log-perplexity a level on the unit has caused so far), an untried unit taking the median of the measured
costs (a neutral prior, so it is neither always first nor always last); ties, and every unit before anything
was measured, by **importance** ``wanda_z + grad_z`` of the observation, then lower sparsity, then index.

Why measured cost first: the z-scores are proxies, and on the default model a misleading one (the early
blocks have the smallest Wanda scores and are the most sensitive, `shared/RESEARCH.md`); the memory states what
pruning each unit actually did to perplexity on this episode.

Why the band: the measured cost is an average over the levels a unit has taken, while the next level on an
already sparse unit costs more than the average (perplexity rises faster than linearly in a unit's sparsity).
Ranked by cost alone, the scaffold kept adding to the same few cheap units; measured on the default model
(``scripts/bench_agent.py``, 2026-12-07) the fallbacks and top-ups drove some blocks to 0.8 and left others
at 0.05, after which every paced step was rolled back (six in a row) and the episode's validation
perplexity at 0.366 was above uniform Wanda's at 0.5. With the band the scaffold ranks by cost only among
units within ``band`` of the global sparsity, so what it adds stays a bounded deviation from uniform (as OWL
and DLP bound theirs); the LLM's own choices are not limited by it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np


def unit_order(obs: dict[str, np.ndarray], *, avoid: Collection[int] = (),
               cost: Sequence[float | None] | None = None, band: float | None = None) -> list[int]:
    """Unit indices, the one to prune first first (see the module docstring); ``band=None``: no band (then
    ``obs["global_sparsity"]`` is not read)."""
    sparsity = np.asarray(obs["sparsity"], dtype=np.float64)
    if band is None:
        over = np.zeros(len(sparsity), dtype=bool)
    else:
        over = sparsity > float(np.asarray(obs["global_sparsity"]).reshape(-1)[0]) + band + 1e-6
    importance = np.asarray(obs["wanda_z"], dtype=np.float64) + np.asarray(obs["grad_z"], dtype=np.float64)
    n = len(sparsity)
    known = [c for c in (cost or ()) if c is not None]
    prior = float(np.median(known)) if known else 0.0
    measured = [prior if cost is None or cost[i] is None else float(cost[i]) for i in range(n)]
    return sorted(range(n), key=lambda i: (i in avoid, bool(over[i]), measured[i], importance[i], sparsity[i], i))
