"""Wrappers around :class:`prune_env.env.PruningEnv`."""

from __future__ import annotations

from typing import Any

import gymnasium as gym


class AutoRollback(gym.Wrapper):
    """Roll back to the last checkpoint when a step raises the validation perplexity too much.

    After each step, if ``ppl / ppl_at_last_checkpoint - 1 > max_ppl_increase``, the env is reset to the
    checkpoint saved before the step (a bitwise restore of the changed units). The rejected step then
    returns:

    * reward ``-penalty`` alone (the restored state made no progress and no perplexity change);
    * the observation of the restored state;
    * an info that describes the restored state (``ppl``, ``ppl_ratio``, ``global_sparsity``,
      ``unit_sparsity``, ``step``, ``checkpoint``; ``changed_units`` are the units the restore wrote back),
      plus ``rolled_back=True``, ``rejected_ppl``, ``rejected_changed_units`` (the step's planned change),
      ``rejected_reward`` and ``rejected_reward_terms`` (what the step would have earned), ``ppl_increase``,
      ``rollbacks`` and ``reward_terms={"rollback_penalty": -penalty}``.

    With ``keep_final_step`` (default), the episode's last allowed step (``steps == max_steps``) is kept when it
    reaches the target (``terminated``), however much it raised the perplexity: the episode then ends at the
    target, as every baseline does, and pays for a late arrival in perplexity instead of ending below it (a
    rollback there could never be repaired: no step is left). Its info says ``rollback_waived=True`` beside the
    ``ppl_increase``. A last step that does not reach the target is checked as any other.

    If the rejected step recomputed the gradient profile (``info["grad_refreshed"]``), it is recomputed on
    the restored state and a new checkpoint is saved and remembered, so a refresh is never lost. The step
    still counts toward ``max_steps``, so an episode cannot loop forever on rejected actions.
    ``env.unwrapped.last_timings`` then holds the step's timings plus ``restore`` (and ``restore_gradients``).
    """

    def __init__(self, env: gym.Env, max_ppl_increase: float, penalty: float = 1.0, *,
                 keep_final_step: bool = True) -> None:
        super().__init__(env)
        if not max_ppl_increase > 0:
            raise ValueError(f"max_ppl_increase must be > 0 (e.g. 0.1 for +10%), got {max_ppl_increase}")
        self.max_ppl_increase = float(max_ppl_increase)
        self.penalty = float(penalty)
        self.keep_final_step = bool(keep_final_step)
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
        raw = self.env.unwrapped
        waived = increase > self.max_ppl_increase and self._final_arrival(terminated)
        if increase <= self.max_ppl_increase or waived:
            info = {**info, "ppl_increase": increase, "rollbacks": self.rollbacks, "rollback_waived": waived}
            self._remember(info)
            return obs, reward, terminated, truncated, info
        step_timings = dict(raw.last_timings)
        refresh = bool(info.get("grad_refreshed", False))
        obs, restored = self.env.reset(options={"checkpoint": self._checkpoint, "refresh_gradients": refresh})
        raw.last_timings = {**step_timings, **{k if k == "restore" else f"restore_{k}": v
                                               for k, v in raw.last_timings.items()}}
        self.rollbacks += 1
        rejected = {"rejected_ppl": info["ppl"], "rejected_changed_units": info.get("changed_units", []),
                    "rejected_reward": float(reward), "rejected_reward_terms": info.get("reward_terms", {})}
        info = {**restored, **rejected, "rolled_back": True, "ppl_increase": increase, "rollbacks": self.rollbacks,
                "reward_terms": {"rollback_penalty": -self.penalty}, "grad_refreshed": refresh}
        if "timings" in restored:
            info["timings"] = dict(raw.last_timings)
        self._checkpoint = restored["checkpoint"]  # a new one when the gradients were recomputed
        truncated = bool(raw.steps >= raw.config.max_steps)
        return obs, -self.penalty, False, truncated, info

    def _final_arrival(self, terminated: bool) -> bool:
        """Whether this step is the episode's last allowed one and reached the target (``keep_final_step``)."""
        raw = self.env.unwrapped
        return self.keep_final_step and bool(terminated) and raw.steps >= raw.config.max_steps

    def _remember(self, info: dict[str, Any]) -> None:
        self._checkpoint = info["checkpoint"]
        self._checkpoint_ppl = info["ppl"]
