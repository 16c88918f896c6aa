"""The fallback action, taken when the agent has no valid answer after its retries (pure).

Rule: prune the least important unit that still has room under the cap by one level. Importance is the sum
of the two z-scores the agent sees (``wanda_z + grad_z``); ties go to the lower current sparsity, then to the
lower index. Why this rule: the episode keeps making progress (an all-zero action would only burn a step),
the step is the smallest possible (one unit, one level), so an endpoint outage cannot do much harm, and the
choice is a deterministic function of the observation, so replays reproduce it. Every fallback is recorded
(``fallback: true`` with the reason) and shown to the agent in its history as "not yours".
"""

from __future__ import annotations

import numpy as np


def fallback_action(obs: dict[str, np.ndarray], *, step_size: float, cap: float) -> np.ndarray:
    """One level on the least important unit below the cap; all zeros if every unit is at the cap."""
    sparsity = np.asarray(obs["sparsity"], dtype=np.float64)
    importance = np.asarray(obs["wanda_z"], dtype=np.float64) + np.asarray(obs["grad_z"], dtype=np.float64)
    action = np.zeros(len(sparsity), dtype=np.int64)
    open_units = [i for i in range(len(sparsity)) if sparsity[i] + step_size <= cap + 1e-9]
    if open_units:
        best = min(open_units, key=lambda i: (importance[i], sparsity[i], i))
        action[best] = 1
    return action
