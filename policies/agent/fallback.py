"""The fallback action, taken when the agent has no valid answer after its retries (pure).

Rule: prune by one level the first unit in :func:`policies.agent.ranking.unit_order` that still has room
under the cap: the cheapest by the outcome memory's measured cost per level among units within the band of
the global sparsity, units of steps just rolled back last, the least important (``wanda_z + grad_z``) among equals and before anything is measured. Why this rule: the episode keeps making progress (an all-zero action would only burn a step),
the step is the smallest possible (one unit, one level), so an endpoint outage cannot do much harm, and the
choice is a deterministic function of the observation, so replays reproduce it. Every fallback is recorded
(``fallback: true`` with the reason) and shown to the agent in its history as "not yours".
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from .ranking import unit_order


def fallback_action(obs: dict[str, np.ndarray], *, step_size: float, cap: float, avoid: Collection[int] = (),
                    cost: Sequence[float | None] | None = None, band: float | None = None) -> np.ndarray:
    """One level on the first unit of :func:`unit_order` below the cap; all zeros if every unit is at the cap."""
    sparsity = np.asarray(obs["sparsity"], dtype=np.float64)
    action = np.zeros(len(sparsity), dtype=np.int64)
    for i in unit_order(obs, avoid=avoid, cost=cost, band=band):
        if sparsity[i] + step_size <= cap + 1e-9:
            action[i] = 1
            break
    return action
