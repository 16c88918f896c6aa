"""Copy-on-write checkpoints of prunable units, so the pruning environment can roll back exactly.

A *unit* is a named group of prunable linears (a decoder block, or one linear) that a step re-prunes as a
whole. The store gives every unit a version; a checkpoint is ``{unit: version}`` plus metadata, so ``save()``
copies no weights. A unit's weights are copied lazily, just before they are overwritten
(:meth:`CheckpointStore.about_to_change`), and only if a checkpoint refers to that state and no copy exists
yet. Memory therefore grows with what changed, never with the model, and restoring writes only the units
whose version differs from the checkpoint's.

Each linear's state is kept in one of two forms:

* ``mask``: with a :class:`DenseWeights` provider, a state equal to the dense weight with some entries set to
  ``+0.0`` (magnitude, Wanda) is kept as a bit-packed mask of those entries: ``ceil(numel / 8)`` bytes, and
  0 bytes for a state identical to the dense weight;
* ``full``: anything else (SparseGPT updates the kept weights) is a copy in the model's dtype on
  ``storage_device``.

Both restore bit for bit: the mask form is chosen only after checking, on the raw bits, that it reproduces
the state (so ``-0.0`` and NaNs are never silently changed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .structure import ModelStructure, PrunableLinear

__all__ = [
    "GRANULARITIES",
    "LAST",
    "CheckpointKeyError",
    "CheckpointStore",
    "DenseWeights",
    "InMemoryDenseWeights",
    "Unit",
    "make_units",
]

GRANULARITIES = ("block", "linear")
LAST = "last"
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class CheckpointKeyError(KeyError):
    """An unknown checkpoint id or unit name (a ``KeyError`` whose message is printed without quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# --------------------------------------------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    """A named group of prunable linears that is pruned, checkpointed and restored as a whole."""

    name: str
    linears: tuple[PrunableLinear, ...]

    def __post_init__(self) -> None:
        if not self.linears:
            raise ValueError(f"unit {self.name!r} has no linears")

    @property
    def numel(self) -> int:
        return sum(lin.numel for lin in self.linears)

    @property
    def blocks(self) -> tuple[int, ...]:
        """Indices of the decoder blocks the unit's linears live in, ascending."""
        return tuple(sorted({lin.block for lin in self.linears}))


def make_units(structure: ModelStructure, granularity: str) -> list[Unit]:
    """Split the prunable linears into units: one per decoder block (``"block"``) or per linear (``"linear"``).

    Block units are named ``structure.block_name(i)``; blocks without prunable linears get no unit.
    """
    if granularity == "block":
        units = []
        for index in range(structure.num_blocks):
            linears = structure.linears_in_block(index)
            if linears:
                units.append(Unit(structure.block_name(index), tuple(linears)))
        return units
    if granularity == "linear":
        return [Unit(lin.name, (lin,)) for lin in structure.linears]
    raise ValueError(f"unknown granularity {granularity!r}; valid granularities: {', '.join(GRANULARITIES)}")


# ------------------------------------------------------------------------------------------ dense weights


class DenseWeights(Protocol):
    """Source of the original (unpruned) weights; must return the same values on every call."""

    def get(self, linear_name: str) -> torch.Tensor:
        """The dense ``(out, in)`` weight of the prunable linear ``linear_name``."""
        ...


class InMemoryDenseWeights:
    """CPU copies of every prunable linear's current weight, taken at construction (call it on the dense model)."""

    def __init__(self, structure: ModelStructure) -> None:
        self._weights = {
            lin.name: lin.weight_matrix().detach().to("cpu", copy=True).contiguous() for lin in structure.linears
        }

    def get(self, linear_name: str) -> torch.Tensor:
        try:
            return self._weights[linear_name]
        except KeyError:
            raise CheckpointKeyError(f"no dense weight for linear {linear_name!r}") from None

    @property
    def nbytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in self._weights.values())


# ------------------------------------------------------------------------------------- stored weight states


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of ``t`` as an integer tensor of the same shape (a view, no copy)."""
    return t.view(_INT_OF_SIZE[t.element_size()])


def _dense_for(lin: PrunableLinear, dense: DenseWeights, like: torch.Tensor) -> torch.Tensor:
    """The dense ``(out, in)`` weight of ``lin`` on the device and in the dtype of ``like``."""
    weight = dense.get(lin.name)
    if tuple(weight.shape) != lin.shape:
        raise ValueError(f"dense weight of {lin.name!r} has shape {tuple(weight.shape)}, the layer {lin.shape}")
    return weight.to(device=like.device, dtype=like.dtype)


@dataclass(frozen=True)
class _FullState:
    """A copy of a linear's weight in module layout (``Conv1D``: ``(in, out)``) and the model's dtype."""

    tensor: torch.Tensor

    form = "full"

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()

    def write(self, lin: PrunableLinear, dense: DenseWeights | None) -> None:
        del dense
        with torch.no_grad():
            lin.module.weight.copy_(self.tensor)


@dataclass(frozen=True)
class _MaskState:
    """The dense weight with the entries of a packed ``(out, in)`` mask set to ``+0.0``; empty = the dense weight."""

    packed: np.ndarray
    shape: tuple[int, int]

    form = "mask"

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes)

    def write(self, lin: PrunableLinear, dense: DenseWeights | None) -> None:
        assert dense is not None, "a mask state is only ever created with a dense provider"
        weight = _dense_for(lin, dense, lin.module.weight)
        if self.packed.size:
            bits = np.unpackbits(self.packed, count=self.shape[0] * self.shape[1]).view(bool)
            weight = weight.masked_fill(torch.from_numpy(bits).reshape(self.shape).to(weight.device), 0)
        lin.set_weight_matrix(weight)


_State = _FullState | _MaskState


def _as_mask(lin: PrunableLinear, dense: DenseWeights) -> _MaskState | None:
    """The mask form of ``lin``'s current weight, or None if it is not the dense weight with entries zeroed."""
    current = lin.weight_matrix().detach()
    current_bits, dense_bits = _bits(current), _bits(_dense_for(lin, dense, current))
    changed = current_bits != dense_bits
    if not torch.equal(current_bits, dense_bits.masked_fill(changed, 0)):  # kept weights were updated
        return None
    packed = np.packbits(changed.cpu().numpy()) if torch.any(changed) else np.empty(0, dtype=np.uint8)
    return _MaskState(packed, lin.shape)


def _capture(lin: PrunableLinear, dense: DenseWeights | None, storage_device: torch.device) -> _State:
    """Store ``lin``'s current weight: as a mask when that is exact, else as a full copy."""
    mask = _as_mask(lin, dense) if dense is not None else None
    if mask is not None:
        return mask
    return _FullState(lin.module.weight.detach().to(storage_device, copy=True))


@dataclass
class _Copy:
    """The stored state of one unit at one version; ``charged_to`` = the checkpoint whose step paid for it."""

    states: tuple[_State, ...]
    charged_to: int | None = None

    @property
    def nbytes(self) -> int:
        return sum(state.nbytes for state in self.states)


@dataclass(frozen=True)
class _Checkpoint:
    versions: dict[str, int]
    metadata: dict[str, Any]


# ------------------------------------------------------------------------------------------------- store


class CheckpointStore:
    """Copy-on-write checkpoints of a model's units; see the module docstring.

    Protocol: ``save()`` once before the first change (the initial state), then for every unit a step
    rewrites: ``about_to_change(name)``, write the weights, ``mark_changed(name)`` (or ``with changing(name):``);
    ``save()`` after an accepted step, ``restore(id)`` to roll back.

    Versions come from one global counter, so versions of an abandoned branch never collide with new ones.
    Checkpoint ids are 0, 1, 2, ... and never reused, also after :meth:`discard_after`.
    """

    def __init__(
        self,
        units: Sequence[Unit],
        *,
        dense: DenseWeights | None = None,
        storage_device: str | torch.device = "cpu",
    ) -> None:
        if not units:
            raise ValueError("CheckpointStore needs at least one unit")
        self._units: dict[str, Unit] = {}
        for unit in units:
            if unit.name in self._units:
                raise ValueError(f"duplicate unit name {unit.name!r}")
            self._units[unit.name] = unit
        self._dense = dense
        self._storage_device = torch.device(storage_device)
        self._current = dict.fromkeys(self._units, 0)
        self._next_version = 1
        self._next_id = 0
        self._checkpoints: dict[int, _Checkpoint] = {}
        self._refs: Counter[tuple[str, int]] = Counter()  # (unit, version) -> checkpoints referring to it
        self._copies: dict[tuple[str, int], _Copy] = {}
        self._open: set[str] = set()  # announced with about_to_change, not yet marked
        self._last: int | None = None

    # ---------------------------------------------------------------------------------------- queries

    @property
    def units(self) -> tuple[Unit, ...]:
        return tuple(self._units.values())

    @property
    def last(self) -> int | None:
        """The most recently saved or restored-to checkpoint (None before the first save)."""
        return self._last

    def unit(self, name: str) -> Unit:
        try:
            return self._units[name]
        except KeyError:
            known = list(self._units)
            raise CheckpointKeyError(
                f"unknown unit {name!r}; {len(known)} units, e.g. {', '.join(map(repr, known[:3]))}"
            ) from None

    def version(self, unit_name: str) -> int:
        """The unit's current version (0 = its state when the store was created)."""
        return self._current[self.unit(unit_name).name]

    def ids(self) -> list[int]:
        return sorted(self._checkpoints)

    def metadata(self, checkpoint_id: int | str) -> dict[str, Any]:
        return dict(self._checkpoints[self._resolve(checkpoint_id)].metadata)

    def nbytes(self, checkpoint_id: int | str | None = None) -> int:
        """Bytes of weight copies charged to a checkpoint (what its step cost); None = all bytes held.

        Copies taken between two saves are charged to the later one: they were needed to make that step
        undoable. Copies taken since the last save (or while restoring) count in the total only until then.
        """
        return sum(self.nbytes_by_form(checkpoint_id).values())

    def nbytes_by_form(self, checkpoint_id: int | str | None = None) -> dict[str, int]:
        """Like :meth:`nbytes`, split into ``{"mask": bytes, "full": bytes}``."""
        owner = None if checkpoint_id is None else self._resolve(checkpoint_id)
        totals = {"mask": 0, "full": 0}
        for copy in self._copies.values():
            if owner is None or copy.charged_to == owner:
                for state in copy.states:
                    totals[state.form] += state.nbytes
        return totals

    # ---------------------------------------------------------------------------------------- changes

    def about_to_change(self, unit_name: str) -> None:
        """Call before writing new weights into a unit: keeps its current state if a checkpoint needs it."""
        unit = self.unit(unit_name)
        self._open.add(unit.name)
        self._preserve(unit)

    def mark_changed(self, unit_name: str) -> None:
        """Call after writing new weights into a unit: gives it a fresh version."""
        unit = self.unit(unit_name)
        announced = unit.name in self._open
        lost = not announced and self._needs_copy(unit.name)
        self._bump(unit.name)
        if lost:
            raise RuntimeError(
                f"unit {unit.name!r} was changed without about_to_change(): the state a checkpoint refers to "
                "was not copied, so restoring that checkpoint will fail"
            )

    @contextmanager
    def changing(self, unit_name: str) -> Iterator[Unit]:
        """``about_to_change`` on entry and ``mark_changed`` on exit (also on error: a write may have begun)."""
        self.about_to_change(unit_name)
        try:
            yield self._units[unit_name]
        finally:
            self.mark_changed(unit_name)

    # --------------------------------------------------------------------------------- save / restore

    def save(self, metadata: dict[str, Any] | None = None) -> int:
        """Record every unit's current version plus ``metadata``; copies no weights. Returns the new id."""
        if self._open:
            raise RuntimeError(
                f"units {sorted(self._open)} were announced with about_to_change() but not marked; "
                "call mark_changed() after writing their weights"
            )
        checkpoint_id = self._next_id
        self._next_id += 1
        versions = dict(self._current)
        self._checkpoints[checkpoint_id] = _Checkpoint(versions, dict(metadata or {}))
        self._refs.update(versions.items())
        for copy in self._copies.values():
            if copy.charged_to is None:
                copy.charged_to = checkpoint_id
        self._last = checkpoint_id
        return checkpoint_id

    def restore(self, checkpoint_id: int | str) -> tuple[list[str], dict[str, Any]]:
        """Write back exactly the units whose version differs from the checkpoint's; ``"last"`` allowed.

        Returns the names of the units written (in unit order) and a copy of the checkpoint's metadata.
        Units announced but not marked are treated as changed. Afterwards ``"last"`` is this checkpoint.
        """
        target_id = self._resolve(checkpoint_id)
        target = self._checkpoints[target_id]
        for name in sorted(self._open):
            self._bump(name)  # may be half written: rewrite it
        differing = [u for u in self._units.values() if self._current[u.name] != target.versions[u.name]]
        missing = [u.name for u in differing if (u.name, target.versions[u.name]) not in self._copies]
        if missing:
            raise RuntimeError(f"checkpoint {target_id} cannot be restored: no stored state for units {missing}")
        for unit in differing:
            self._preserve(unit)  # keeps the state a later checkpoint refers to (restoring forward again)
            version = target.versions[unit.name]
            for lin, state in zip(unit.linears, self._copies[(unit.name, version)].states):
                state.write(lin, self._dense)
            self._current[unit.name] = version
        self._last = target_id
        return [u.name for u in differing], dict(target.metadata)

    def discard_after(self, checkpoint_id: int | str) -> None:
        """Drop every checkpoint newer than ``checkpoint_id`` and free copies nothing refers to any more.

        A copy is freed when no remaining checkpoint refers to its version and it is not the unit's current
        version. If ``"last"`` was dropped it becomes ``checkpoint_id``.
        """
        keep_id = self._resolve(checkpoint_id)
        for dropped in [i for i in self._checkpoints if i > keep_id]:
            self._refs.subtract(self._checkpoints.pop(dropped).versions.items())
        self._refs = +self._refs  # drop zero counts
        if self._last not in self._checkpoints:
            self._last = keep_id
        for key in [k for k in self._copies if self._refs[k] == 0 and self._current[k[0]] != k[1]]:
            del self._copies[key]

    # ---------------------------------------------------------------------------------------- helpers

    def _resolve(self, checkpoint_id: int | str) -> int:
        if checkpoint_id == LAST:
            if self._last is None:
                raise CheckpointKeyError("no checkpoint yet: call save() before restoring 'last'")
            return self._last
        resolved = checkpoint_id
        if isinstance(resolved, str) and resolved.strip().isdigit():
            resolved = int(resolved)
        if isinstance(resolved, bool) or not isinstance(resolved, int) or resolved not in self._checkpoints:
            raise CheckpointKeyError(f"unknown checkpoint {checkpoint_id!r}; known ids: {self.ids()} or {LAST!r}")
        return resolved

    def _needs_copy(self, name: str) -> bool:
        key = (name, self._current[name])
        return self._refs[key] > 0 and key not in self._copies

    def _preserve(self, unit: Unit) -> None:
        """Copy the unit's current state if a checkpoint refers to it and it is not stored yet."""
        if self._needs_copy(unit.name):
            states = tuple(_capture(lin, self._dense, self._storage_device) for lin in unit.linears)
            self._copies[(unit.name, self._current[unit.name])] = _Copy(states)

    def _bump(self, name: str) -> None:
        self._current[name] = self._next_version
        self._next_version += 1
        self._open.discard(name)
