"""BlockCache gives exactly a full forward's perplexity while re-running only the blocks that changed."""

from __future__ import annotations

import pytest
import torch
from tiny_models import ARCHITECTURES, HIDDEN, LAYERS, random_tokens, tiny_model
from torch import nn

from prune_env.block_cache import BlockCache
from prune_env.calibration import batches
from prune_env.perplexity import Perplexity, perplexity
from prune_env.structure import ModelStructure, discover

N_WINDOWS, SEQLEN, BATCH = 5, 20, 2  # an uneven last batch on purpose
N_BATCHES = 3


def _setup(arch: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, ModelStructure, torch.Tensor, BlockCache]:
    model, ids = tiny_model(arch).to(dtype), random_tokens(N_WINDOWS, SEQLEN, seed=1)
    structure = discover(model)
    return model, structure, ids, BlockCache(model, structure, ids, batch_size=BATCH)


def _prune_block(structure: ModelStructure, block: int) -> None:
    """Zero the smaller half of every weight of ``block`` and scale the rest up: a change big enough to move
    the near-uniform predictions of a tiny random model far beyond any rounding."""
    with torch.no_grad():
        for lin in structure.linears_in_block(block):
            w = lin.weight_matrix()
            lin.set_weight_matrix(torch.where(w.abs() < w.abs().median(), torch.zeros_like(w), 8 * w))


def _full(model: nn.Module, ids: torch.Tensor) -> Perplexity:
    return perplexity(model, ids, batch_size=BATCH)


def _assert_same(cached: Perplexity, full: Perplexity) -> None:
    assert cached.tokens == full.tokens == N_WINDOWS * (SEQLEN - 1)
    assert cached.nll == full.nll  # bitwise: same batches, same ops, same tensors
    assert len(full.window_nll) == N_WINDOWS and cached.window_nll == full.window_nll  # per window too
    assert sum(full.window_nll) == pytest.approx(full.nll, rel=1e-12)


def _assert_differs(stale: Perplexity, full: Perplexity) -> None:
    """A stale value must be far outside the tolerance, or the exactness tests would prove nothing."""
    assert abs(stale.nll - full.nll) > 1e-4 * abs(full.nll)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cached_perplexity_equals_a_full_forward_before_and_after_a_change(arch):
    model, structure, ids, cache = _setup(arch)
    _assert_same(cache.perplexity(), _full(model, ids))
    _assert_same(cache.full_perplexity(), _full(model, ids))

    _prune_block(structure, 1)
    full = _full(model, ids)
    _assert_differs(cache.perplexity(), full)  # not told: the memoized value is stale
    _assert_differs(cache.perplexity(dirty_from=2), full)  # told too little: block 1's output is stale
    _assert_same(cache.perplexity(dirty_from=1), full)
    _assert_same(cache.perplexity(), full)


def test_cached_perplexity_is_exact_in_bfloat16_and_nbytes_follows_the_dtype():
    model, structure, ids, cache = _setup("llama", torch.bfloat16)
    assert cache.nbytes == (LAYERS + 1) * N_WINDOWS * SEQLEN * HIDDEN * 2
    _prune_block(structure, 2)
    _assert_same(cache.perplexity(dirty_from=2), _full(model, ids))


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_nbytes_counts_the_inputs_of_every_block_and_the_last_output(arch):
    _, _, _, cache = _setup(arch)
    assert cache.nbytes == (LAYERS + 1) * N_WINDOWS * SEQLEN * HIDDEN * 4
    cache.perplexity(dirty_from=0)
    assert cache.nbytes == (LAYERS + 1) * N_WINDOWS * SEQLEN * HIDDEN * 4  # replaced, not accumulated


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_only_blocks_from_the_dirty_one_on_are_rerun(arch):
    model, structure, _, cache = _setup(arch)
    runs = [0] * LAYERS
    for i, block in enumerate(structure.blocks):
        block.register_forward_pre_hook(lambda *_, i=i: runs.__setitem__(i, runs[i] + 1))
    tails = []
    model.get_output_embeddings().register_forward_hook(lambda *_: tails.append(1))

    def step(**kwargs) -> tuple[list[int], int]:
        runs[:], tails[:] = [0] * LAYERS, []
        cache.perplexity(**kwargs)
        return list(runs), len(tails)

    assert step() == ([0, 0, 0], N_BATCHES)  # first call: the tail only
    assert step() == ([0, 0, 0], 0)  # nothing changed: memoized
    assert step(dirty_from=2) == ([0, 0, N_BATCHES], N_BATCHES)
    assert step(dirty_from=LAYERS) == ([0, 0, 0], N_BATCHES)  # only the tail changed
    cache.invalidate(1)
    assert step() == ([0, N_BATCHES, N_BATCHES], N_BATCHES)
    cache.invalidate(1)
    assert step(dirty_from=2) == ([0, N_BATCHES, N_BATCHES], N_BATCHES)  # the earliest dirty block wins
    assert step(dirty_from=0) == ([N_BATCHES] * LAYERS, N_BATCHES)


@pytest.mark.parametrize("arch", ["gemma3", "gpt2"])
def test_invalidate_then_perplexity_is_exact(arch):
    model, structure, ids, cache = _setup(arch)
    _prune_block(structure, 2)
    _prune_block(structure, 0)
    cache.invalidate(2)
    cache.invalidate(0)
    _assert_same(cache.perplexity(), _full(model, ids))


def _linear_inputs_by_plain_forward(model: nn.Module, structure: ModelStructure, ids: torch.Tensor) -> dict:
    """Every linear's inputs, batch by batch, from ordinary forwards: independent of the cache machinery."""
    seen: dict[str, list[torch.Tensor]] = {lin.name: [] for lin in structure.linears}
    handles = [
        lin.module.register_forward_hook(lambda m, a, o, n=lin.name: seen[n].append(a[0].detach().clone()))
        for lin in structure.linears
    ]
    with torch.no_grad():
        for batch in batches(ids, BATCH):
            model(input_ids=batch, use_cache=False)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_activation_sink_sees_exactly_the_linears_of_rerun_blocks_with_their_real_inputs(arch):
    model, structure, ids, cache = _setup(arch)
    _prune_block(structure, 1)
    expected = _linear_inputs_by_plain_forward(model, structure, ids)
    seen: dict[str, list[torch.Tensor]] = {}
    cache.perplexity(dirty_from=1, activation_sink=lambda name, x: seen.setdefault(name, []).append(x.clone()))

    assert set(seen) == {lin.name for lin in structure.linears if lin.block >= 1}
    for name, xs in seen.items():
        assert len(xs) == N_BATCHES, name
        for got, want in zip(xs, expected[name]):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert all(not lin.module._forward_hooks for lin in structure.linears)  # hooks removed afterwards
    seen.clear()
    cache.perplexity(dirty_from=0)
    assert not seen


def test_a_failure_part_way_leaves_the_cache_consistent():
    model, structure, ids, cache = _setup("llama")
    _prune_block(structure, 1)
    _prune_block(structure, 2)

    def failing_sink(name: str, _x: torch.Tensor) -> None:
        if name.startswith(structure.block_name(2) + "."):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache.perplexity(dirty_from=1, activation_sink=failing_sink)  # block 1 refreshed, block 2 not
    assert all(not lin.module._forward_hooks for lin in structure.linears)
    _assert_same(cache.perplexity(), _full(model, ids))


@pytest.mark.parametrize("bad", [-1, LAYERS + 1])
def test_bad_block_indices_are_rejected_clearly(bad):
    _, _, _, cache = _setup("llama")
    with pytest.raises(ValueError, match=rf"0\.\.{LAYERS}.*got {bad}"):
        cache.perplexity(dirty_from=bad)
    with pytest.raises(ValueError, match=rf"0\.\.{LAYERS}.*got {bad}"):
        cache.invalidate(bad)
    with pytest.raises(TypeError, match="int block index"):
        cache.perplexity(dirty_from=True)


def test_bad_token_ids_are_rejected():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="seqlen >= 2"):
        BlockCache(model, discover(model), torch.zeros(3, 1, dtype=torch.long))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chunked_tail_equals_a_full_forward_bitwise(arch):
    """With a logits budget of a few positions, the tail runs in several chunks; still bitwise equal."""
    model, ids = tiny_model(arch), random_tokens(N_WINDOWS, SEQLEN, seed=1)
    structure = discover(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    budget = BATCH * vocab * 4 * 3  # 3 positions per chunk: 7 chunks of a 19-position window
    cache = BlockCache(model, structure, ids, batch_size=BATCH, budget_bytes=budget)
    full = perplexity(model, ids, batch_size=BATCH, budget_bytes=budget)
    _assert_same(cache.perplexity(), full)
    _prune_block(structure, 1)
    _assert_same(cache.perplexity(dirty_from=1), perplexity(model, ids, batch_size=BATCH, budget_bytes=budget))
