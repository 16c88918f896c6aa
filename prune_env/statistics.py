"""Per-layer calibration statistics accumulated from layer inputs (pure tensor math, fp32).

``LayerStatistics.add(x)`` is fed the inputs of one linear layer, batch by batch; it keeps the squared L2
norm of every input feature (Wanda) and, when asked, the Hessian ``2 X X^T / N`` (SparseGPT). The sums run
in IEEE fp32 whatever the process allows (TF32 off, as in the reference code; the caller's settings are
restored after each batch).
"""

from __future__ import annotations

import torch

from .sparsify.precision import full_fp32_precision


class NonFiniteStatisticsError(ValueError):
    """Calibration activations contained NaN or inf."""


class LayerStatistics:
    """Running input statistics of one linear layer with ``in_features`` inputs."""

    def __init__(self, in_features: int, device: torch.device | str, *, hessian: bool) -> None:
        self.in_features = in_features
        self.tokens = 0
        self.sq_norm = torch.zeros(in_features, dtype=torch.float32, device=device)
        self._xtx = torch.zeros(in_features, in_features, dtype=torch.float32, device=device) if hessian else None

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs shaped ``(..., in_features)``."""
        x = x.detach().reshape(-1, self.in_features).to(self.sq_norm.device, torch.float32)
        with full_fp32_precision():
            self.sq_norm += (x * x).sum(dim=0)
            if self._xtx is not None:
                self._xtx.addmm_(x.t(), x)
        self.tokens += x.shape[0]

    @property
    def act_norm(self) -> torch.Tensor:
        """``||X_j||_2`` per input feature over all calibration tokens seen."""
        return self.sq_norm.sqrt()

    @property
    def hessian(self) -> torch.Tensor:
        """``2 X X^T / N`` as in SparseGPT."""
        if self._xtx is None:
            raise RuntimeError("these statistics were gathered without a Hessian (hessian=False)")
        if self.tokens == 0:
            raise RuntimeError("no calibration inputs were seen for this layer")
        return self._xtx * (2.0 / self.tokens)

    def check_finite(self, name: str) -> None:
        """Raise a clear error if any statistic is NaN or inf (overflowing activations, a broken model)."""
        tensors = [self.sq_norm] + ([self._xtx] if self._xtx is not None else [])
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise NonFiniteStatisticsError(
                f"calibration statistics of {name} contain NaN or inf: the layer inputs overflowed or the model "
                "produces non-finite activations. Check the model in fp32 (--dtype float32) and its dense perplexity."
            )
