"""SparseGPT (Frantar & Alistarh, 2023): OBS-style pruning with weight updates from the layer Hessian.

With ``H = 2 X X^T / N`` (dampened by ``percdamp * mean(diag H)``), columns are processed left to right in
blocks of ``blocksize``. At the start of each block (unstructured) or every ``m`` columns (N:M), the pruned
set is chosen by the OBS saliency ``w^2 / [H^-1]_jj^2``; each pruned weight's error is then spread over the
not yet processed columns through the upper Cholesky factor of ``H^-1``, so the layer output ``WX`` is
preserved as well as possible.

N:M groups are the ``m`` consecutive columns starting at a multiple of ``m`` of the whole row, each chosen
when the sweep reaches its first column (on the weights updated so far, as the reference code does). For
that, a block must hold whole groups: with N:M the block size is rounded down to a multiple of ``m`` (128
stays 128 for M = 2, 4, 8; it becomes 126 for M = 6), so the result is exact N:M for any M dividing the
number of columns. The whole kernel runs in IEEE fp32 (TF32 off, see :mod:`.precision`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .patterns import NM, check_ratio, smallest_along_last, smallest_overall
from .precision import full_fp32_precision
from .result import SparsifyResult


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run the column loop single-threaded on CPU: its ops are tiny and latency-bound, and intra-op threads
    only add barriers (measured on 2 cores: a 576x1536 layer in 0.4 s with 1 thread, 18 s with 2 threads on a
    busy machine). The previous thread count is restored; GPUs are unaffected."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def inverse_hessian_factor(
    hessian: torch.Tensor, percdamp: float = 0.01, retries: int = 3, *, name: str | None = None
) -> torch.Tensor:
    """Upper Cholesky factor of the dampened inverse Hessian.

    The damping is ``percdamp * mean(diag H)``; if ``H`` plus that is not positive definite (or its inverse
    is not, numerically), the damping is raised 10x at a time, up to ``retries`` times, and a
    ``RuntimeWarning`` names the layer (``name``) and the damping actually used: a raised damping moves
    SparseGPT towards magnitude pruning, which a benchmark must not hide.
    """
    h = hessian.detach().float().clone()
    diag = torch.diagonal(h)
    dead = diag == 0
    diag[dead] = 1.0
    mean_diag = float(torch.mean(diag))
    damp = percdamp * mean_diag
    eye = torch.eye(h.shape[0], device=h.device, dtype=h.dtype)
    why = ""
    for attempt in range(retries + 1):
        chol, info = torch.linalg.cholesky_ex(h + damp * (10**attempt) * eye)
        if int(info) == 0:
            factor, info_inv = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
            if int(info_inv) == 0:
                if attempt:
                    _warn_raised_damping(name, percdamp, 10**attempt, mean_diag, why)
                return factor
            why = why or f"the inverse of H + damping is not positive definite (minor {int(info_inv)})"
        else:
            why = why or f"H + damping is not positive definite (leading minor {int(info)} of {h.shape[0]})"
    layer = f" of {name}" if name else ""
    raise ValueError(
        f"SparseGPT: the layer Hessian{layer} is not positive definite even with {10**retries}x the damping "
        f"({percdamp * 10**retries:g} x mean(diag H)): {why}. The calibration activations are degenerate "
        "(too few samples or NaN/inf). Use more calibration samples."
    )


def _warn_raised_damping(name: str | None, percdamp: float, factor: int, mean_diag: float, why: str) -> None:
    used = percdamp * factor
    layer = f" for {name}" if name else ""
    warnings.warn(
        f"SparseGPT{layer}: damping raised {factor}x to {used:g} x mean(diag H) = {used * mean_diag:.4g} "
        f"(asked {percdamp:g} x mean(diag H) = {percdamp * mean_diag:.4g}) because {why}; the pruned weights "
        "are less exact. Use more calibration samples (or a larger percdamp to make this explicit).",
        RuntimeWarning,
        stacklevel=3,
    )


def sparsegpt_sparsify(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float = 0.0,
    nm: NM | None = None,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str | None = None,
) -> SparsifyResult:
    """Prune ``weight`` (``(out, in)``) with SparseGPT given ``hessian`` (``(in, in)``, ``2 X X^T / N``).

    ``blocksize`` is rounded down to a multiple of ``m`` with N:M (at least ``m``); ``name`` (the layer's)
    only labels the warning given when the damping had to be raised.
    """
    w = weight.detach().to(torch.float32, copy=True).contiguous()
    rows, cols = w.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must be ({cols}, {cols}) for a weight with {cols} input features, got {tuple(hessian.shape)}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"SparseGPT blocksize must be a positive integer (columns per block, e.g. 128), got {blocksize!r}")
    if nm is not None:
        nm.check_columns(cols)
        blocksize = max(nm.m, blocksize - blocksize % nm.m)  # whole N:M groups in every block
    else:
        sparsity = check_ratio(sparsity)
    with full_fp32_precision():
        hessian = hessian.to(device=w.device)
        w[:, torch.diagonal(hessian) == 0] = 0.0  # inputs never active carry no information
        hinv = inverse_hessian_factor(hessian, percdamp, name=name)
        with _one_cpu_thread(w.device):
            mask = _obs_columns(w, hinv, sparsity, nm, blocksize)
    w.masked_fill_(mask, 0.0)
    return SparsifyResult(w, mask)


def _obs_columns(w: torch.Tensor, hinv: torch.Tensor, sparsity: float, nm: NM | None, blocksize: int) -> torch.Tensor:
    """The OBS sweep over column blocks: updates ``w`` in place, returns the pruned mask."""
    cols = w.shape[1]
    mask = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        width = end - start
        w_block = w[:, start:end].clone()
        hinv_block = hinv[start:end, start:end]
        d = torch.diagonal(hinv_block)
        err_block = torch.zeros_like(w_block)
        block_mask = torch.zeros(w_block.shape, dtype=torch.bool, device=w.device)
        if nm is None and sparsity > 0:
            saliency = w_block**2 / d.unsqueeze(0) ** 2
            block_mask = smallest_overall(saliency, int(saliency.numel() * sparsity))

        for i in range(width):
            if nm is not None and (start + i) % nm.m == 0:  # a group starts here; it ends inside the block
                group = w_block[:, i : i + nm.m] ** 2 / d[i : i + nm.m].unsqueeze(0) ** 2
                block_mask[:, i : i + nm.m] = smallest_along_last(group, nm.m - nm.n)
            col = w_block[:, i]
            pruned_col = col.masked_fill(block_mask[:, i], 0.0)
            err = (col - pruned_col) / hinv_block[i, i]
            w_block[:, i:] -= err.unsqueeze(1) * hinv_block[i, i:].unsqueeze(0)
            w_block[:, i] = pruned_col
            err_block[:, i] = err

        w[:, start:end] = w_block
        mask[:, start:end] = block_mask
        w[:, end:] -= err_block @ hinv[start:end, end:]
    return mask
