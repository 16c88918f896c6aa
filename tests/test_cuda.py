"""GPU-resident runs (marker ``cuda``): the env on CUDA keeps model, statistics and cached activations on the GPU
and checkpoints plus dense weights on the CPU; rollbacks are bitwise and the cached reward equals a full forward.

Skipped where CUDA is not available. On a GPU machine: ``python -m pytest -m cuda tests/test_cuda.py`` (what
``scripts/gpu_check.sh`` runs). ``PRUNE_GYM_CUDA_TESTS_DEVICE=cpu`` runs the same tests on the CPU, GPU-memory
assertions left out: the device check's dry run does that, so these tests are known to work before device time
is spent on them. The model is ``random:qwen3-tiny`` (random weights, byte tokens): nothing to ship to the GPU
machine but the code.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from prune_env.env import PruningEnv
from prune_env.perplexity import perplexity

DEVICE = os.environ.get("PRUNE_GYM_CUDA_TESTS_DEVICE", "cuda")
ON_CUDA = DEVICE.startswith("cuda")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (scripts/gpu_check.sh runs these on one; "
                              "PRUNE_GYM_CUDA_TESTS_DEVICE=cpu runs them on the CPU)"),
]

MODEL = "random:qwen3-tiny"
SMALL = dict(seqlen=64, calib_samples=4, reward_eval_samples=4, final_eval_samples=4, gradient_samples=1,
             gradient_every=3, step_size=0.1, n_levels=3, max_steps=12, target_sparsity=0.4, batch_size=2)
_INT_OF_SIZE = {2: torch.int16, 4: torch.int32}


def make_env(dtype: str, method: str = "wanda", **overrides) -> PruningEnv:
    env = PruningEnv(model=MODEL, device=DEVICE, dtype=dtype, method=method, **{**SMALL, **overrides})
    env.reset(seed=0)
    return env


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of ``t`` (so -0.0 differs from +0.0 and NaNs compare), on the CPU."""
    return t.detach().contiguous().view(_INT_OF_SIZE[t.element_size()]).to("cpu", copy=True)


def state_bits(env: PruningEnv) -> dict[str, torch.Tensor]:
    return {name: bits(p) for name, p in env.model.state_dict().items()}


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after the rollback"


def full_validation_ppl(env: PruningEnv) -> float:
    """A plain full forward of the current model over the env's validation (reward) windows, same batches."""
    return perplexity(env.model, env.tokens.validation, batch_size=env.config.batch_size,
                      structure=env.structure).ppl


def model_bytes(env: PruningEnv) -> int:
    return sum(p.numel() * p.element_size() for p in env.model.parameters())


@pytest.fixture(scope="module")
def bf16_env() -> PruningEnv:
    return make_env("bfloat16")


@pytest.fixture(scope="module")
def fp32_env() -> PruningEnv:
    return make_env("float32")


@pytest.fixture(scope="module")
def sparsegpt_env() -> PruningEnv:
    return make_env("bfloat16", method="sparsegpt", gradient_samples=0)


def test_episode_is_gpu_resident(bf16_env):
    env = bf16_env
    env.reset()
    assert env.loaded.device.type == torch.device(DEVICE).type and env.loaded.dtype == torch.bfloat16
    for name, p in env.model.named_parameters():
        assert p.device.type == torch.device(DEVICE).type and p.dtype == torch.bfloat16, name
    for name, stats in env.stats.items():
        assert stats.act_norm.device.type == torch.device(DEVICE).type, name
    if ON_CUDA:  # the model and the cached activations of the reward windows live on the GPU
        torch.cuda.synchronize()
        assert env.cache.nbytes > 0
        assert torch.cuda.memory_allocated() >= model_bytes(env) + env.cache.nbytes
    levels = np.full(len(env.unit_names), 2)
    terminated = truncated = False
    steps = 0
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(levels)
        steps += 1
        assert math.isfinite(reward) and math.isfinite(info["ppl"])
    assert terminated and steps == 2  # 2 levels x 0.1 per step: 0.2, then 0.4 = the target
    assert info["global_sparsity"] == pytest.approx(0.4, abs=0.01)
    assert info["ppl"] != env.dense_ppl
    assert math.isfinite(env.evaluate_full().ppl)


@pytest.mark.parametrize("which", ["bf16_env", "fp32_env"])
def test_cached_reward_equals_a_full_forward(which, request):
    env: PruningEnv = request.getfixturevalue(which)
    env.reset()
    assert env.dense_ppl == pytest.approx(full_validation_ppl(env), rel=1e-6)
    first = None
    for action in ([0, 2, 0, 0], [0, 0, 0, 1], [2, 0, 1, 0]):
        _, _, _, _, info = env.step(np.array(action))
        first = first if first is not None else info["checkpoint"]
        assert info["ppl"] == env.ppl == pytest.approx(full_validation_ppl(env), rel=1e-6)
    assert env.ppl != pytest.approx(env.dense_ppl, rel=1e-6)  # the steps really changed the model
    env.reset(options={"checkpoint": first})  # a rollback leaves blocks stale: the next step re-runs them
    _, _, _, _, info = env.step(np.array([0, 0, 0, 2]))
    assert info["ppl"] == pytest.approx(full_validation_ppl(env), rel=1e-6)


@pytest.mark.parametrize("which", ["bf16_env", "sparsegpt_env"])
def test_rollback_is_bitwise(which, request):
    env: PruningEnv = request.getfixturevalue(which)
    env.reset()
    obs1, _, _, _, info1 = env.step(np.array([1, 1, 0, 0]))
    snapshot = state_bits(env)
    env.step(np.array([0, 2, 2, 1]))
    env.step(np.array([2, 0, 0, 2]))
    later = state_bits(env)
    assert any(not torch.equal(later[name], snapshot[name]) for name in snapshot)  # the steps changed weights
    obs_back, info_back = env.reset(options={"checkpoint": info1["checkpoint"]})
    assert_bitwise_equal(snapshot, state_bits(env))
    assert info_back["ppl"] == info1["ppl"]
    np.testing.assert_array_equal(obs1["sparsity"], obs_back["sparsity"])
    for name, p in env.model.named_parameters():  # restored in place: still on the device
        assert p.device.type == torch.device(DEVICE).type, name
    dense, _ = env.reset()
    assert dense["sparsity"].tolist() == [0.0] * len(env.unit_names) and env.measured_sparsity() == 0.0


def test_checkpoints_and_dense_weights_are_held_on_cpu(sparsegpt_env):
    env = sparsegpt_env
    env.reset()
    for lin in env.structure.linears:
        assert env.dense.get(lin.name).device.type == "cpu", lin.name
    env.step(np.array([1, 0, 0, 0]))  # first step: every steady-state buffer of a step exists from here on
    held_before = env.store.nbytes()
    if ON_CUDA:
        torch.cuda.synchronize()
        gpu_before = torch.cuda.memory_allocated()
    for action in ([1, 1, 1, 1], [0, 1, 1, 1], [1, 0, 1, 0]):  # SparseGPT updates kept weights: full copies
        env.step(np.array(action))
    added = env.store.nbytes() - held_before
    assert added > 0
    if ON_CUDA:
        torch.cuda.synchronize()
        grown = torch.cuda.memory_allocated() - gpu_before
        assert grown < added / 2, f"GPU memory grew by {grown} bytes while checkpoints took {added} bytes"
