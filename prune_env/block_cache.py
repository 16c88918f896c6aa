"""Exact perplexity after a change to some decoder blocks, re-running only the blocks that changed.

A pruning environment changes the weights of blocks ``>= i`` at each step and needs the perplexity of a fixed
evaluation set afterwards. :class:`BlockCache` keeps, for every evaluation batch, the hidden states entering
each block and leaving the last one. After a change from block ``i`` on, it replays blocks ``i..L-1`` from the
cached inputs of block ``i`` (with each block's own recorded arguments, see :mod:`.calibration`) and then runs
the model's tail: the model's own forward with every block replaced by a stand-in that returns the cached
final hidden states, so the final norm, LM head and any logit post-processing (e.g. Gemma's soft-capping)
are the model's own code, in memory-bounded chunks of positions (:func:`prune_env.perplexity.tail_nll`, which
:func:`prune_env.perplexity.perplexity` uses too). Same batches, same ops, same tensors: the result equals a
full forward bitwise on a deterministic device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .calibration import (
    BlockCall,
    batches,
    capture_block_inputs,
    forward_hooks,
    model_device,
)
from .perplexity import Perplexity, TailReducer, checked, perplexity, tail_nll, tail_reduce
from .structure import ModelStructure

ActivationSink = Callable[[str, torch.Tensor], None]


class BlockCache:
    """Cached block inputs of a fixed evaluation set, for exact perplexity after partial re-runs.

    Memory: ``(L + 1) x n_windows x seqlen x hidden`` elements in the model's dtype, on the model's device
    (the inputs of the ``L`` blocks plus the output of the last one); see :attr:`nbytes`. The recorded block
    arguments (attention masks, position ids, rotary tables) are shared by all blocks and not counted.

    The cache trusts its caller: after changing the weights of block ``i``, pass ``dirty_from=i`` to
    :meth:`perplexity` or call :meth:`invalidate`; otherwise the result is stale.
    """

    def __init__(
        self, model: nn.Module, structure: ModelStructure, token_ids: torch.Tensor, *, batch_size: int = 8,
        budget_bytes: int | None = None,
    ) -> None:
        if token_ids.ndim != 2 or token_ids.shape[1] < 2:
            raise ValueError(f"token_ids must be [n_windows, seqlen >= 2], got shape {tuple(token_ids.shape)}")
        self._model = model
        self._structure = structure
        self._token_ids = token_ids
        self._batch_size = batch_size
        self._budget_bytes = budget_bytes
        device = model_device(model)
        self._batches = [batch.to(device) for batch in batches(token_ids, batch_size)]
        inputs = capture_block_inputs(model, structure, token_ids, batch_size)
        self._calls: list[list[BlockCall]] = inputs.calls  # [block][batch]
        # self._hidden[j][b]: input of block j for batch b; self._hidden[L][b]: output of the last block.
        self._hidden: list[list[torch.Tensor]] = [inputs.hidden] + [[] for _ in range(self.num_blocks)]
        self._template: Any = None  # the real blocks' return format, for like_block_output
        self._dirty = 0
        self._result: Perplexity | None = None
        self._run_blocks(0, None)

    @property
    def num_blocks(self) -> int:
        return self._structure.num_blocks

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached hidden states (each storage counted once)."""
        storages = {}
        for per_block in self._hidden:
            for h in per_block:
                storage = h.untyped_storage()
                storages[(storage.device, storage.data_ptr())] = storage.nbytes()
        return sum(storages.values())

    def invalidate(self, block: int) -> None:
        """Mark blocks ``>= block`` as changed: the next :meth:`perplexity` re-runs them."""
        self._check_block(block, "block")
        self._dirty = min(self._dirty, block)
        self._result = None

    def perplexity(self, dirty_from: int | None = None, *, activation_sink: ActivationSink | None = None) -> Perplexity:
        """Perplexity of the model now, equal to a full forward's, re-running only blocks that changed.

        ``dirty_from=i`` says blocks ``i..L-1`` changed since the last call (``L``: only the tail changed;
        ``0``: re-run everything); ``None`` says nothing changed beyond what :meth:`invalidate` recorded.
        ``activation_sink(linear_name, input)`` is called with the inputs of every prunable linear of the
        blocks that are re-run, so a caller can refresh their activation statistics at no extra cost.
        """
        if dirty_from is not None:
            self.invalidate(dirty_from)
        if self._dirty < self.num_blocks:
            self._run_blocks(self._dirty, activation_sink)
        if self._result is None:
            self._result = self._tail()
        return self._result

    @torch.no_grad()
    def evaluate(self, changed_from: int, reduce_for: Callable[[int, torch.Tensor], TailReducer]) -> torch.Tensor:
        """Per-window sums ``[n_windows]`` (fp64) of a tail reducer for the model *now*, read-only.

        The cached inputs describe the weights the cache was last brought up to date with; ``changed_from=i``
        says blocks ``>= i`` differ from those now (a trial change a caller will revert). Blocks from
        ``min(i, first stale block)`` are replayed batch by batch from the cached inputs without storing
        anything, so the cache stays valid for the committed weights. ``reduce_for(batch_index, token_ids)``
        gives the :data:`prune_env.perplexity.TailReducer` of each batch (e.g. a KL against a reference).
        """
        self._check_block(changed_from, "changed_from")
        start = min(changed_from, self._dirty)
        out: list[torch.Tensor] = []
        for b, (batch, hidden) in enumerate(zip(self._batches, self._hidden[start])):
            for index in range(start, self.num_blocks):
                hidden = self._calls[index][b].run(self._structure.blocks[index], hidden)
            out.append(tail_reduce(self._model, self._structure.blocks, batch, hidden, self._template,
                                   reduce_for(b, batch), budget_bytes=self._budget_bytes))
        return torch.cat(out)

    def refresh(self) -> None:
        """Re-run the blocks marked changed now (no tail), so read-only :meth:`evaluate` calls start late."""
        if self._dirty < self.num_blocks:
            self._run_blocks(self._dirty, None)

    def final_hidden(self) -> list[torch.Tensor]:
        """The cached output of the last block per batch (brought up to date first)."""
        self.refresh()
        return list(self._hidden[self.num_blocks])

    @property
    def template(self) -> Any:
        """The real blocks' return format (for :func:`prune_env.calibration.like_block_output`)."""
        return self._template

    @property
    def token_ids(self) -> torch.Tensor:
        return self._token_ids

    def full_perplexity(self) -> Perplexity:
        """Perplexity from a plain full forward on the same windows and batches (for checks and tests)."""
        return perplexity(self._model, self._token_ids, batch_size=self._batch_size, structure=self._structure,
                          budget_bytes=self._budget_bytes)

    def _check_block(self, block: int, what: str) -> None:
        if isinstance(block, bool) or not isinstance(block, int):
            raise TypeError(f"{what} must be an int block index, got {block!r}")
        if not 0 <= block <= self.num_blocks:
            raise ValueError(
                f"{what} must be a block index in 0..{self.num_blocks} (the model has {self.num_blocks} blocks; "
                f"{self.num_blocks} means only the tail changed), got {block}"
            )

    @torch.no_grad()
    def _run_blocks(self, start: int, sink: ActivationSink | None) -> None:
        """Re-run blocks ``start..L-1`` from the cached inputs of ``start``, refreshing the later entries.

        The cache stays marked dirty from ``start`` until every block ran, so a failure part way leaves it
        consistent (the next call re-runs from ``start`` again).
        """
        self._result = None
        linears = [(lin.name, lin.module) for lin in self._structure.linears if lin.block >= start]
        handles = forward_hooks(linears, sink) if sink is not None else []
        try:
            for index in range(start, self.num_blocks):
                block = self._structure.blocks[index]
                outputs = []
                for call, hidden in zip(self._calls[index], self._hidden[index]):
                    raw = call.run_raw(block, hidden)
                    if self._template is None:
                        self._template = (None, *raw[1:]) if isinstance(raw, tuple) else None
                    outputs.append((raw[0] if isinstance(raw, (tuple, list)) else raw).detach())
                self._hidden[index + 1] = outputs
        finally:
            for handle in handles:
                handle.remove()
        self._dirty = self.num_blocks

    @torch.no_grad()
    def _tail(self) -> Perplexity:
        """NLL from the cached output of the last block through the model's own tail (:func:`tail_nll`, the
        same function :func:`prune_env.perplexity.perplexity` uses, hence bitwise agreement)."""
        final = self._hidden[self.num_blocks]
        total = 0.0
        windows: list[float] = []
        for batch, hidden in zip(self._batches, final):
            nll = tail_nll(self._model, self._structure.blocks, batch, hidden, self._template,
                           budget_bytes=self._budget_bytes)
            total += float(nll.sum())
            windows.extend(nll.tolist())
        return checked(Perplexity(total, self._token_ids.shape[0] * (self._token_ids.shape[1] - 1), tuple(windows)))
