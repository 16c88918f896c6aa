"""Learned policies: PruningEnv passes Stable-Baselines3's checker and trains a few PPO steps."""

from __future__ import annotations

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from prune_env.env import PruningEnv

SMALL = dict(seqlen=32, calib_samples=4, reward_eval_samples=2, final_eval_samples=2, gradient_samples=1,
             gradient_every=4, step_size=0.1, n_levels=3, max_steps=6, target_sparsity=0.4)


def test_sb3_env_checker_and_a_few_ppo_steps(tiny_llm_dir):
    env = PruningEnv(model=str(tiny_llm_dir), **SMALL)
    sb3_check_env(env, warn=True)
    model = PPO("MultiInputPolicy", env, n_steps=8, batch_size=4, n_epochs=1, seed=0, device="cpu", verbose=0)
    model.learn(total_timesteps=8)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (2,) and np.all((action >= 0) & (action < 3))
    _, reward, *_ = env.step(action)
    assert np.isfinite(reward)
