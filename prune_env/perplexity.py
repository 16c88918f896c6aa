"""Perplexity: token-weighted negative log-likelihood over non-overlapping windows, batched and exact.

Every window of ``seqlen`` tokens predicts its ``seqlen - 1`` next tokens; the NLL is summed over all of them
and divided by their count (so it equals the mean of the model's own per-window loss when windows are equal
in length). Logits are turned into losses one sequence at a time so large vocabularies stay affordable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .calibration import batches, model_device


@dataclass(frozen=True)
class Perplexity:
    """Summed NLL (nats) and the number of predicted tokens; ``ppl = exp(nll / tokens)``."""

    nll: float
    tokens: int

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.mean_nll)


def sequence_nll(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of each sequence: ``logits [b, T, V]``, ``token_ids [b, T]`` -> ``[b]`` (fp32)."""
    return torch.stack(
        [F.cross_entropy(lg[:-1].float(), ids[1:], reduction="sum") for lg, ids in zip(logits, token_ids)]
    )


@torch.no_grad()
def perplexity(model: nn.Module, token_ids: torch.Tensor, *, batch_size: int = 8, progress: bool = False) -> Perplexity:
    """Perplexity of ``model`` on ``token_ids`` (``[n, seqlen]`` non-overlapping windows)."""
    if token_ids.ndim != 2 or token_ids.shape[1] < 2:
        raise ValueError(f"token_ids must be [n_windows, seqlen >= 2], got shape {tuple(token_ids.shape)}")
    device = model_device(model)
    total = 0.0
    bar = tqdm(total=token_ids.shape[0], desc="perplexity", unit="window", disable=not progress)
    for batch in batches(token_ids, batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        total += float(sequence_nll(logits, batch).sum())
        bar.update(batch.shape[0])
    bar.close()
    nll = Perplexity(total, token_ids.shape[0] * (token_ids.shape[1] - 1))
    if not math.isfinite(nll.nll):
        raise FloatingPointError("the model produced non-finite log-likelihoods (NaN/inf logits)")
    return nll
