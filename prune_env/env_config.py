"""Configuration of :class:`prune_env.env.PruningEnv`: one validated dataclass, errors that say the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .models import DEFAULT_MODEL
from .sparsify import METHODS, check_ratio

GRANULARITIES = ("block", "linear")
# Test windows by default: the smallest count for which the paired bootstrap 95% interval of the per-window
# log-perplexity difference between uniform-wanda and greedy-sensitivity at 50% excludes 0 on the default
# preset and text (scripts/bench_protocol.py; docs/BENCHMARKS.md, "Evaluation protocol").
DEFAULT_TEST_WINDOWS = 32


@dataclass
class PruningEnvConfig:
    """Everything that defines a pruning episode. Sizes left ``None`` get device-dependent defaults."""

    model: str = DEFAULT_MODEL          # preset, hub id or local directory (never a model object)
    method: str = "wanda"               # kernel used to (re-)prune units: wanda, sparsegpt, magnitude
    granularity: str = "block"          # block: one sparsity per decoder block; linear: one per prunable linear
    target_sparsity: float = 0.5        # global sparsity over all prunable linears that ends the episode
    step_size: float = 0.05             # action level j adds j * step_size to a unit's sparsity
    n_levels: int = 4                   # levels per unit: 0 (leave it) .. n_levels - 1
    max_unit_sparsity: float = 0.95     # cap per unit
    max_steps: int = 40                 # truncation
    text: str = "wiki"                  # calibration / validation / test text source (prune_env.text.load_text)
    seqlen: int | None = None           # tokens per window (default 256 on CPU, 2048 on GPU)
    calib_samples: int = 32             # CALIBRATION windows: the (dense, one-shot) pruning statistics, gradients
    reward_eval_samples: int = 8        # VALIDATION windows: reward, rollbacks, search fitness, observation
    final_eval_samples: int | None = DEFAULT_TEST_WINDOWS  # TEST windows for evaluate_full(); None: the whole
    #                                     test range (hf:wikitext2: the whole test split, the literature's protocol)
    ood_text: str | None = "lee"        # second, out-of-domain test text for evaluate_ood(); None / "none": off
    ood_eval_samples: int | None = None  # its windows (None: as many as fit, at most 32)
    gradient_samples: int = 4           # windows (one backward each) for the gradient profile
    gradient_every: int = 5             # recompute the gradient profile every k steps (0: only at reset)
    progress_weight: float = 1.0        # reward: weight of the progress toward the target
    ppl_weight: float = 1.0             # reward: weight of the increase in log perplexity
    rollback_threshold: float | None = None  # relative perplexity increase that triggers AutoRollback
    rollback_penalty: float = 1.0       # reward penalty of a rollback (AutoRollback)
    rollback_keep_final_step: bool = True  # AutoRollback keeps a last allowed step that reaches the target
    batch_size: int = 8
    device: str | None = None
    dtype: str | None = None
    seed: int = 0
    use_block_cache: bool = True        # False: every evaluation re-runs all blocks (a baseline for benchmarks)
    info_timings: bool = False          # also put timings in info (env.last_timings always has them); off by
    #                                     default so infos are deterministic (gymnasium's check_env)
    progress: bool = False              # progress bars while setting up

    def validate(self) -> PruningEnvConfig:
        """Raise ``ValueError`` naming the bad field and the fix; return self."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        check_ratio(self.target_sparsity, "target_sparsity")
        if self.target_sparsity <= 0:
            raise ValueError("target_sparsity must be > 0 (the episode ends when it is reached), e.g. 0.5")
        check_ratio(self.max_unit_sparsity, "max_unit_sparsity")
        if self.max_unit_sparsity < self.target_sparsity:
            raise ValueError(f"max_unit_sparsity ({self.max_unit_sparsity}) must be >= target_sparsity "
                             f"({self.target_sparsity}), or the target cannot be reached")
        if not 0 < self.step_size <= 1:
            raise ValueError(f"step_size must be in (0, 1], got {self.step_size}")
        if self.n_levels < 2:
            raise ValueError(f"n_levels must be >= 2 (level 0 = leave a unit, 1.. = prune more), got {self.n_levels}")
        for name in ("max_steps", "calib_samples", "reward_eval_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("final_eval_samples", "ood_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, or None (final: the whole test range; ood: as many as "
                                 f"fit, at most 32), got {getattr(self, name)}")
        if self.gradient_samples < 0 or self.gradient_every < 0:
            raise ValueError("gradient_samples and gradient_every must be >= 0 (0 turns the gradient profile off)")
        if self.seqlen is not None and self.seqlen < 2:
            raise ValueError(f"seqlen must be >= 2, got {self.seqlen}")
        if self.rollback_threshold is not None and self.rollback_threshold <= 0:
            raise ValueError(f"rollback_threshold must be > 0 (e.g. 0.1 = 10% perplexity increase), got {self.rollback_threshold}")
        return self

    @classmethod
    def from_kwargs(cls, **kwargs) -> PruningEnvConfig:
        """Build from keyword arguments (as ``gymnasium.make`` passes them), rejecting unknown names."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown PruningEnv setting(s) {unknown}; known settings: {', '.join(sorted(known))}")
        return cls(**kwargs).validate()

    def as_dict(self) -> dict:
        return asdict(self)
