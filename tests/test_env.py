"""PruningEnv: Gymnasium compliance, determinism, exact cached rewards, bitwise rollback, errors."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import prune_env
from prune_env.env import PruningEnv, observation_to_text
from prune_env.env_config import PruningEnvConfig
from prune_env.perplexity import perplexity
from prune_env.wrappers import AutoRollback

SMALL = dict(seqlen=32, calib_samples=4, reward_eval_samples=2, final_eval_samples=4, gradient_samples=2,
             gradient_every=2, step_size=0.1, n_levels=3, max_steps=12, target_sparsity=0.5)


def make_env(model_dir, **overrides) -> PruningEnv:
    return PruningEnv(model=str(model_dir), **{**SMALL, **overrides})


def params(env: PruningEnv) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in env.model.state_dict().items()}


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def assert_same_obs(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def env(tiny_llm4_dir) -> PruningEnv:
    return make_env(tiny_llm4_dir)


def test_env_checker_passes_with_default_settings(tiny_llm4_dir):
    env = PruningEnv(model=str(tiny_llm4_dir))  # every other setting at its default: timings stay out of info
    assert env.tokens.test.shape == (env.config.final_eval_samples, 256) and env.tokens.ood is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(env.unwrapped, skip_render_check=True)
    env.render_mode = "ansi"
    env.reset(seed=0)
    assert "model.layers.3" in env.render()


def test_registered_and_made_through_gymnasium(tiny_llm4_dir):
    assert prune_env.ENV_ID in gym.registry
    env = gym.make(prune_env.ENV_ID, model=str(tiny_llm4_dir), **SMALL)
    assert isinstance(env.unwrapped, PruningEnv)
    wrapped = gym.make(prune_env.ENV_ID, model=str(tiny_llm4_dir), rollback_threshold=0.2, **SMALL)
    assert any(isinstance(w, AutoRollback) for w in _wrappers(wrapped))


def _wrappers(env):
    while isinstance(env, gym.Wrapper):
        yield env
        env = env.env


def test_spaces_and_observation(env):
    obs, info = env.reset(seed=0)
    L = len(env.unit_names)
    assert L == 4 and env.unit_names[0] == "model.layers.0"
    assert env.action_space.nvec.tolist() == [3] * L
    assert obs in env.observation_space
    assert obs["sparsity"].tolist() == [0.0] * L
    assert obs["ppl_ratio"][0] == pytest.approx(1.0)
    assert obs["steps_left"][0] == 12
    assert obs["grad_age"].tolist() == [0.0]  # the gradient profile was computed at reset
    assert abs(float(obs["wanda_z"].mean())) < 1e-5 and float(obs["wanda_z"].std()) == pytest.approx(1.0, abs=1e-3)
    assert float(np.abs(obs["grad_z"]).sum()) > 0  # gradient profile measured at reset
    assert info["global_sparsity"] == 0.0 and info["rolled_back"] is False
    text = observation_to_text(env.unit_names, obs)
    assert text.splitlines()[0].startswith("0: s=0.00") and "target=0.500" in text and "grad_age=0" in text


def test_cached_reward_perplexity_equals_a_full_forward(env):
    env.reset(seed=0)
    for action in ([0, 2, 0, 0], [0, 0, 0, 1], [2, 0, 0, 0]):
        _, _, _, _, info = env.step(np.array(action))
        full = perplexity(env.model, env._reward_ids, batch_size=env.config.batch_size)
        assert info["ppl"] == pytest.approx(full.ppl, rel=1e-6)
    assert info["ppl"] != pytest.approx(env.dense_ppl, rel=1e-6)  # the steps really changed the model


def test_step_reprunes_from_dense_and_reports(env):
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(np.array([1, 0, 0, 2]))
    assert info["unit_sparsity"] == pytest.approx({"model.layers.0": 0.1, "model.layers.1": 0.0,
                                                   "model.layers.2": 0.0, "model.layers.3": 0.2})
    assert info["changed_units"] == ["model.layers.0", "model.layers.3"]
    block0 = env.units[0]
    for lin in block0.linears:
        zeros = int((lin.weight_matrix() == 0).sum())
        assert zeros == lin.shape[0] * int(lin.shape[1] * 0.1)  # wanda: exactly k per row, from dense
    gained = info["reward_terms"]["sparsity_gain"]
    assert reward == pytest.approx(gained / 0.5 - info["reward_terms"]["log_ppl_increase"])
    assert gained == pytest.approx(0.3 / 4)
    assert not terminated and not truncated
    assert {"prune", "evaluate", "step"} <= set(env.last_timings) and "timings" not in info
    # raising a unit again re-prunes from dense: masks are nested, not compounded
    env.step(np.array([1, 0, 0, 0]))
    for lin in block0.linears:
        assert int((lin.weight_matrix() == 0).sum()) == lin.shape[0] * int(lin.shape[1] * 0.2)


def test_rollback_to_a_checkpoint_is_bitwise(env):
    env.reset(seed=0)
    obs1, *_, info1 = env.step(np.array([1, 1, 0, 0]))
    snapshot = params(env)
    env.step(np.array([0, 2, 2, 1]))
    env.step(np.array([2, 0, 0, 2]))
    obs_back, info_back = env.reset(options={"checkpoint": info1["checkpoint"]})
    assert_same_params(snapshot, params(env))
    assert_same_obs({k: v for k, v in obs1.items() if k not in ("steps_left", "grad_age")},
                    {k: v for k, v in obs_back.items() if k not in ("steps_left", "grad_age")})
    assert obs_back["grad_age"].tolist() == [3.0]  # the restored profile (from reset) is 3 steps old now
    assert info_back["ppl"] == info1["ppl"]
    # the next step after a rollback is still measured exactly (stale cache re-run)
    _, _, _, _, info = env.step(np.array([0, 0, 1, 0]))
    assert info["ppl"] == pytest.approx(perplexity(env.model, env._reward_ids).ppl, rel=1e-6)
    # "last" restores the most recent checkpoint; a plain reset returns to the dense model
    env.step(np.array([0, 0, 0, 1]))
    dense_again, _ = env.reset()
    assert dense_again["sparsity"].tolist() == [0.0] * 4
    assert env.measured_sparsity() == 0.0
    assert env.steps == 0


def test_checkpoints_store_only_changed_units(env):
    env.reset(seed=0)
    _, _, _, _, info_a = env.step(np.array([1, 0, 0, 0]))  # unit 0 leaves the dense state: free to keep
    _, _, _, _, info_b = env.step(np.array([1, 0, 0, 0]))  # unit 0 at 0.1 must be kept: one unit's mask
    _, _, _, _, info_c = env.step(np.array([1, 1, 0, 0]))  # unit 0 at 0.2 (a mask) and unit 1 (dense, free)
    _, _, _, _, info_d = env.step(np.array([0, 0, 0, 0]))  # nothing changed, nothing stored
    unit0_bits = sum(lin.numel for lin in env.units[0].linears)
    assert env.store.nbytes(info_a["checkpoint"]) == 0
    assert env.store.nbytes(info_b["checkpoint"]) == sum(math.ceil(lin.numel / 8) for lin in env.units[0].linears)
    assert env.store.nbytes(info_c["checkpoint"]) == env.store.nbytes(info_b["checkpoint"])
    assert env.store.nbytes(info_d["checkpoint"]) == 0
    assert env.store.nbytes(info_b["checkpoint"]) <= unit0_bits / 8 + 8 * len(env.units[0].linears)


def test_sparsegpt_checkpoints_keep_full_copies_and_restore_bitwise(tiny_llm4_dir):
    env = make_env(tiny_llm4_dir, method="sparsegpt", gradient_samples=0)
    env.reset(seed=0)
    env.step(np.array([0, 2, 0, 0]))
    _, _, _, _, info = env.step(np.array([0, 0, 1, 0]))
    snapshot = params(env)
    _, _, _, _, later = env.step(np.array([0, 1, 1, 0]))  # units 1 and 2 were SparseGPT-updated: full copies
    unit_bytes = sum(lin.numel * 4 for u in env.units[1:3] for lin in u.linears)
    assert env.store.nbytes(later["checkpoint"]) == unit_bytes
    env.reset(options={"checkpoint": info["checkpoint"]})
    assert_same_params(snapshot, params(env))


def test_episode_reaches_the_target_exactly(tiny_llm4_dir):
    env = make_env(tiny_llm4_dir, target_sparsity=0.35)
    env.reset(seed=0)
    terminated, steps = False, 0
    while not terminated:
        _, _, terminated, truncated, info = env.step(np.array([2, 2, 2, 2]))
        steps += 1
        assert not truncated
    assert steps == 2  # 0.2, then trimmed from 0.4 to 0.35
    assert info["global_sparsity"] == pytest.approx(0.35, abs=0.01)
    assert env.global_sparsity_planned == pytest.approx(0.35)


def test_truncation_at_max_steps(tiny_llm4_dir):
    env = make_env(tiny_llm4_dir, max_steps=2, gradient_every=0)
    env.reset(seed=0)
    assert env.step(np.zeros(4, dtype=int))[3] is False
    assert env.step(np.zeros(4, dtype=int))[3] is True


def test_seeded_determinism_across_envs(tiny_llm4_dir):
    runs = []
    for _ in range(2):
        env = make_env(tiny_llm4_dir, info_timings=False)
        obs, _ = env.reset(seed=7)
        trace = [obs]
        for action in ([1, 0, 2, 0], [0, 1, 0, 1]):
            trace.append(env.step(np.array(action))[0])
        runs.append(trace)
    for a, b in zip(*runs):
        assert_same_obs(a, b)


def test_linear_granularity(tiny_llm_dir):
    env = PruningEnv(model=str(tiny_llm_dir), granularity="linear", **{**SMALL, "gradient_samples": 0})
    obs, _ = env.reset(seed=0)
    assert len(env.unit_names) == 14 and env.unit_names[0] == "model.layers.0.self_attn.q_proj"
    action = np.zeros(14, dtype=int)
    action[5] = 2
    _, _, _, _, info = env.step(action)
    assert info["changed_units"] == ["model.layers.0.mlp.up_proj"]
    assert obs["grad_z"].tolist() == [0.0] * 14


def test_auto_rollback_restores_and_penalizes(tiny_llm4_dir):
    env = AutoRollback(make_env(tiny_llm4_dir), max_ppl_increase=1e-9, penalty=2.0)
    env.reset(seed=0)
    before = params(env.unwrapped)
    # a random model's perplexity can move either way: find an action that raises it (checked, not assumed)
    candidates = [np.eye(4, dtype=int)[i] * 2 for i in range(4)] + [np.full(4, 2)]
    probe = make_env(tiny_llm4_dir, gradient_samples=0)
    raising = None
    for action in candidates:
        probe.reset(seed=0)
        if probe.step(action)[4]["ppl"] > probe.dense_ppl:
            raising = action
            break
    assert raising is not None, "no candidate action raised the tiny model's perplexity"
    obs, reward, terminated, truncated, info = env.step(raising)
    assert info["rolled_back"] is True and env.rollbacks == 1
    assert reward == -2.0 and info["reward_terms"] == {"rollback_penalty": -2.0}  # the penalty alone
    assert info["rejected_ppl"] > info["ppl"] == env.unwrapped.dense_ppl  # info: the restored state
    assert info["ppl_ratio"] == 1.0 and info["global_sparsity"] == 0.0
    assert info["unit_sparsity"] == dict.fromkeys(env.unwrapped.unit_names, 0.0)
    planned = [name for name, level in zip(env.unwrapped.unit_names, raising) if level]
    assert info["rejected_changed_units"] == planned and info["changed_units"] == planned  # written back
    assert info["rejected_reward"] != reward and "sparsity_gain" in info["rejected_reward_terms"]
    assert obs["sparsity"].tolist() == [0.0] * 4 and not terminated and not truncated
    assert_same_params(before, params(env.unwrapped))
    assert env.unwrapped.steps == 1 and info["step"] == 1  # the rejected step still counts toward max_steps
    assert env.unwrapped.evaluations == 1  # and as a validation evaluation
    assert {"step", "prune", "evaluate", "restore"} <= set(env.unwrapped.last_timings)
    lenient = AutoRollback(make_env(tiny_llm4_dir), max_ppl_increase=1e6)
    lenient.reset(seed=0)
    assert lenient.step(raising)[4]["rolled_back"] is False


@pytest.mark.parametrize("keep", [True, False])
def test_the_last_allowed_step_that_reaches_the_target_is_kept(tiny_llm4_dir, keep):
    """keep_final_step: a last step landing on the target is kept past the threshold (the episode ends at the
    target); without it, or on an earlier step, the same jump is rolled back."""
    target = 0.5
    sizes = dict(target_sparsity=target, step_size=0.25, gradient_samples=0)
    env = AutoRollback(make_env(tiny_llm4_dir, max_steps=2, **sizes), max_ppl_increase=1e-9, keep_final_step=keep)
    env.reset(seed=0)
    probe = make_env(tiny_llm4_dir, **sizes)
    probe.reset(seed=0)
    done = probe.step(np.full(4, 2))  # all of the target in one step (the env scales it onto the target)
    assert done[2] and done[4]["ppl"] > probe.dense_ppl, "the probe step must reach the target and raise ppl"
    first = env.step(np.full(4, 2))  # step 1 of 2: reaches the target, but it is not the last allowed step
    assert first[4]["rolled_back"] is True and not first[2]
    obs, reward, terminated, truncated, info = env.step(np.full(4, 2))  # step 2 of 2: the last
    if keep:
        assert info["rolled_back"] is False and info["rollback_waived"] is True and terminated
        assert info["ppl_increase"] > 1e-9 and env.unwrapped.global_sparsity_planned == pytest.approx(target)
        assert reward == pytest.approx(done[1]) and env.rollbacks == 1
    else:
        assert info["rolled_back"] is True and not terminated and truncated and env.rollbacks == 2
        assert env.unwrapped.global_sparsity_planned == 0.0


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        (dict(method="owl"), ValueError, "method must be one of"),
        (dict(granularity="head"), ValueError, "granularity must be one of"),
        (dict(target_sparsity=1.0), ValueError, r"\[0, 1\)"),
        (dict(target_sparsity=0.0), ValueError, "must be > 0"),
        (dict(target_sparsity=0.9, max_unit_sparsity=0.8), ValueError, "cannot be reached"),
        (dict(n_levels=1), ValueError, "n_levels"),
        (dict(step_size=0.0), ValueError, "step_size"),
        (dict(rollback_threshold=-1.0), ValueError, "rollback_threshold"),
        (dict(learning_rate=0.1), TypeError, "unknown PruningEnv setting"),
        (dict(final_eval_samples=0), ValueError, "final_eval_samples must be >= 1, or None"),
        (dict(ood_eval_samples=0), ValueError, "ood_eval_samples"),
    ],
)
def test_invalid_configs_are_rejected(settings, error, message):
    with pytest.raises(error, match=message):
        PruningEnvConfig.from_kwargs(**settings)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ([0, 1, 2], r"shape \(4,\)"),
        ([0, 1, 3, 0], r"in \[0, 2\]"),
        ([0, -1, 0, 0], r"in \[0, 2\]"),
        ([0.5, 0, 0, 0], "integers"),
    ],
)
def test_malformed_actions_raise_and_change_nothing(env, action, message):
    env.reset(seed=0)
    before = params(env)
    with pytest.raises(ValueError, match=message):
        env.step(np.array(action))
    assert_same_params(before, params(env))


def test_step_before_reset_is_an_error(tiny_llm_dir):
    env = PruningEnv(model=str(tiny_llm_dir), **{**SMALL, "gradient_samples": 0})
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, dtype=int))


def test_reward_is_progress_minus_log_ppl_increase(env):
    env.reset(seed=0)
    ppl0 = env.ppl
    _, reward, _, _, info = env.step(np.array([2, 2, 0, 0]))
    expected = (info["unit_sparsity"]["model.layers.0"] * 0.5) / 0.5 - (math.log(info["ppl"]) - math.log(ppl0))
    assert reward == pytest.approx(expected)


def test_dense_weights_are_read_lazily_from_the_checkpoint_files(env):
    from prune_env.dense_weights import SafetensorsDenseWeights

    assert isinstance(env.dense, SafetensorsDenseWeights)  # no second in-memory copy of the model


def test_without_block_cache_the_result_is_the_same(tiny_llm4_dir):
    cached, uncached = make_env(tiny_llm4_dir, info_timings=False), make_env(tiny_llm4_dir, info_timings=False,
                                                                             use_block_cache=False)
    for env in (cached, uncached):
        env.reset(seed=0)
    for action in ([0, 0, 2, 0], [1, 0, 0, 0]):
        a, b = cached.step(np.array(action)), uncached.step(np.array(action))
        assert a[1] == b[1] and a[4]["ppl"] == b[4]["ppl"]


@pytest.mark.slow
def test_episode_on_the_default_model_reaches_the_target():
    env = PruningEnv(target_sparsity=0.3, step_size=0.1, n_levels=2, calib_samples=8, reward_eval_samples=2,
                     final_eval_samples=4, seqlen=128, gradient_samples=1, gradient_every=2, max_steps=5)
    obs, info = env.reset(seed=0)
    assert len(env.unit_names) == 30 and obs in env.observation_space
    assert 10 < info["dense_ppl"] < 60
    terminated, steps, first = False, 0, None
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(np.ones(30, dtype=int))
        first = first or (info["checkpoint"], {k: v.clone() for k, v in env.model.state_dict().items()})
        steps += 1
        assert np.isfinite(reward) and not truncated
    assert steps == 3
    assert info["global_sparsity"] == pytest.approx(0.3, abs=0.005)
    assert 1.0 < info["ppl_ratio"] < 3.0  # Wanda at 30% costs little perplexity
    assert info["ppl"] == pytest.approx(perplexity(env.model, env._reward_ids).ppl, rel=1e-6)
    assert np.isfinite(env.evaluate_full().ppl)
    env.reset(options={"checkpoint": first[0]})
    assert_same_params(first[1], {k: v.detach().clone() for k, v in env.model.state_dict().items()})


def _counted_sparsity(env: PruningEnv) -> float:
    zeros = sum(int((lin.module.weight == 0).sum()) for lin in env.structure.linears)
    return zeros / sum(lin.numel for lin in env.structure.linears)


def test_measured_sparsity_stays_true_through_steps_rollbacks_resets_and_allocations(tiny_llm4_dir):
    """Zero counts are cached per unit version; they must always equal a fresh count of the weights."""
    env = make_env(tiny_llm4_dir)
    env.reset(seed=0)
    first = env.save_checkpoint()
    for action in ([1, 0, 2, 0], [0, 2, 0, 1], [2, 2, 2, 2]):
        info = env.step(np.array(action))[4]
        assert info["global_sparsity"] == _counted_sparsity(env) > 0
    env.reset(options={"checkpoint": first})
    assert env.measured_sparsity() == _counted_sparsity(env) == 0.0
    env.step(np.array([2, 2, 0, 0]))
    info = env.apply_allocation({env.unit_names[0]: 1.0, env.unit_names[3]: 0.4})
    assert info["global_sparsity"] == _counted_sparsity(env)
    assert all(float((lin.module.weight == 0).float().mean()) == 1.0 for lin in env.units[0].linears)
    env.reset()
    assert env.measured_sparsity() == _counted_sparsity(env) == 0.0


def test_apply_allocation_rejects_bad_input_and_matches_stepping(tiny_llm4_dir):
    env = make_env(tiny_llm4_dir)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="unknown unit"):
        env.apply_allocation({"nope": 0.2})
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        env.apply_allocation({env.unit_names[0]: 1.5})
    env.step(np.array([2, 0, 1, 2]))
    stepped = params(env)
    levels = env.sparsity_map()
    env.reset()
    env.apply_allocation(levels)
    assert_same_params(params(env), stepped)  # re-pruned from dense: the same weights as the steps gave


def _raising_action(model_dir, before: list[np.ndarray]) -> np.ndarray:
    """An action that raises the validation perplexity after the steps ``before`` (found on a probe env)."""
    probe = make_env(model_dir, gradient_samples=0)
    for action in [np.eye(4, dtype=int)[i] * 2 for i in range(4)] + [np.full(4, 2)]:
        probe.reset(seed=0)
        ppl = probe.ppl
        for b in before:
            ppl = probe.step(b)[4]["ppl"]
        if probe.step(action)[4]["ppl"] > ppl:
            return action
    raise AssertionError("no candidate action raised the tiny model's perplexity")


def test_a_rejected_step_never_loses_a_gradient_refresh(tiny_llm4_dir):
    from prune_env.profiles import zscore
    from prune_env.sensitivity import gradient_importance

    first = np.array([0, 1, 0, 0])
    raising = _raising_action(tiny_llm4_dir, [first])
    env = AutoRollback(make_env(tiny_llm4_dir, gradient_every=2), max_ppl_increase=1e6)
    raw = env.unwrapped
    obs0, _ = env.reset(seed=0)
    obs1, _, _, _, info1 = env.step(first)  # accepted; no refresh at step 1: grad_z is the dense one
    assert obs1["grad_age"].tolist() == [1.0] and info1["grad_refreshed"] is False
    np.testing.assert_array_equal(obs1["grad_z"], obs0["grad_z"])
    env.max_ppl_increase = 1e-9
    obs2, reward, _, _, info2 = env.step(raising)  # step 2 refreshes the gradients, then is rejected
    assert info2["rolled_back"] and info2["grad_refreshed"] and reward == -1.0
    assert info2["checkpoint"] != info1["checkpoint"]  # the refreshed state is saved as a new checkpoint
    acc = gradient_importance(raw.model, raw.structure, raw._grad_ids)  # fresh, on the restored weights
    fresh = np.array([acc.unit_score([lin.name for lin in u.linears]) for u in raw.units])
    expected = np.clip(zscore(fresh), -10, 10).astype(np.float32)
    np.testing.assert_allclose(obs2["grad_z"], expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(obs2["grad_z"], obs1["grad_z"])  # not the stale profile of the checkpoint
    assert obs2["grad_age"].tolist() == [0.0] and "restore_gradients" in raw.last_timings
    _, restored = raw.reset(options={"checkpoint": "last"})  # the new checkpoint keeps the refreshed profile
    np.testing.assert_array_equal(raw._observation()["grad_z"], obs2["grad_z"])
    env.max_ppl_increase = 1e6
    obs3, *_ = env.step(np.zeros(4, dtype=int))
    assert obs3["grad_age"].tolist() == [1.0]


def test_grad_age_without_a_gradient_profile(tiny_llm4_dir):
    env = make_env(tiny_llm4_dir, gradient_samples=0)
    obs, _ = env.reset(seed=0)
    assert obs["grad_age"].tolist() == [12.0] and obs in env.observation_space  # never computed: max_steps


def test_evaluation_sets_counters_and_timings(tiny_llm4_dir):
    env = make_env(tiny_llm4_dir)
    info = env.tokens.describe()
    assert (info["n_calib"], info["n_validation"], info["n_test"]) == (4, 2, 4)
    assert info["ood"]["source"] == "lee" and info["ood"]["windows"] == 32
    assert torch.equal(env._reward_ids, env.tokens.validation) and torch.equal(env._final_ids, env.tokens.test)
    env.reset(seed=0)
    assert (env.evaluations, env.tokens_evaluated) == (0, 0)  # construction and reset are not counted
    assert set(env.last_timings) == {"reset"}
    per_eval = env.tokens.validation.numel()
    env.step(np.array([1, 0, 0, 0]))
    env.step(np.array([0, 0, 0, 0]))
    assert (env.evaluations, env.tokens_evaluated) == (2, 2 * per_eval)
    env.apply_allocation({env.unit_names[1]: 0.3})
    assert env.evaluations == 3 and {"apply", "evaluate"} <= set(env.last_timings)
    env.reset(options={"checkpoint": 0})
    assert env.evaluations == 3 and set(env.last_timings) == {"restore"}
    sub = env.evaluate_validation(1)
    assert (env.evaluations, env.tokens_evaluated) == (4, 3 * per_eval + env.tokens.validation[:1].numel())
    assert sub.ppl == pytest.approx(perplexity(env.model, env.tokens.validation[:1]).ppl, rel=1e-9)
    full = env.evaluate_full()
    assert len(full.window_nll) == 4 and full.tokens == 4 * 31
    assert full.ppl == pytest.approx(perplexity(env.model, env.tokens.test).ppl, rel=1e-9)
    ood = env.evaluate_ood()
    assert ood is not None and len(ood.window_nll) == 32 and np.isfinite(ood.ppl)
    assert env.evaluations == 4  # test and ood evaluations are not counted
    with pytest.raises(ValueError, match="windows must be in"):
        env.evaluate_validation(3)
    assert make_env(tiny_llm4_dir, ood_text=None).evaluate_ood() is None


def test_timings_in_info_on_request(tiny_llm4_dir):
    env = make_env(tiny_llm4_dir, info_timings=True)
    env.reset(seed=0)
    info = env.step(np.array([1, 0, 0, 0]))[4]
    assert info["timings"] == env.last_timings and {"prune", "evaluate", "step"} <= set(info["timings"])


def test_too_many_test_windows_names_the_setting(tiny_llm_dir):
    with pytest.raises(ValueError, match=r"n_test=100000.*final_eval_samples \(None: the whole test range\)"):
        PruningEnv(model=str(tiny_llm_dir), **{**SMALL, "final_eval_samples": 100_000, "gradient_samples": 0})
    assert PruningEnvConfig(final_eval_samples=None).validate().final_eval_samples is None
