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
