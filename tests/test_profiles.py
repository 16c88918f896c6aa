"""Sensitivity-profile math: the Wanda unit score, the non-zero quantile, Taylor sums and z-scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prune_env.profiles import TaylorAccumulator, nonzero_quantile, wanda_unit_score, zscore


@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 1.0])
def test_nonzero_quantile_is_the_lower_entry_of_the_sorted_nonzeros(q):
    g = torch.Generator().manual_seed(3)
    values = torch.rand(50, 33, generator=g)
    values[values < 0.3] = 0
    nonzero = values[values != 0].sort().values
    k = max(1, math.ceil(q * nonzero.numel()))
    assert nonzero_quantile(values, q) == float(nonzero[k - 1])


def test_nonzero_quantile_of_all_zeros_is_zero():
    assert nonzero_quantile(torch.zeros(4, 4)) == 0.0


def test_wanda_unit_score_pools_all_linears_of_the_unit():
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(8, 6, generator=g), torch.randn(5, 6, generator=g), torch.randn(6, 9, generator=g)]
    weights[0][:, :2] = 0  # pruned weights do not count
    norms = [torch.rand(6, generator=g), torch.rand(6, generator=g), torch.rand(9, generator=g)]
    pooled = torch.cat([(w.abs() * n).reshape(-1) for w, n in zip(weights, norms, strict=True)])
    pooled = pooled[pooled != 0].sort().values
    assert wanda_unit_score(weights, norms) == float(pooled[math.ceil(0.1 * pooled.numel()) - 1])


def test_taylor_accumulator_means_over_kept_weights_and_samples():
    acc = TaylorAccumulator()
    w = torch.tensor([[1.0, 0.0], [-2.0, 3.0]])
    for grad in (torch.ones(2, 2), torch.full((2, 2), -2.0)):
        acc.add("a", w, grad)
        acc.samples += 1
    # |w*g| sums: sample 1: 1+2+3 = 6, sample 2: 2+4+6 = 12; 3 kept weights, 2 samples
    assert acc.unit_score(["a"]) == pytest.approx(18 / 6)
    assert acc.unit_score(["missing"]) == 0.0


def test_zscore():
    z = zscore([1.0, 2.0, 3.0])
    assert np.allclose(z, [-1.2247449, 0.0, 1.2247449])
    assert np.array_equal(zscore([5.0, 5.0]), np.zeros(2, dtype=np.float32))
