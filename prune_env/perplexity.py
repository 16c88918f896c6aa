"""Perplexity: token-weighted negative log-likelihood over non-overlapping windows, batched and exact.

Every window of ``seqlen`` tokens predicts its ``seqlen - 1`` next tokens; the NLL is summed over all of them
and divided by their count (so it equals the mean of the model's own per-window loss when windows are equal
in length).

Memory: the logits of a batch (``batch x seqlen x vocab`` floats: 200 MB for 4 windows of 256 tokens with a
49k vocabulary) would dwarf everything else, so the loss is computed by :func:`tail_nll`: the decoder blocks run
once, then the model's own tail (final norm, LM head, any logit post-processing such as Gemma's soft-capping)
runs over chunks of positions (``logits_to_keep``) sized to a byte budget. :class:`prune_env.block_cache.BlockCache`
uses the same function on its cached hidden states, so the two agree bit for bit.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .calibration import batches, like_block_output, model_device, standing_in
from .structure import ModelStructure, discover

DEFAULT_LOGITS_BUDGET = {"cpu": 32 * 2**20, "cuda": 1024 * 2**20}  # bytes of fp32 logits per tail chunk


@dataclass(frozen=True)
class Perplexity:
    """Summed NLL (nats) and the number of predicted tokens; ``ppl = exp(nll / tokens)``.

    ``window_nll``: the summed NLL of each window, in window order (each predicts ``tokens / len(window_nll)``
    tokens), for paired per-window statistics such as a bootstrap; empty when not recorded.
    """

    nll: float
    tokens: int
    window_nll: tuple[float, ...] = field(default=(), compare=False, repr=False)

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.mean_nll)


def logits_budget(device: torch.device) -> int:
    """Default bytes of logits per tail chunk on ``device`` (small on CPU, where RAM is shared with the model)."""
    return DEFAULT_LOGITS_BUDGET.get(device.type, DEFAULT_LOGITS_BUDGET["cuda"])


def positions_per_chunk(batch: int, vocab: int, budget_bytes: int) -> int:
    """How many positions of ``batch`` sequences fit ``budget_bytes`` of fp32 logits (at least 1)."""
    return max(1, budget_bytes // (batch * vocab * 4))


def vocab_size(model: nn.Module) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(model.config.vocab_size)


def keeps_logits(model: nn.Module) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (every causal LM of recent transformers does)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def sequence_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed NLL of each row: ``logits [b, t, V]`` against ``targets [b, t]`` -> ``[b]`` (fp64 sums of fp32 losses)."""
    b, t, v = logits.shape
    losses = F.cross_entropy(logits.reshape(b * t, v).float(), targets.reshape(b * t), reduction="none")
    return losses.view(b, t).double().sum(dim=1)


TailReducer = Callable[[torch.Tensor, int, int], torch.Tensor]
"""``reduce(logits [b, chunk, V], start, stop) -> [b]``: a per-sequence sum over the chunk of positions
``start..stop-1`` (position ``p`` predicts token ``p + 1``)."""


@torch.no_grad()
def tail_reduce(
    model: nn.Module,
    blocks: nn.ModuleList,
    token_ids: torch.Tensor,
    final_hidden: torch.Tensor,
    block_output_template: Any,
    reduce: TailReducer,
    *,
    budget_bytes: int | None = None,
) -> torch.Tensor:
    """Per-sequence sums ``[b]`` (fp64) of ``reduce`` over every predicting position of ``token_ids [b, T]``,
    given the output of the last decoder block.

    The model's own forward runs with every block standing in (each returns ``final_hidden``), once per chunk
    of positions, with ``logits_to_keep`` selecting the chunk: only ``chunk x b x vocab`` logits exist at a
    time, and the tail is the model's own code. Models whose forward lacks ``logits_to_keep`` get one chunk.
    """
    b, T = token_ids.shape
    budget = budget_bytes or logits_budget(token_ids.device)
    step = positions_per_chunk(b, vocab_size(model), budget) if keeps_logits(model) else T - 1

    def respond(_args: tuple, _kwargs: dict) -> Any:
        return like_block_output(block_output_template, final_hidden)

    total = torch.zeros(b, dtype=torch.float64, device=token_ids.device)
    with standing_in(blocks, dict.fromkeys(range(len(blocks)), respond)):
        for start in range(0, T - 1, step):
            stop = min(start + step, T - 1)
            logits = _chunk_logits(model, token_ids, start, stop)
            total += reduce(logits, start, stop)
            del logits
    return total


def _chunk_logits(model: nn.Module, token_ids: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Logits of positions ``start..stop-1`` by the model's own forward (its blocks standing in)."""
    T = token_ids.shape[1]
    if stop - start == T - 1:
        return model(input_ids=token_ids, use_cache=False).logits[:, : T - 1]
    keep = torch.arange(start, stop, device=token_ids.device)
    return model(input_ids=token_ids, use_cache=False, logits_to_keep=keep).logits


@torch.no_grad()
def tail_chunk_logits(model: nn.Module, blocks: nn.ModuleList, token_ids: torch.Tensor, final_hidden: torch.Tensor,
                      block_output_template: Any, start: int, stop: int) -> torch.Tensor:
    """Logits ``[b, stop - start, V]`` of positions ``start..stop-1`` given the last block's output (one chunk of
    :func:`tail_reduce`; ``start..stop`` must be a chunk it would use, or the whole ``0..T-1``)."""

    def respond(_args: tuple, _kwargs: dict) -> Any:
        return like_block_output(block_output_template, final_hidden)

    with standing_in(blocks, dict.fromkeys(range(len(blocks)), respond)):
        if not keeps_logits(model) and (start, stop) != (0, token_ids.shape[1] - 1):
            return _chunk_logits(model, token_ids, 0, token_ids.shape[1] - 1)[:, start:stop]
        return _chunk_logits(model, token_ids, start, stop)


def tail_nll(
    model: nn.Module,
    blocks: nn.ModuleList,
    token_ids: torch.Tensor,
    final_hidden: torch.Tensor,
    block_output_template: Any,
    *,
    budget_bytes: int | None = None,
) -> torch.Tensor:
    """Per-sequence NLL ``[b]`` of ``token_ids [b, T]`` given the output of the last decoder block
    (:func:`tail_reduce` with :func:`sequence_nll`)."""

    def nll(logits: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return sequence_nll(logits, token_ids[:, start + 1 : stop + 1])

    return tail_reduce(model, blocks, token_ids, final_hidden, block_output_template, nll, budget_bytes=budget_bytes)


@torch.no_grad()
def _final_hidden(model: nn.Module, structure: ModelStructure, token_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Run the real blocks (the LM head on one position only) and return the last block's raw output."""
    captured: list[Any] = []

    def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
        captured.append(output)

    handle = structure.blocks[structure.num_blocks - 1].register_forward_hook(hook)
    try:
        kwargs = {"logits_to_keep": 1} if keeps_logits(model) else {}
        model(input_ids=token_ids, use_cache=False, **kwargs)
    finally:
        handle.remove()
    raw = captured[-1]
    hidden = raw[0] if isinstance(raw, (tuple, list)) else raw
    return hidden, ((None, *raw[1:]) if isinstance(raw, tuple) else None)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    token_ids: torch.Tensor,
    *,
    batch_size: int = 8,
    progress: bool = False,
    structure: ModelStructure | None = None,
    budget_bytes: int | None = None,
) -> Perplexity:
    """Perplexity of ``model`` on ``token_ids`` (``[n, seqlen]`` non-overlapping windows).

    ``structure`` (found with :func:`prune_env.structure.discover` when omitted) says where the decoder blocks
    are, so the loss can be taken from their output in memory-bounded chunks (see :func:`tail_nll`).
    """
    if token_ids.ndim != 2 or token_ids.shape[1] < 2:
        raise ValueError(f"token_ids must be [n_windows, seqlen >= 2], got shape {tuple(token_ids.shape)}")
    structure = structure or discover(model)
    device = model_device(model)
    total = 0.0
    windows: list[float] = []
    bar = tqdm(total=token_ids.shape[0], desc="perplexity", unit="window", disable=not progress)
    for batch in batches(token_ids, batch_size):
        batch = batch.to(device)
        hidden, template = _final_hidden(model, structure, batch)
        nll = tail_nll(model, structure.blocks, batch, hidden, template, budget_bytes=budget_bytes)
        total += float(nll.sum())
        windows.extend(nll.tolist())
        bar.update(batch.shape[0])
    bar.close()
    return checked(Perplexity(total, token_ids.shape[0] * (token_ids.shape[1] - 1), tuple(windows)))


def checked(result: Perplexity) -> Perplexity:
    """``result``, or ``FloatingPointError`` when the model produced NaN/inf log-likelihoods."""
    if not math.isfinite(result.nll):
        raise FloatingPointError("the model produced non-finite log-likelihoods (NaN/inf logits)")
    return result
