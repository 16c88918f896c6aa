"""The kernels follow the reference protocol: exact N:M for any M dividing the columns, IEEE fp32 (TF32 off)
inside the statistics and SparseGPT with the caller's settings restored, and a loud raised damping."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from tiny_models import correlated_layer, random_tokens, tiny_model

from prune_env.pruner import collect_statistics, make_spec, prune
from prune_env.sparsify import NM, full_fp32_precision, magnitude_sparsify, sparsegpt_sparsify, wanda_sparsify
from prune_env.sparsify.precision import _precision_leaves, fp32_precision_settings, is_full_fp32
from prune_env.sparsify.sparsegpt import inverse_hessian_factor
from prune_env.statistics import LayerStatistics
from prune_env.structure import discover


def _layer(rows: int, cols: int, tokens: int = 1024, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and correlated inputs with 4 outlier features 10x larger."""
    return correlated_layer(rows, cols, tokens, seed, outliers=4, scale=10.0)


def _stats(x: torch.Tensor) -> LayerStatistics:
    st = LayerStatistics(x.shape[1], "cpu", hessian=True)
    for chunk in x.split(300):
        st.add(chunk)
    return st


def _prune(method: str, weight: torch.Tensor, st: LayerStatistics, nm: NM):
    return {
        "magnitude": lambda: magnitude_sparsify(weight, nm=nm),
        "wanda": lambda: wanda_sparsify(weight, st.act_norm, nm=nm),
        "sparsegpt": lambda: sparsegpt_sparsify(weight, st.hessian, nm=nm),
    }[method]()


# --- N:M over the whole row ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "cols"), [("3:6", 264), ("2:4", 200), ("5:10", 300), ("2:4", 136)])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nm_is_exact_when_128_does_not_divide_the_columns(method, pattern, cols, one_thread):
    nm = NM.parse(pattern)
    weight, x = _layer(rows=16, cols=cols)
    result = _prune(method, weight, _stats(x), nm)
    groups = result.mask.reshape(16, cols // nm.m, nm.m)  # groups of M consecutive columns of the whole row
    assert (groups.sum(dim=2) == nm.m - nm.n).all()  # N kept, M - N pruned in every group
    assert int(result.mask.sum()) == 16 * cols * (nm.m - nm.n) // nm.m
    assert (result.weight[result.mask] == 0).all()
    assert (result.weight[~result.mask] != 0).all()


def _column_by_column_sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, nm: NM) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT without lazy blocks, in float64: one column at a time, each N:M group chosen at its first
    column from the weights updated so far, each pruned column's error spread over all later columns."""
    u = inverse_hessian_factor(hessian).double()
    w = weight.double().clone()
    mask = torch.zeros(w.shape, dtype=torch.bool)
    for j in range(w.shape[1]):
        if j % nm.m == 0:
            saliency = w[:, j : j + nm.m] ** 2 / torch.diagonal(u)[j : j + nm.m] ** 2
            pruned = torch.argsort(saliency, dim=1, stable=True)[:, : nm.m - nm.n]
            mask[:, j : j + nm.m].scatter_(1, pruned, True)
        col = w[:, j].clone()
        err = (col - col.masked_fill(mask[:, j], 0.0)) / u[j, j]
        w[:, j:] -= err.unsqueeze(1) * u[j, j:].unsqueeze(0)
        w[:, j] = col.masked_fill(mask[:, j], 0.0)
    return w.float(), mask


@pytest.mark.parametrize(("pattern", "cols", "blocksize"), [("3:6", 264, 128), ("2:4", 200, 128), ("5:10", 300, 128), ("3:6", 264, 20)])
def test_sparsegpt_nm_equals_the_column_by_column_sweep(pattern, cols, blocksize, one_thread):
    nm = NM.parse(pattern)
    weight, x = _layer(rows=12, cols=cols, seed=3)
    hessian = _stats(x).hessian
    result = sparsegpt_sparsify(weight, hessian, nm=nm, blocksize=blocksize)
    ref_weight, ref_mask = _column_by_column_sparsegpt(weight, hessian, nm)
    assert torch.equal(result.mask, ref_mask)
    assert torch.allclose(result.weight, ref_weight, atol=1e-4)


def test_sparsegpt_nm_does_not_depend_on_the_block_size(one_thread):
    nm = NM(3, 6)
    weight, x = _layer(rows=12, cols=264, seed=1)
    hessian = _stats(x).hessian
    results = [sparsegpt_sparsify(weight, hessian, nm=nm, blocksize=b) for b in (128, 126, 37, 1000)]
    assert all(torch.equal(r.mask, results[0].mask) for r in results)
    assert all(torch.allclose(r.weight, results[0].weight, atol=1e-4) for r in results)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_nm_whose_m_does_not_divide_the_columns_is_rejected(method):
    weight, x = _layer(rows=4, cols=200, tokens=256)
    with pytest.raises(ValueError, match=r"3:6 needs the number of input features \(200\) to be a multiple of 6"):
        _prune(method, weight, _stats(x), NM(3, 6))


@pytest.mark.parametrize("bad", [0, -4, 2.5, True])
def test_sparsegpt_rejects_a_bad_block_size(bad):
    weight, x = _layer(rows=4, cols=16, tokens=64)
    with pytest.raises(ValueError, match="blocksize must be a positive integer"):
        sparsegpt_sparsify(weight, _stats(x).hessian, 0.5, blocksize=bad)


# --- TF32 off inside, restored after ---------------------------------------------------------------------------


@contextmanager
def _reduced_precision_allowed() -> Iterator[None]:
    """Allow TF32 everywhere (as a user's script may), restoring the settings afterwards."""
    leaves = _precision_leaves()
    if leaves is not None:
        saved = [(node, node.fp32_precision) for node in leaves]
        for node in leaves:
            node.fp32_precision = "tf32"
        try:
            yield
        finally:
            for node, value in reversed(saved):
                node.fp32_precision = value
        return
    saved_flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                   torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved_flags[2])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_flags[:2]


def _recording_tensor_type(log: list[tuple[str, bool]], fail_on: str | None = None) -> type[torch.Tensor]:
    """A tensor subclass that records, for every torch function it takes part in, whether full fp32 was on."""

    class Recorded(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", str(func))
            log.append((name, is_full_fp32()))
            if name == fail_on:
                raise RuntimeError(f"injected failure in {name}")
            return super().__torch_function__(func, types, args, kwargs or {})

    return Recorded


def test_full_fp32_precision_sets_ieee_and_restores_even_on_error():
    with _reduced_precision_allowed():
        before = fp32_precision_settings()
        assert not is_full_fp32()
        with full_fp32_precision():
            assert is_full_fp32()
        assert fp32_precision_settings() == before
        with pytest.raises(KeyError), full_fp32_precision():
            assert is_full_fp32()
            raise KeyError("boom")
        assert fp32_precision_settings() == before
    outside = fp32_precision_settings()
    with full_fp32_precision():
        pass
    assert fp32_precision_settings() == outside


def test_statistics_accumulate_in_full_fp32_and_restore(one_thread):
    _, x = _layer(rows=4, cols=24, tokens=200)
    log: list[tuple[str, bool]] = []
    st = LayerStatistics(24, "cpu", hessian=True)
    with _reduced_precision_allowed():
        before = fp32_precision_settings()
        st.add(x.as_subclass(_recording_tensor_type(log)))
        assert fp32_precision_settings() == before
        products = [inside for name, inside in log if name in ("addmm_", "mul", "sum")]
        assert len(products) >= 3 and all(products), log
        assert torch.allclose(st.hessian, 2 * x.t() @ x / 200, rtol=1e-4, atol=1e-3)
        with pytest.raises(RuntimeError, match="injected failure"):
            LayerStatistics(24, "cpu", hessian=True).add(x.as_subclass(_recording_tensor_type([], fail_on="addmm_")))
        assert fp32_precision_settings() == before


@pytest.mark.parametrize("nm", [None, NM(2, 4)])
def test_sparsegpt_runs_in_full_fp32_and_restores(nm, one_thread):
    weight, x = _layer(rows=8, cols=40, tokens=400)
    hessian = _stats(x).hessian
    log: list[tuple[str, bool]] = []
    with _reduced_precision_allowed():
        before = fp32_precision_settings()
        result = sparsegpt_sparsify(weight, hessian.as_subclass(_recording_tensor_type(log)), 0.5, nm, blocksize=16)
        assert fp32_precision_settings() == before
        names = {name for name, _ in log}
        assert {"linalg_cholesky_ex", "cholesky_inverse", "matmul"} <= names, names
        outside = [name for name, inside in log if not inside and name != "__get__"]  # __get__: reading .shape
        assert not outside, outside
        plain = sparsegpt_sparsify(weight, hessian, 0.5, nm, blocksize=16)
        assert torch.equal(result.mask, plain.mask)
        with pytest.raises(RuntimeError, match="injected failure"):
            sparsegpt_sparsify(weight, hessian.as_subclass(_recording_tensor_type([], fail_on="matmul")), 0.5, nm)
        assert fp32_precision_settings() == before


@pytest.mark.parametrize("mode", ["sequential", "oneshot"])
def test_the_calibration_forward_runs_in_full_fp32_and_restores(mode, one_thread):
    """Every linear's forward during calibration (block inputs, statistics, sequential re-runs) sees TF32 off,
    as in the reference code, although the caller allowed it; the caller's settings come back after."""
    model = tiny_model("llama")
    structure = discover(model)
    ids = random_tokens(4, 16)
    phase = ["calibration"]
    seen: dict[str, list[bool]] = {"calibration": [], "after": []}
    handles = [module.register_forward_hook(lambda *_: seen[phase[0]].append(is_full_fp32()))
               for module in model.modules() if isinstance(module, torch.nn.Linear)]
    try:
        with _reduced_precision_allowed():
            before = fp32_precision_settings()
            collect_statistics(model, ids, hessian=True, structure=structure, progress=False)
            assert fp32_precision_settings() == before
            prune(model, make_spec(structure, "sparsegpt", 0.5, mode=mode), ids, structure=structure,
                  progress=False)
            assert fp32_precision_settings() == before
            phase[0] = "after"
            model(input_ids=ids[:1])  # outside calibration the caller's settings hold
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen["calibration"]) >= 2 * structure.num_blocks and all(seen["calibration"])
    assert seen["after"] and not any(seen["after"])


# --- raised damping is reported ------------------------------------------------------------------------------


def _indefinite_hessian(cols: int, lowest: float, seed: int = 0) -> torch.Tensor:
    """A symmetric "Hessian" with eigenvalues 1 and one ``lowest`` (mean diagonal ~1): singular or indefinite,
    as a rank-deficient ``X X^T`` becomes with rounding error."""
    q, _ = torch.linalg.qr(torch.randn(cols, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    eig = torch.ones(cols, dtype=torch.float64)
    eig[0] = lowest
    return (q @ torch.diag(eig) @ q.t()).float()


def test_raised_damping_warns_with_the_damping_used():
    cols = 32
    hessian = _indefinite_hessian(cols, lowest=-0.03)  # 1% damping leaves it indefinite, 10% does not
    mean_diag = float(torch.diagonal(hessian).mean())
    weight = torch.randn(6, cols, generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="damping raised 10x") as record:
        result = sparsegpt_sparsify(weight, hessian, 0.5, name="model.layers.3.mlp.down_proj")
    message = str(record[0].message)
    assert "model.layers.3.mlp.down_proj" in message
    assert "0.1 x mean(diag H)" in message and f"{0.1 * mean_diag:.4g}" in message
    assert "asked 0.01 x mean(diag H)" in message and "not positive definite" in message
    assert torch.isfinite(result.weight).all()


def test_no_warning_when_the_asked_damping_suffices(one_thread):
    weight, x = _layer(rows=6, cols=32, tokens=16)  # fewer tokens than columns: singular X X^T, 1% damping suffices
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sparsegpt_sparsify(weight, _stats(x).hessian, 0.5, name="layer")


def test_hopeless_hessian_is_a_clear_error_naming_the_layer():
    hessian = _indefinite_hessian(16, lowest=-8.0)  # 10x mean(diag) = 4.4 < 8
    with pytest.raises(ValueError, match=r"Hessian of blk\.0\.q is not positive definite even with 1000x the damping"):
        inverse_hessian_factor(hessian, name="blk.0.q")
