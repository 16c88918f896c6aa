"""Find decoder blocks and prunable linear layers generically.

No attribute paths are hard-coded: the decoder blocks are the largest homogeneous ``nn.ModuleList`` in the
model (by parameter count), and the prunable layers are the ``nn.Linear`` (and GPT-2 style ``Conv1D``) modules
inside those blocks. Everything outside the blocks (embeddings, LM head, final norm) is left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

try:  # GPT-2 and a few others store linears as Conv1D with a transposed (in, out) weight.
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers always has it today
    Conv1D = ()  # type: ignore[assignment,misc]


class StructureError(ValueError):
    """The model has no recognisable decoder blocks or prunable linear layers."""


@dataclass(frozen=True)
class PrunableLinear:
    """One prunable linear layer: its full module name, its block index and the module itself.

    ``weight_matrix()`` always returns an ``(out_features, in_features)`` view, so kernels never need to know
    whether the module is an ``nn.Linear`` or a transposed ``Conv1D``.
    """

    name: str
    block: int
    module: nn.Module

    @property
    def transposed(self) -> bool:
        return isinstance(self.module, Conv1D) if Conv1D else False

    def weight_matrix(self) -> torch.Tensor:
        w = self.module.weight
        return w.t() if self.transposed else w

    def set_weight_matrix(self, new: torch.Tensor) -> None:
        """Write an ``(out, in)`` matrix back into the module in place, in the module's dtype and layout."""
        w = self.module.weight
        src = new.t() if self.transposed else new
        with torch.no_grad():
            w.copy_(src.to(dtype=w.dtype, device=w.device))

    @property
    def shape(self) -> tuple[int, int]:
        out_f, in_f = self.weight_matrix().shape
        return int(out_f), int(in_f)

    @property
    def numel(self) -> int:
        return self.module.weight.numel()


@dataclass(frozen=True)
class ModelStructure:
    """The decoder blocks of a model and the prunable linears inside them, in execution order."""

    blocks_name: str
    blocks: nn.ModuleList
    linears: tuple[PrunableLinear, ...]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def block_name(self, index: int) -> str:
        return f"{self.blocks_name}.{index}"

    def linears_in_block(self, index: int) -> list[PrunableLinear]:
        return [lin for lin in self.linears if lin.block == index]

    def linear(self, name: str) -> PrunableLinear:
        for lin in self.linears:
            if lin.name == name:
                return lin
        raise KeyError(f"no prunable linear named {name!r}; known names look like {self.linears[0].name!r}")

    def names(self) -> list[str]:
        return [lin.name for lin in self.linears]


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and transformers' ``Conv1D``."""
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _homogeneous_lists(model: nn.Module) -> Iterator[tuple[str, nn.ModuleList]]:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(child) for child in module}
            if len(kinds) == 1 and any(is_linear(m) for m in module[0].modules()):
                yield name, module


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return ``(name, ModuleList)`` of the decoder blocks: the homogeneous ModuleList holding most parameters.

    A ModuleList of plain linears (e.g. an MoE expert list inside a block) is never chosen over the blocks
    that contain it, because the containing list always holds more parameters.
    """
    candidates = list(_homogeneous_lists(model))
    if not candidates:
        raise StructureError(
            f"{type(model).__name__} has no nn.ModuleList of identical blocks containing linear layers; "
            "prune-gym needs a transformer whose decoder blocks are held in an nn.ModuleList "
            "(every Hugging Face causal LM is)."
        )
    return max(candidates, key=lambda item: _param_count(item[1]))


def discover(model: nn.Module) -> ModelStructure:
    """Find the decoder blocks and, inside each, every prunable linear layer (in module order)."""
    blocks_name, blocks = find_blocks(model)
    linears: list[PrunableLinear] = []
    for index, block in enumerate(blocks):
        prefix = f"{blocks_name}.{index}" if blocks_name else str(index)
        for sub_name, module in block.named_modules():
            if is_linear(module):
                linears.append(PrunableLinear(f"{prefix}.{sub_name}", index, module))
    if not linears:
        raise StructureError(f"the decoder blocks at {blocks_name!r} contain no nn.Linear or Conv1D layers to prune")
    return ModelStructure(blocks_name, blocks, tuple(linears))
