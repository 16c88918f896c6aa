"""Finalization: re-prune an env's allocation the way the published methods prune (sequential calibration).

Inside :class:`~prune_env.env.PruningEnv` every unit is re-pruned from its dense weights with *one-shot*
statistics (collected once from the dense model), so a step costs one unit and SparseGPT updates never
compound. The Wanda and SparseGPT references instead prune block by block, each block's statistics taken on
the outputs of the already pruned blocks before it ("sequential"). A number that carries a published
method's name must come from that procedure, so after an episode :func:`finalize_allocation` takes the
allocation the policy chose (``env.sparsity_map()``) and re-prunes the whole model from dense with
:func:`prune_env.pruner.prune` in ``sequential`` mode, on the env's own calibration windows and kernel.

The allocation (the levels) is unchanged; only the weights inside each unit change. Every unit is announced
to the env's checkpoint store before it is written, so ``env.reset()`` and ``env.reset(options={"checkpoint":
id})`` still restore bitwise afterwards, and the env's block cache is told that every block is stale.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .pruner import make_spec, prune

FINALIZE_MODES = ("sequential", "none")


def check_finalize_mode(mode: str) -> str:
    """``mode`` if known, else ``ValueError`` naming the choices."""
    if mode not in FINALIZE_MODES:
        raise ValueError(f"unknown finalization {mode!r}; choose one of {', '.join(FINALIZE_MODES)} "
                         "(sequential: re-prune the chosen allocation block by block as the references do; "
                         "none: keep the env's one-shot weights, the state the policy saw)")
    return mode


def linear_sparsity_map(env: Any) -> tuple[dict[str, float], list[str]]:
    """Per-linear sparsities of the env's allocation, and the linears of units removed whole (level 1.0)."""
    raw = env.unwrapped
    ratios: dict[str, float] = {}
    removed: list[str] = []
    for unit, level in zip(raw.units, raw.sparsity_map().values()):
        for lin in unit.linears:
            if level >= 1.0:
                removed.append(lin.name)
                ratios[lin.name] = 0.0
            else:
                ratios[lin.name] = float(level)
    return ratios, removed


@torch.no_grad()
def finalize_allocation(env: Any, mode: str = "sequential", *, progress: bool = False) -> dict[str, Any]:
    """Re-prune ``env``'s current allocation from dense with sequential calibration (``mode="sequential"``), in
    place; ``mode="none"`` leaves the weights. Returns ``{"finalize": mode, "seconds": s}``.

    The env's kernel (``config.method``), calibration windows (``tokens.calib``) and batch size are used, so the
    result equals ``prune_env.pruner.prune`` of the dense model with the same sparsity map in sequential mode.
    """
    check_finalize_mode(mode)
    if mode == "none":
        return {"finalize": "none", "seconds": 0.0}
    raw = env.unwrapped
    start = time.perf_counter()
    ratios, removed = linear_sparsity_map(env)
    spec = make_spec(raw.structure, raw.config.method, ratios, mode="sequential")
    store = raw.store
    for unit in raw.units:
        store.about_to_change(unit.name)
    try:
        for unit in raw.units:  # back to dense: the sequential pass starts from the dense model
            for lin in unit.linears:
                like = lin.module.weight
                lin.set_weight_matrix(raw.dense.get(lin.name).to(device=like.device, dtype=like.dtype))
        calib = raw.tokens.calib if spec.needs_calibration else None
        prune(raw.model, spec, calib, structure=raw.structure, batch_size=raw.config.batch_size, progress=progress)
        for name in removed:
            lin = raw.structure.linear(name)
            lin.set_weight_matrix(torch.zeros_like(lin.weight_matrix()))
    finally:
        for unit in raw.units:
            store.mark_changed(unit.name)
        raw.invalidate_cache(0)
    return {"finalize": "sequential", "seconds": time.perf_counter() - start}
