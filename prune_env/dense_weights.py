"""Where the env gets the dense (original) weights to re-prune units from and to restore masks against.

:class:`SafetensorsDenseWeights` re-reads a linear's weight from the checkpoint files the model was loaded
from, one tensor at a time, so no second copy of the model is kept in memory. It is used only after
checking that every file tensor (cast to the model's dtype) equals the live weight bit for bit; otherwise
:func:`dense_weights_for` falls back to :class:`prune_env.checkpoints.InMemoryDenseWeights` (CPU copies).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from .checkpoints import DenseWeights, InMemoryDenseWeights
from .structure import ModelStructure


class DenseWeightsMismatch(ValueError):
    """The checkpoint files do not hold the model's current weights under the expected names."""


def _index(weights_dir: Path) -> dict[str, Path]:
    """``{tensor name: file}`` over the directory's safetensors files (sharded or not)."""
    index_file = weights_dir / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text())["weight_map"]
        return {name: weights_dir / file for name, file in weight_map.items()}
    files = sorted(weights_dir.glob("*.safetensors"))
    index: dict[str, Path] = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            index.update(dict.fromkeys(f.keys(), file))
    return index


class SafetensorsDenseWeights:
    """Dense ``(out, in)`` weights read lazily from safetensors files, verified against the live model."""

    def __init__(self, weights_dir: str | Path, structure: ModelStructure) -> None:
        self._dir = Path(weights_dir)
        self._dtype = {lin.name: lin.module.weight.dtype for lin in structure.linears}
        self._transposed = {lin.name: lin.transposed for lin in structure.linears}
        index = _index(self._dir)
        self._files: dict[str, Path] = {}
        for lin in structure.linears:
            key = f"{lin.name}.weight"
            if key not in index:
                raise DenseWeightsMismatch(f"{key} is not in the safetensors files of {self._dir}")
            self._files[lin.name] = index[key]
            if not torch.equal(self.get(lin.name).view(torch.uint8), lin.weight_matrix().detach().cpu().contiguous().view(torch.uint8)):
                raise DenseWeightsMismatch(f"{key} in {self._dir} differs from the loaded model's weight")

    def get(self, linear_name: str) -> torch.Tensor:
        with safe_open(self._files[linear_name], framework="pt") as f:
            weight = f.get_tensor(f"{linear_name}.weight").to(self._dtype[linear_name])
        return (weight.t() if self._transposed[linear_name] else weight).contiguous()


def dense_weights_for(structure: ModelStructure, weights_dir: Path | None) -> DenseWeights:
    """Lazy file-backed dense weights when the files match the model exactly, else in-memory CPU copies."""
    if weights_dir is not None and any(Path(weights_dir).glob("*.safetensors")):
        try:
            return SafetensorsDenseWeights(weights_dir, structure)
        except DenseWeightsMismatch:
            pass
    return InMemoryDenseWeights(structure)
