"""Perplexity is exact: it matches the model's own loss and does not depend on the batch size."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import random_tokens, tiny_model

from prune_env.perplexity import perplexity


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_perplexity_equals_the_models_own_loss(arch):
    model, ids = tiny_model(arch), random_tokens(5, 20, seed=3)
    with torch.no_grad():
        own = [float(model(input_ids=w[None], labels=w[None]).loss) for w in ids]
    result = perplexity(model, ids, batch_size=2)
    assert result.tokens == 5 * 19
    assert result.mean_nll == pytest.approx(sum(own) / len(own), rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(sum(own) / len(own)), rel=1e-5)


def test_perplexity_does_not_depend_on_batch_size():
    model, ids = tiny_model("qwen3"), random_tokens(7, 16, seed=4)
    values = {bs: perplexity(model, ids, batch_size=bs).nll for bs in (1, 3, 7)}
    assert values[1] == pytest.approx(values[3], rel=1e-5) == pytest.approx(values[7], rel=1e-5)


def test_perplexity_rejects_bad_shapes():
    with pytest.raises(ValueError, match="seqlen >= 2"):
        perplexity(tiny_model("llama"), torch.zeros(3, 1, dtype=torch.long))


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_chunked_loss_equals_the_models_own_loss_and_bounds_the_logits(arch):
    """A tiny logits budget splits each window into chunks of positions: same loss, never more logits."""
    model, ids = tiny_model(arch), random_tokens(4, 20, seed=5)
    vocab = model.get_output_embeddings().weight.shape[0]
    shapes: list[tuple[int, ...]] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda _m, _a, out: shapes.append(tuple(out.shape)))
    try:
        chunked = perplexity(model, ids, batch_size=2, budget_bytes=2 * vocab * 4 * 4)  # 4 positions per chunk
    finally:
        handle.remove()
    whole = perplexity(model, ids, batch_size=2, budget_bytes=2**40)
    with torch.no_grad():
        own = sum(float(model(input_ids=w[None], labels=w[None]).loss) for w in ids) / len(ids)
    assert chunked.mean_nll == pytest.approx(own, rel=1e-5)
    assert chunked.mean_nll == pytest.approx(whole.mean_nll, rel=1e-6)
    assert max(s[1] for s in shapes) <= 4  # no call of the LM head saw more than 4 positions
    assert sum(s[1] for s in shapes if s[1] > 1) == 2 * 19  # 2 batches x 19 predicted positions, in chunks
