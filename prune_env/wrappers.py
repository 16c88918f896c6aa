"""Wrappers around :class:`prune_env.env.PruningEnv`."""

from __future__ import annotations

from typing import Any

import gymnasium as gym


class AutoRollback(gym.Wrapper):
    """Roll back to the last checkpoint when a step raises perplexity too much.

    After each step, if ``ppl / ppl_at_last_checkpoint - 1 > max_ppl_increase``, the env is reset to the
    checkpoint saved before the step (a bitwise restore of the changed units), ``info["rolled_back"]`` is
    True, ``info["rejected_ppl"]`` holds the perplexity that was rejected, the observation is that of the
    restored state, and ``penalty`` is subtracted from the reward. The step still counts toward
    ``max_steps``, so an episode cannot loop forever on rejected actions.
    """

    def __init__(self, env: gym.Env, max_ppl_increase: float, penalty: float = 1.0) -> None:
        super().__init__(env)
        if not max_ppl_increase > 0:
            raise ValueError(f"max_ppl_increase must be > 0 (e.g. 0.1 for +10%), got {max_ppl_increase}")
        self.max_ppl_increase = float(max_ppl_increase)
        self.penalty = float(penalty)
        self.rollbacks = 0
        self._checkpoint: int | None = None
        self._checkpoint_ppl: float | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        if not (options and "checkpoint" in options):
            self.rollbacks = 0
        self._remember(info)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        increase = info["ppl"] / self._checkpoint_ppl - 1.0
        if increase > self.max_ppl_increase:
            rejected = info["ppl"]
            obs, restored = self.env.reset(options={"checkpoint": self._checkpoint})
            self.rollbacks += 1
            info = {**info, **{k: restored[k] for k in ("ppl", "ppl_ratio", "global_sparsity", "unit_sparsity")},
                    "rolled_back": True, "rejected_ppl": rejected, "ppl_increase": increase,
                    "checkpoint": self._checkpoint, "rollbacks": self.rollbacks}
            reward -= self.penalty
            terminated = False
            truncated = bool(self.env.unwrapped.steps >= self.env.unwrapped.config.max_steps)
        else:
            info = {**info, "ppl_increase": increase, "rollbacks": self.rollbacks}
            self._remember(info)
        return obs, reward, terminated, truncated, info

    def _remember(self, info: dict[str, Any]) -> None:
        self._checkpoint = info["checkpoint"]
        self._checkpoint_ppl = info["ppl"]
