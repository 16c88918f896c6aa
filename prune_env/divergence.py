"""KL divergence of a model's next-token distribution from a reference model's (EvoPress's search fitness).

``KL(p_ref || p_model)`` per predicted token, summed over a window's positions: the dense model is the
reference, so the fitness of an allocation is how far pruning moved the distribution, on every token of the
vocabulary, not only on the observed next token (as perplexity is).

:class:`DenseReference` keeps the reference of a fixed set of windows. Two forms, exact both ways:

* ``logprobs``: the reference log-softmax itself, ``n x (T - 1) x vocab`` fp32 values (401 MB for 8 windows of
  256 tokens with a 49k vocabulary), and its ``exp`` (the reference probabilities, as many bytes again) when
  both fit ``budget_bytes``, so an evaluation does not recompute them;
* ``hidden``: the dense model's last-block output, ``n x T x hidden`` values; the reference log-probabilities
  of a chunk are recomputed through the model's own (unpruned) tail when needed, which costs a second LM-head
  pass per evaluation. Chosen when the log-probabilities would pass ``budget_bytes``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .perplexity import tail_chunk_logits, tail_reduce, vocab_size

DEFAULT_REFERENCE_BUDGET = {"cpu": 2 * 2**30, "cuda": 16 * 2**30}  # bytes of stored reference log-probs (+ probs)


def sequence_kl(logits: torch.Tensor, ref_logprobs: torch.Tensor, ref_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row sum over positions of ``KL(ref || model)``: ``logits [b, t, V]`` (the model's) and
    ``ref_logprobs [b, t, V]`` (the reference's log-softmax) -> ``[b]`` fp64 sums of fp32 per-token KLs.

    ``ref_probs``: ``ref_logprobs.exp()`` if the caller holds it (saves recomputing it). The difference and the
    product are written into the model's own log-softmax buffer: the same elementwise ops on the same values as
    ``(p * (log_p - log_q)).sum(-1)``, so the result is bitwise the same with no temporaries (on 2 CPU cores,
    a window of 256 tokens and a 49k vocabulary: 53 ms instead of 160, against 252 ms for the LM head itself;
    ``scripts/bench_kl.py``).
    """
    log_p = ref_logprobs.float()
    p = log_p.exp() if ref_probs is None else ref_probs.float()
    diff = F.log_softmax(logits.float(), dim=-1)  # log_q, a fresh tensor: safe to overwrite
    torch.sub(log_p, diff, out=diff)
    diff.mul_(p)
    return diff.sum(dim=-1).double().sum(dim=1)


class DenseReference:
    """The reference next-token distributions of ``token_ids`` (``[n, T]``), captured from the model as it is
    when constructed (the dense model), in one of the two forms of the module docstring.

    ``final_hidden`` holds the last block's output per window and ``template`` the blocks' return format
    (what :class:`prune_env.block_cache.BlockCache` records); the reference is derived from them.
    """

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, token_ids: torch.Tensor,
                 final_hidden: list[torch.Tensor], template: Any, *, batch_size: int,
                 budget_bytes: int | None = None) -> None:
        self._model, self._blocks, self._token_ids, self._template = model, blocks, token_ids, template
        self._batch_size = batch_size
        n, T = token_ids.shape
        logprob_bytes = n * (T - 1) * vocab_size(model) * 4
        device = token_ids.device if final_hidden == [] else final_hidden[0].device
        budget = budget_bytes if budget_bytes is not None else DEFAULT_REFERENCE_BUDGET.get(
            device.type, DEFAULT_REFERENCE_BUDGET["cuda"])
        self.form = "logprobs" if logprob_bytes <= budget else "hidden"
        self._hidden = [h.clone() for h in final_hidden]
        self._logprobs: list[torch.Tensor] | None = None
        self._probs: list[torch.Tensor] | None = None
        if self.form == "logprobs":
            self._logprobs = [self._compute_logprobs(b) for b in range(len(final_hidden))]
            self._hidden = []
            if 2 * logprob_bytes <= budget:
                self._probs = [lp.exp() for lp in self._logprobs]

    @property
    def nbytes(self) -> int:
        held = [*(self._logprobs or ()), *(self._probs or ())] or self._hidden
        return sum(t.numel() * t.element_size() for t in held)

    def chunk(self, batch: int, start: int, stop: int) -> torch.Tensor:
        """Reference log-probabilities ``[b, stop - start, V]`` of batch ``batch``, positions ``start..stop-1``."""
        if self._logprobs is not None:
            return self._logprobs[batch][:, start:stop]
        logits = tail_chunk_logits(self._model, self._blocks, self._batch_ids(batch), self._hidden[batch],
                                   self._template, start, stop)
        return F.log_softmax(logits.float(), dim=-1)

    def kl_reducer(self, batch: int, rows: int | None = None) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
        """A :data:`prune_env.perplexity.TailReducer` giving ``KL(ref || model)`` sums of batch ``batch`` (its
        first ``rows`` windows: a prefix of the windows batched the same way)."""

        def reduce(logits: torch.Tensor, start: int, stop: int) -> torch.Tensor:
            probs = None if self._probs is None else self._probs[batch][: rows or None, start:stop]
            return sequence_kl(logits, self.chunk(batch, start, stop)[: rows or None], probs)

        return reduce

    def _batch_ids(self, batch: int) -> torch.Tensor:
        start = batch * self._batch_size
        return self._token_ids[start: start + self._batch_size]

    def _compute_logprobs(self, batch: int) -> torch.Tensor:
        ids = self._batch_ids(batch)
        parts: list[torch.Tensor] = []

        def keep(logits: torch.Tensor, _s: int, _e: int) -> torch.Tensor:
            parts.append(F.log_softmax(logits.float(), dim=-1))
            return torch.zeros(logits.shape[0], dtype=torch.float64, device=logits.device)

        tail_reduce(self._model, self._blocks, ids, self._hidden[batch], self._template, keep)
        return torch.cat(parts, dim=1)
