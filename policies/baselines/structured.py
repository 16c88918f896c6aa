"""``structured``: ShortGPT-style removal of whole decoder blocks (Men et al., 2024), the structured baseline.

Block influence ``BI_b = 1 - mean over tokens of cos(h_in, h_out)`` on calibration windows of the dense
model (``h_in``/``h_out``: the hidden states entering/leaving block ``b``). Blocks are removed in order of
increasing influence until the removed share of prunable weights reaches the target (within 0.5 points;
with equal blocks that is ``round(target * L)`` blocks when ``target * L`` is whole, else the next block).

Mechanics: in a pre-norm residual block whose linears have no biases (Llama, Qwen, Gemma, SmolLM2),
``h_out = h_in + attn(norm(h_in)) + mlp(norm(...))`` and both branches end in a linear, so zeroing every
linear of the block makes it the identity: the same model as deleting it. That is unit sparsity 1.0,
which the env's action cannot express (``max_unit_sparsity < 1``), so this policy sets it once, outside the
act/step loop (:class:`policies.base.DirectPolicy`), with ``PruningEnv.apply_allocation`` (level 1.0 zeroes a
unit through the checkpoint store, the env re-measures the reward perplexity and saves a checkpoint). It is
scored like every policy: reward-window perplexity for the record and ``evaluate_full()`` at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prune_env.calibration import batches, model_device

from ..base import EnvView, StepOutcome
from .allocation import GRID_EPS

if TYPE_CHECKING:
    from prune_env.env import PruningEnv

TOLERANCE = 0.005  # the global sparsity may fall short of the target by at most half a point


def cosine_sum(h_in: torch.Tensor, h_out: torch.Tensor) -> tuple[float, int]:
    """Sum over tokens of ``cos(h_in, h_out)`` (last dim = hidden) and the token count, in fp32."""
    a, b = h_in.reshape(-1, h_in.shape[-1]).float(), h_out.reshape(-1, h_out.shape[-1]).float()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).sum()), a.shape[0]


def choose_blocks(influence: Mapping[int, float], block_numel: Mapping[int, int], total_numel: int,
                  target: float) -> list[int]:
    """Blocks in order of increasing influence until they hold ``>= target - TOLERANCE`` of the weights."""
    chosen, removed = [], 0
    for block in sorted(influence, key=lambda b: (influence[b], b)):
        if removed / total_numel >= target - TOLERANCE - GRID_EPS:
            break
        chosen.append(block)
        removed += block_numel[block]
    return sorted(chosen)


@torch.no_grad()
def block_influence(env: PruningEnv, token_ids: torch.Tensor) -> dict[int, float]:
    """``{block: 1 - mean cos(input, output)}`` over ``token_ids``, from one forward with hooks on the blocks."""
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}

    def make(index: int):
        def hook(_module, args, kwargs, output) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, (tuple, list)) else output
            s, n = cosine_sum(h_in, h_out)
            sums[index] = sums.get(index, 0.0) + s
            counts[index] = counts.get(index, 0) + n

        return hook

    handles = [block.register_forward_hook(make(i), with_kwargs=True) for i, block in enumerate(env.structure.blocks)]
    try:
        device = model_device(env.model)
        for batch in batches(token_ids, env.config.batch_size):
            env.model(input_ids=batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {i: 1.0 - sums[i] / counts[i] for i in sorted(sums)}


class StructuredPolicy:
    """A :class:`policies.base.DirectPolicy`: removes blocks once; see the module docstring."""

    name = "structured"

    def __init__(self, calib_windows: int | None = None) -> None:
        if calib_windows is not None and calib_windows < 1:
            raise ValueError(f"structured: calib_windows must be >= 1, got {calib_windows}")
        self.calib_windows = calib_windows
        self.influence: dict[int, float] = {}
        self.removed: list[int] = []

    def reset(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        if view.env is None:
            raise ValueError("structured needs view.env (the unwrapped PruningEnv)")

    def apply(self, view: EnvView) -> dict[str, Any]:
        env = view.env
        calib = env.tokens.calib if self.calib_windows is None else env.tokens.calib[: self.calib_windows]
        self.influence = block_influence(env, calib)
        blocks = sorted({b for unit in env.units for b in unit.blocks})
        block_numel = {b: sum(lin.numel for lin in env.structure.linears_in_block(b)) for b in blocks}
        self.removed = choose_blocks({b: self.influence[b] for b in blocks}, block_numel,
                                     sum(block_numel.values()), view.target_sparsity)
        with_bias = [lin.name for b in self.removed for lin in env.structure.linears_in_block(b)
                     if getattr(lin.module, "bias", None) is not None and bool(lin.module.bias.any())]
        info = env.apply_allocation({unit.name: 1.0 for unit in env.units if set(unit.blocks) <= set(self.removed)})
        return {"removed_blocks": self.removed, "changed_units": info["changed_units"], "ppl": info["ppl"],
                "checkpoint": info["checkpoint"], "unit_sparsity": info["unit_sparsity"],
                "block_influence": {str(b): v for b, v in self.influence.items()}, "biased_linears_kept": with_bias}

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        raise RuntimeError("structured acts once through apply() (a DirectPolicy); run it with run_episode")

    def observe(self, outcome: StepOutcome) -> None:
        pass

    def record(self) -> dict[str, Any]:
        return {"removed_blocks": list(self.removed)}

    def summary(self) -> dict[str, Any]:
        return {"removed_blocks": self.removed, "block_influence": {str(b): v for b, v in self.influence.items()}}
