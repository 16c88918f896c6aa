"""Finalization: an env's allocation re-pruned with sequential calibration equals the pruner's sequential pass."""

from __future__ import annotations

import pytest
import torch

from prune_env.env import PruningEnv
from prune_env.finalize import check_finalize_mode, finalize_allocation, linear_sparsity_map
from prune_env.models import load_model
from prune_env.pruner import make_spec, prune
from prune_env.structure import discover

SMALL = dict(seqlen=32, calib_samples=4, reward_eval_samples=2, final_eval_samples=2, gradient_samples=0,
             step_size=0.1, n_levels=3, max_steps=12, target_sparsity=0.5)


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def sequential_reference(model_dir, env: PruningEnv, ratios: dict[str, float]) -> dict[str, torch.Tensor]:
    """The pruner's own sequential pass on a freshly loaded dense copy, with the env's calibration windows."""
    loaded = load_model(str(model_dir), device="cpu")
    spec = make_spec(discover(loaded.model), env.config.method, ratios, mode="sequential")
    prune(loaded.model, spec, env.tokens.calib, batch_size=env.config.batch_size, progress=False)
    return params(loaded.model)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_finalized_allocation_equals_a_sequential_prune_and_rolls_back(tiny_llm4_dir, one_thread, method):
    env = PruningEnv(model=str(tiny_llm4_dir), method=method, **SMALL)
    env.reset(seed=0)
    names = env.unit_names
    plan = {name: level for name, level in zip(names, (0.3, 0.5, 0.6, 0.6))}
    checkpoint = env.apply_allocation(plan)["checkpoint"]
    oneshot = params(env.model)
    oneshot_ppl = env.ppl

    assert finalize_allocation(env, "none")["finalize"] == "none"
    assert all(torch.equal(oneshot[k], v) for k, v in params(env.model).items())

    info = finalize_allocation(env, "sequential")
    assert info["finalize"] == "sequential"
    ratios, removed = linear_sparsity_map(env)
    assert not removed and set(ratios.values()) == {0.3, 0.5, 0.6}
    expected = sequential_reference(tiny_llm4_dir, env, ratios)
    got = params(env.model)
    assert got.keys() == expected.keys()
    for key in got:
        assert torch.equal(got[key], expected[key]), key
    # The allocation is the same, the weights differ from the one-shot ones (the first block's do not).
    assert env.sparsity_map() == plan
    changed = [k for k in got if not torch.equal(got[k], oneshot[k])]
    assert changed and all(".0." not in k for k in changed)

    # The checkpoint store knows: restoring the pre-finalization checkpoint is bitwise, and the cache re-runs.
    env.reset(options={"checkpoint": checkpoint})
    assert all(torch.equal(oneshot[k], v) for k, v in params(env.model).items())
    env.step([0] * len(names))
    assert env.ppl == pytest.approx(oneshot_ppl, rel=0, abs=0)


def test_removed_units_stay_zero_and_bad_modes_are_refused(tiny_llm4_dir, one_thread):
    env = PruningEnv(model=str(tiny_llm4_dir), method="wanda", **SMALL)
    env.reset(seed=0)
    last = env.unit_names[-1]
    env.apply_allocation({last: 1.0, env.unit_names[0]: 0.5})
    finalize_allocation(env, "sequential")
    for unit in env.units:
        if unit.name == last:
            assert all(int(torch.count_nonzero(lin.weight_matrix())) == 0 for lin in unit.linears)
    with pytest.raises(ValueError, match="sequential"):
        check_finalize_mode("oneshot-ish")
