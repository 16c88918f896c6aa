"""Prune a model block by block with any kernel and any per-layer sparsity map (orchestration).

Two modes, as in the Wanda and SparseGPT reference code:

* ``sequential`` (default): the statistics of block ``i`` come from the outputs of the already pruned blocks
  ``< i``; after pruning, block ``i`` is re-run to produce the next block's inputs.
* ``oneshot``: every statistic comes from the dense model (the dense outputs of block ``i`` feed block ``i+1``).

Either way only one block's activations are held at a time. All inputs are validated before the model is
touched, and if anything fails part way (e.g. NaN statistics), every layer already changed is restored from
a CPU copy, so a failure never leaves a half-pruned model behind. The calibration forward (block inputs,
statistics, the sequential re-runs) runs in IEEE fp32 whatever the process allows (TF32 off, as the reference
code sets it), and the caller's precision settings are restored after.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import BlockInputs, capture_block_inputs, forward_hooks
from .sparsify import (
    METHODS,
    NM,
    SparsifyResult,
    check_ratio,
    full_fp32_precision,
    magnitude_sparsify,
    sparsegpt_sparsify,
    wanda_sparsify,
)
from .statistics import LayerStatistics
from .structure import ModelStructure, PrunableLinear, discover

MODES = ("sequential", "oneshot")


@dataclass(frozen=True)
class PruneSpec:
    """What to do: a method, a per-linear sparsity map (or one N:M pattern for all), a calibration mode."""

    method: str
    sparsity: Mapping[str, float]
    nm: NM | None = None
    mode: str = "sequential"
    blocksize: int = 128
    percdamp: float = 0.01

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude"

    def targets(self, structure: ModelStructure, block: int) -> list[PrunableLinear]:
        """The linears of ``block`` this spec prunes."""
        return [lin for lin in structure.linears_in_block(block) if self.nm is not None or self.sparsity.get(lin.name, 0.0) > 0]


def resolve_sparsity_map(structure: ModelStructure, sparsity: float | Mapping[str, float]) -> dict[str, float]:
    """Expand a uniform ratio, or a map keyed by linear names and/or block names, to one ratio per linear.

    A block key (``model.layers.3``) sets every linear of that block; a linear key overrides its block's value.
    Linears not named get 0 (left dense).
    """
    if not isinstance(sparsity, Mapping):
        ratio = check_ratio(sparsity)
        return {name: ratio for name in structure.names()}
    result = {name: 0.0 for name in structure.names()}
    block_names = {structure.block_name(i): i for i in range(structure.num_blocks)}
    unknown = [key for key in sparsity if key not in result and key not in block_names]
    if unknown:
        raise ValueError(
            f"unknown layer or block names in the sparsity map: {unknown[:5]}; keys must be prunable linear names "
            f"(e.g. {structure.linears[0].name!r}) or block names (e.g. {structure.block_name(0)!r})"
        )
    for key, value in sparsity.items():
        if key in block_names:
            for lin in structure.linears_in_block(block_names[key]):
                result[lin.name] = check_ratio(value, f"sparsity of {key}")
    for key, value in sparsity.items():
        if key in result:
            result[key] = check_ratio(value, f"sparsity of {key}")
    return result


def make_spec(
    structure: ModelStructure,
    method: str,
    sparsity: float | Mapping[str, float] | None = None,
    nm: NM | str | None = None,
    mode: str = "sequential",
    **options: float,
) -> PruneSpec:
    """Validate everything and build a :class:`PruneSpec` (raises ``ValueError`` with the fix on bad input)."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if mode not in MODES:
        raise ValueError(f"unknown calibration mode {mode!r}; choose one of {', '.join(MODES)}")
    pattern = NM.parse(nm) if isinstance(nm, str) else nm
    if pattern is not None:
        if sparsity is not None and not isinstance(sparsity, Mapping) and abs(float(sparsity) - pattern.sparsity) > 1e-9:
            raise ValueError(f"--sparsity {sparsity} contradicts N:M {pattern} (which means {pattern.sparsity:g}); pass only one")
        if isinstance(sparsity, Mapping):
            raise ValueError("an N:M pattern applies to every prunable linear; it cannot be combined with a sparsity map")
        for lin in structure.linears:
            pattern.check_columns(lin.shape[1])
        ratios = {name: pattern.sparsity for name in structure.names()}
    else:
        if sparsity is None:
            raise ValueError("give a sparsity (e.g. 0.5), a per-layer sparsity map, or an N:M pattern (e.g. 2:4)")
        ratios = resolve_sparsity_map(structure, sparsity)
    return PruneSpec(method, ratios, pattern, mode, **options)


@dataclass
class PruneResult:
    """What a pruning pass did: the achieved sparsity per pruned linear and the time it took."""

    spec: PruneSpec
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def sparsify_weight(
    method: str,
    weight: torch.Tensor,
    ratio: float,
    nm: NM | None = None,
    stats: LayerStatistics | None = None,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str | None = None,
) -> SparsifyResult:
    """Dispatch one ``(out, in)`` weight to the kernel of ``method`` (the statistics it needs must be given).

    ``name`` (the linear's) labels the kernel's warnings, e.g. SparseGPT's raised damping.
    """
    if method == "magnitude":
        return magnitude_sparsify(weight, ratio, nm)
    if stats is None:
        raise ValueError(f"method {method!r} needs calibration statistics for this layer")
    if method == "wanda":
        return wanda_sparsify(weight, stats.act_norm, ratio, nm)
    if method == "sparsegpt":
        return sparsegpt_sparsify(weight, stats.hessian, ratio, nm, blocksize=blocksize, percdamp=percdamp, name=name)
    raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")


def _sparsify(spec: PruneSpec, lin: PrunableLinear, stats: LayerStatistics | None) -> SparsifyResult:
    return sparsify_weight(spec.method, lin.weight_matrix(), spec.sparsity.get(lin.name, 0.0), spec.nm, stats,
                           blocksize=spec.blocksize, percdamp=spec.percdamp, name=lin.name)


def _gather(
    inputs: BlockInputs, index: int, block: nn.Module, targets: list[PrunableLinear], *, hessian: bool
) -> tuple[dict[str, LayerStatistics], list[torch.Tensor]]:
    """Run block ``index`` on the current inputs, accumulating statistics of ``targets``; return (stats, outputs)."""
    stats = {lin.name: LayerStatistics(lin.shape[1], lin.module.weight.device, hessian=hessian) for lin in targets}
    handles = forward_hooks([(lin.name, lin.module) for lin in targets], lambda name, x: stats[name].add(x))
    try:
        outputs = inputs.run_block(index, block)
    finally:
        for handle in handles:
            handle.remove()
    for name, st in stats.items():
        st.check_finite(name)
    return stats, outputs


@torch.no_grad()
def collect_statistics(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    hessian: bool,
    structure: ModelStructure | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, LayerStatistics]:
    """Input statistics of every prunable linear of the dense model (one-shot), without changing anything.

    Used where layers are re-pruned many times from their dense weights (the env): the statistics stay fixed.
    """
    structure = structure or discover(model)
    stats: dict[str, LayerStatistics] = {}
    with full_fp32_precision():
        inputs = capture_block_inputs(model, structure, calib_ids, batch_size)
        for index in tqdm(range(structure.num_blocks), desc="calibration statistics", unit="block",
                          disable=not progress):
            block_stats, inputs.hidden = _gather(inputs, index, structure.blocks[index],
                                                 structure.linears_in_block(index), hessian=hessian)
            stats.update(block_stats)
    return stats


@torch.no_grad()
def prune(
    model: nn.Module,
    spec: PruneSpec,
    calib_ids: torch.Tensor | None = None,
    *,
    structure: ModelStructure | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> PruneResult:
    """Prune ``model`` in place according to ``spec``; calibration token ids ``[n, seqlen]`` for wanda/sparsegpt."""
    structure = structure or discover(model)
    if spec.needs_calibration and (calib_ids is None or calib_ids.numel() == 0):
        raise ValueError(f"method {spec.method!r} needs calibration token ids (an [n, seqlen] LongTensor)")
    start = time.perf_counter()
    result = PruneResult(spec)
    backups: dict[str, torch.Tensor] = {}
    with full_fp32_precision():
        try:
            inputs = capture_block_inputs(model, structure, calib_ids, batch_size) if spec.needs_calibration else None
            bar = tqdm(range(structure.num_blocks), desc=f"{spec.method} ({spec.mode})", unit="block",
                       disable=not progress)
            for index in bar:
                block = structure.blocks[index]
                targets = spec.targets(structure, index)
                stats, outputs = (_gather(inputs, index, block, targets, hessian=spec.method == "sparsegpt")
                                  if inputs is not None else ({}, None))
                for lin in targets:
                    pruned = _sparsify(spec, lin, stats.get(lin.name))
                    backups[lin.name] = lin.weight_matrix().detach().to("cpu", copy=True)
                    lin.set_weight_matrix(pruned.weight)
                    result.layer_sparsity[lin.name] = pruned.sparsity
                if inputs is not None:
                    if spec.mode == "sequential" and targets:
                        outputs = inputs.run_block(index, block)
                    inputs.hidden = outputs
        except BaseException:
            for name, weight in backups.items():
                structure.linear(name).set_weight_matrix(weight)
            raise
    result.seconds = time.perf_counter() - start
    return result
