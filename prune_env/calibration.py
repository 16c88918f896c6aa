"""Capture decoder-block inputs and replay blocks one at a time (orchestration, no pruning math).

The model is run once on the calibration batches with a forward pre-hook on every decoder block. The hook
records whatever the architecture passes to the block (attention masks, position ids, rotary
``position_embeddings``, per-layer sliding-window masks, ...) as opaque args/kwargs, plus the hidden states
entering the first block. Replaying block ``i`` on any hidden states is then ``block(hidden, *args, **kwargs)``
with block ``i``'s own recorded arguments: nothing depends on keyword names, so new transformers releases
and new architectures keep working. Only references are stored for the per-block arguments (the model
passes the same mask / rotary tensors to every block), so memory stays at one block's activations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .structure import ModelStructure


@dataclass
class BlockCall:
    """The arguments a block received besides its hidden states, and where the hidden states went."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    hidden_in_kwargs: bool

    def run_raw(self, block: nn.Module, hidden: torch.Tensor) -> Any:
        """Call ``block`` on ``hidden`` with the recorded arguments; return whatever the block returns."""
        if self.hidden_in_kwargs:
            return block(*self.args, **{**self.kwargs, "hidden_states": hidden})
        return block(hidden, *self.args, **self.kwargs)

    def run(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Run ``block`` on ``hidden`` with the recorded arguments; return the output hidden states."""
        out = self.run_raw(block, hidden)
        return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class BlockInputs:
    """Hidden states entering the current block (one tensor per batch) and every block's recorded calls."""

    hidden: list[torch.Tensor]
    calls: list[list[BlockCall]] = field(default_factory=list)  # calls[block][batch]

    def run_block(self, index: int, block: nn.Module) -> list[torch.Tensor]:
        """Outputs of ``block`` (block number ``index``) for every batch of the current hidden states."""
        return [call.run(block, h) for call, h in zip(self.calls[index], self.hidden)]


def batches(token_ids: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Split ``[n, seqlen]`` token ids into batches of at most ``batch_size`` rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, token_ids.shape[0], batch_size):
        yield token_ids[start : start + batch_size]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict, bool]:
    if args:
        return args[0], tuple(args[1:]), dict(kwargs), False
    if "hidden_states" in kwargs:
        rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        return kwargs["hidden_states"], (), rest, True
    raise RuntimeError(
        "could not find the hidden states among the decoder block's arguments (neither the first positional "
        f"argument nor 'hidden_states'); keyword arguments seen: {sorted(kwargs)}"
    )


class BlockStandIn(nn.Module):
    """Stands in for a decoder block inside the model's own forward: ``respond(args, kwargs)`` gives the output.

    Attribute reads fall through to the real block, because some models read per-layer attributes in their
    layer loop (e.g. Gemma 3's ``attention_type`` picks the sliding-window mask). The real block is not
    registered as a submodule, so parameters are never seen twice.
    """

    def __init__(self, block: nn.Module, respond) -> None:
        super().__init__()
        object.__setattr__(self, "_real_block", block)
        object.__setattr__(self, "_respond", respond)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._respond(args, kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_real_block"), name)


@contextmanager
def standing_in(blocks: nn.ModuleList, responders: dict[int, Any]) -> Iterator[None]:
    """Temporarily replace ``blocks[i]`` by a :class:`BlockStandIn` for every ``i`` in ``responders``."""
    originals = {i: blocks[i] for i in responders}
    try:
        for i, respond in responders.items():
            blocks[i] = BlockStandIn(originals[i], respond)
        yield
    finally:
        for i, block in originals.items():
            blocks[i] = block


def like_block_output(template: Any, hidden: torch.Tensor) -> Any:
    """``hidden`` shaped like a real block's return value (a tensor, or a tuple starting with the tensor)."""
    if isinstance(template, tuple):
        return (hidden, *template[1:])
    return hidden


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, structure: ModelStructure, token_ids: torch.Tensor, batch_size: int = 8
) -> BlockInputs:
    """Record the inputs of every decoder block for ``token_ids``, batch by batch, at almost no cost.

    The model's own forward runs with every block replaced by a stand-in: block 0's stand-in records its
    arguments and runs the real block once (to learn the block's output format); the others record their
    arguments and pass the hidden states straight through, and the last one stops the forward. So only
    the embeddings, mask and rotary set-up and one block are computed, whatever the depth.
    """
    device = model_device(model)
    num_blocks = structure.num_blocks
    inputs = BlockInputs(hidden=[], calls=[[] for _ in range(num_blocks)])
    template: list[Any] = []
    first_block = structure.blocks[0]

    class _Done(Exception):
        """Raised once the last block's arguments are recorded: the rest of the forward is not needed."""

    def make_responder(index: int):
        def respond(args: tuple, kwargs: dict) -> Any:
            hidden, rest_args, rest_kwargs, in_kwargs = _split_hidden(args, kwargs)
            call = BlockCall(rest_args, rest_kwargs, in_kwargs)
            inputs.calls[index].append(call)
            if index == 0:
                inputs.hidden.append(hidden.detach())
            if index == num_blocks - 1:
                raise _Done
            if not template:
                template.append(call.run_raw(first_block, hidden))
            return like_block_output(template[0], hidden)

        return respond

    with standing_in(structure.blocks, {i: make_responder(i) for i in range(num_blocks)}):
        for batch in batches(token_ids, batch_size):
            with suppress(_Done):
                model(input_ids=batch.to(device), use_cache=False)
    if any(len(c) != len(inputs.hidden) for c in inputs.calls):
        raise RuntimeError(
            "not every decoder block was called once per batch during calibration; the model skips or repeats "
            "blocks, which block-by-block pruning does not support"
        )
    return inputs


def forward_hooks(modules: Sequence[tuple[str, nn.Module]], sink) -> list[torch.utils.hooks.RemovableHandle]:
    """Register forward hooks that call ``sink(name, input_tensor)`` with each module's first input."""

    def make(name: str):
        def hook(_module: nn.Module, args: tuple, _output: Any) -> None:
            sink(name, args[0])

        return hook

    return [module.register_forward_hook(make(name)) for name, module in modules]
