"""Shared settings for the policy tests: a small PruningEnv on the tiny 4-block Llama."""

from __future__ import annotations

import torch

from prune_env.env import PruningEnv

SMALL = dict(seqlen=32, calib_samples=4, reward_eval_samples=2, final_eval_samples=4, gradient_samples=2,
             gradient_every=2, step_size=0.05, n_levels=4, max_steps=40, target_sparsity=0.5)


def make_env(model_dir, method: str = "wanda", **overrides) -> PruningEnv:
    return PruningEnv(model=str(model_dir), method=method, **{**SMALL, **overrides})


def block_wanda_scores(env: PruningEnv, block: int) -> torch.Tensor:
    """All ``|W| * ||X||_2`` scores of one block's linears, flattened together: the direct computation the formula
    baselines' tests check their plans against (dense weights, the env's one-shot statistics)."""
    metric = [env.dense.get(lin.name).abs() * env.stats[lin.name].sq_norm.sqrt().unsqueeze(0)
              for lin in env.structure.linears if lin.block == block]
    return torch.cat([m.flatten() for m in metric])
