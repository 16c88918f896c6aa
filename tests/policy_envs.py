"""Shared settings for the policy tests: a small PruningEnv on the tiny 4-block Llama."""

from __future__ import annotations

from prune_env.env import PruningEnv

SMALL = dict(seqlen=32, calib_samples=4, reward_eval_samples=2, final_eval_samples=4, gradient_samples=2,
             gradient_every=2, step_size=0.05, n_levels=4, max_steps=40, target_sparsity=0.5)


def make_env(model_dir, method: str = "wanda", **overrides) -> PruningEnv:
    return PruningEnv(model=str(model_dir), method=method, **{**SMALL, **overrides})
