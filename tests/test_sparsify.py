"""The pure kernels: exact patterns, agreement with straightforward computations, reconstruction quality."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import correlated_layer

from prune_env.sparsify import NM, magnitude_sparsify, sparsegpt_sparsify, wanda_sparsify
from prune_env.sparsify.patterns import smallest_overall, smallest_per_row
from prune_env.statistics import LayerStatistics, NonFiniteStatisticsError


def _layer(rows: int = 48, cols: int = 64, tokens: int = 2048, seed: int = 0):
    """A weight and correlated inputs with 6 outlier features 20x larger."""
    return correlated_layer(rows, cols, tokens, seed, outliers=6, scale=20.0)


def _stats(x: torch.Tensor, hessian: bool = True) -> LayerStatistics:
    st = LayerStatistics(x.shape[1], "cpu", hessian=hessian)
    for chunk in x.split(500):
        st.add(chunk)
    return st


def _wanda_mask_by_hand(weight: torch.Tensor, x: torch.Tensor, sparsity: float) -> torch.Tensor:
    norms = [math.sqrt(sum(float(v) ** 2 for v in x[:, j])) for j in range(x.shape[1])]
    mask = torch.zeros_like(weight, dtype=torch.bool)
    k = int(weight.shape[1] * sparsity)
    for i in range(weight.shape[0]):
        scores = [(abs(float(weight[i, j])) * norms[j], j) for j in range(weight.shape[1])]
        for _, j in sorted(scores)[:k]:
            mask[i, j] = True
    return mask


def test_wanda_mask_equals_straightforward_computation():
    weight, x = _layer(rows=12, cols=40, tokens=300)
    result = wanda_sparsify(weight, _stats(x, hessian=False).act_norm, 0.5)
    assert torch.equal(result.mask, _wanda_mask_by_hand(weight, x, 0.5))
    assert torch.equal(result.weight, weight.masked_fill(result.mask, 0.0))


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_wanda_prunes_exactly_k_per_row(sparsity):
    weight, x = _layer()
    mask = wanda_sparsify(weight, _stats(x, False).act_norm, sparsity).mask
    assert (mask.sum(dim=1) == int(64 * sparsity)).all()


def test_magnitude_is_a_whole_matrix_threshold():
    weight, _ = _layer()
    result = magnitude_sparsify(weight, 0.6)
    assert int(result.mask.sum()) == int(weight.numel() * 0.6)
    assert weight.abs()[result.mask].max() <= weight.abs()[~result.mask].min()
    assert result.mask.sum(dim=1).unique().numel() > 1  # not per row


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nm_pattern_is_exact(method, pattern):
    nm = NM.parse(pattern)
    weight, x = _layer()
    st = _stats(x)
    result = {
        "magnitude": lambda: magnitude_sparsify(weight, nm=nm),
        "wanda": lambda: wanda_sparsify(weight, st.act_norm, nm=nm),
        "sparsegpt": lambda: sparsegpt_sparsify(weight, st.hessian, nm=nm),
    }[method]()
    groups = result.mask.reshape(weight.shape[0], -1, nm.m)
    assert (groups.sum(dim=2) == nm.m - nm.n).all()
    assert (result.weight[result.mask] == 0).all()
    assert result.sparsity == pytest.approx(nm.sparsity)


def test_wanda_nm_keeps_the_top_scores_of_each_group():
    weight, x = _layer(rows=8, cols=16)
    norm = _stats(x, False).act_norm
    mask = wanda_sparsify(weight, norm, nm=NM(2, 4)).mask
    scores = (weight.abs() * norm).reshape(8, 4, 4)
    kept_min = scores.masked_fill(mask.reshape(8, 4, 4), float("inf")).min(dim=2).values
    pruned_max = scores.masked_fill(~mask.reshape(8, 4, 4), float("-inf")).max(dim=2).values
    assert (pruned_max <= kept_min).all()


@pytest.mark.parametrize("target", [0.5, 0.7, "2:4"])
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(target):
    weight, x = _layer(rows=64, cols=256, tokens=4096)
    st = _stats(x)
    nm = NM.parse(target) if isinstance(target, str) else None
    ratio = 0.0 if nm else target
    errors = {
        name: float(torch.linalg.norm(x @ weight.t() - x @ res.weight.t()))
        for name, res in {
            "magnitude": magnitude_sparsify(weight, ratio, nm),
            "wanda": wanda_sparsify(weight, st.act_norm, ratio, nm),
            "sparsegpt": sparsegpt_sparsify(weight, st.hessian, ratio, nm),
        }.items()
    }
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_sparsegpt_unstructured_sparsity_and_identity_at_zero():
    weight, x = _layer(cols=256)
    st = _stats(x)
    result = sparsegpt_sparsify(weight, st.hessian, 0.5, blocksize=128)
    assert int(result.mask.sum()) == 2 * int(48 * 128 * 0.5)  # per 128-column block
    assert torch.allclose(sparsegpt_sparsify(weight, st.hessian, 0.0).weight, weight)


def test_sparsegpt_handles_dead_inputs():
    weight, x = _layer()
    x[:, 3] = 0.0
    result = sparsegpt_sparsify(weight, _stats(x).hessian, 0.5)
    assert torch.isfinite(result.weight).all()
    assert (result.weight[:, 3] == 0).all()


def test_statistics_match_direct_formulas():
    _, x = _layer(tokens=1000)
    st = _stats(x)
    assert st.tokens == 1000
    assert torch.allclose(st.act_norm, x.norm(dim=0), rtol=1e-5)
    assert torch.allclose(st.hessian, 2 * x.t() @ x / 1000, rtol=1e-4, atol=1e-3)


def test_statistics_reject_non_finite():
    st = LayerStatistics(4, "cpu", hessian=True)
    st.add(torch.tensor([[1.0, float("nan"), 0.0, 1.0]]))
    with pytest.raises(NonFiniteStatisticsError, match="NaN or inf"):
        st.check_finite("layer.q")


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), 1.5])
def test_bad_sparsity_is_rejected(bad):
    weight, x = _layer()
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        magnitude_sparsify(weight, bad)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        wanda_sparsify(weight, x.norm(dim=0), bad)


@pytest.mark.parametrize("text", ["4:4", "5:4", "0:4", "a:b", "2-4"])
def test_bad_nm_is_rejected(text):
    with pytest.raises(ValueError, match="N:M"):
        NM.parse(text)


def test_nm_needs_divisible_columns():
    weight = torch.randn(4, 10)
    with pytest.raises(ValueError, match="multiple of 4"):
        magnitude_sparsify(weight, nm=NM(2, 4))


def test_kernels_do_not_modify_their_input():
    weight, x = _layer()
    before = weight.clone()
    st = _stats(x)
    magnitude_sparsify(weight, 0.5)
    wanda_sparsify(weight, st.act_norm, 0.5)
    sparsegpt_sparsify(weight, st.hessian, 0.5)
    assert torch.equal(weight, before)


def _argsort_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    idx = torch.argsort(scores, dim=-1, stable=True)[..., :count]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)


@pytest.mark.parametrize("levels", [None, 3, 1])  # continuous scores, heavy ties, all equal
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.93, 1.0])
def test_linear_time_selection_equals_stable_argsort(levels, fraction):
    g = torch.Generator().manual_seed(7)
    scores = torch.rand(37, 91, generator=g)
    if levels is not None:
        scores = (scores * levels).floor()
    count = int(91 * fraction)
    assert torch.equal(smallest_per_row(scores, count), _argsort_mask(scores, count))
    flat_count = int(scores.numel() * fraction)
    assert torch.equal(smallest_overall(scores, flat_count), _argsort_mask(scores.reshape(-1), flat_count).view_as(scores))


def test_selection_with_nan_scores_prunes_nan_last():
    scores = torch.tensor([[0.3, float("nan"), 0.1, 0.2], [float("nan"), float("nan"), 0.5, 0.5]])
    assert torch.equal(smallest_per_row(scores, 3), _argsort_mask(scores, 3))
    assert not smallest_per_row(scores, 3)[0, 1]
