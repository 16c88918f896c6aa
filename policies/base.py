"""The policy interface shared by LLM agents and heuristic baselines, and what a policy may know of the env.

A policy is driven by :func:`policies.runner.run_episode`::

    policy.reset(view, obs, info)           # once, after env.reset()
    loop:
        action = policy.act(obs, info)      # MultiDiscrete levels, one per unit
        obs, reward, term, trunc, info = env.step(action)
        policy.observe(StepOutcome(...))    # what happened, rollbacks included

Policies never hold the env itself: they get an :class:`EnvView`, the static facts of the episode (unit
names and sizes, step size, levels, cap, target) plus a handle on the unwrapped env for the few baselines
that must read model weights or activations (OWL, structured). The runner owns stepping, logging and
rollbacks, so every policy is scored by the same loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from prune_env.env import PruningEnv


@dataclass(frozen=True)
class EnvView:
    """The static facts of an episode a policy plans with."""

    unit_names: tuple[str, ...]
    unit_numel: tuple[int, ...]     # prunable weights per unit (global sparsity is the numel-weighted mean)
    n_levels: int                   # action levels per unit: 0 .. n_levels - 1
    step_size: float                # level j adds j * step_size to a unit's sparsity
    max_unit_sparsity: float
    target_sparsity: float
    max_steps: int
    method: str                     # the env's pruning kernel (wanda, sparsegpt, magnitude)
    granularity: str                # block or linear
    rollback_threshold: float | None
    env: PruningEnv | None = field(default=None, repr=False, compare=False)  # unwrapped env, read-only use

    @classmethod
    def of(cls, env: Any) -> EnvView:
        """The view of a (possibly wrapped) PruningEnv."""
        raw = env.unwrapped
        cfg = raw.config
        return cls(
            unit_names=tuple(raw.unit_names),
            unit_numel=tuple(int(u.numel) for u in raw.units),
            n_levels=cfg.n_levels,
            step_size=cfg.step_size,
            max_unit_sparsity=cfg.max_unit_sparsity,
            target_sparsity=cfg.target_sparsity,
            max_steps=cfg.max_steps,
            method=cfg.method,
            granularity=cfg.granularity,
            rollback_threshold=_rollback_threshold(env, cfg.rollback_threshold),
            env=raw,
        )

    @property
    def n_units(self) -> int:
        return len(self.unit_names)

    def global_sparsity(self, ratios: np.ndarray) -> float:
        """The numel-weighted mean of per-unit sparsities (what the env compares with the target)."""
        numel = np.asarray(self.unit_numel, dtype=np.float64)
        return float((np.asarray(ratios, dtype=np.float64) * numel).sum() / numel.sum())


def _rollback_threshold(env: Any, configured: float | None) -> float | None:
    """The threshold of an AutoRollback wrapper around ``env`` (a shared env may be wrapped per policy)."""
    from prune_env.wrappers import AutoRollback

    layer = env
    while layer is not None:
        if isinstance(layer, AutoRollback):
            return layer.max_ppl_increase
        layer = getattr(layer, "env", None)
    return configured


@dataclass(frozen=True)
class StepOutcome:
    """What a policy learns after one env step (after AutoRollback, if the env has it)."""

    step: int
    action: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    obs: dict[str, np.ndarray]
    info: dict[str, Any]

    @property
    def rolled_back(self) -> bool:
        return bool(self.info.get("rolled_back", False))


@dataclass(frozen=True)
class Restore:
    """What :meth:`Policy.act` may return instead of levels: restore a checkpoint of this episode.

    For search policies that evaluate candidates through the env and backtrack. A restore is no env step and
    no perplexity evaluation; ``final=True`` ends the episode on the restored state.
    """

    checkpoint: int
    final: bool = False


@runtime_checkable
class Backtracking(Protocol):
    """A policy that may go on after a step reached the target (it then returns :class:`Restore` from act)."""

    def wants_more(self) -> bool:
        """Asked after a terminated step: True to keep acting (the next act() must return a Restore)."""


@runtime_checkable
class Recalling(Protocol):
    """A policy whose memory of a step includes its own reasoning (the agent's rationale and reflection).

    On a resume the runner replays recorded steps without asking the policy to act; it calls :meth:`recall`
    with the step's recorded extras (what :meth:`Policy.record` returned then) right before :meth:`Policy.observe`,
    so the resumed policy remembers why it took each step, not only what happened."""

    def recall(self, extras: dict[str, Any]) -> None:
        """The recorded extras of the step about to be observed again."""


@runtime_checkable
class DirectPolicy(Protocol):
    """A policy that changes the model outside the per-unit action (e.g. whole-block removal at sparsity 1.0,
    which the env's cap forbids). The runner calls :meth:`apply` once instead of the act/step loop; the
    change must go through the env (``view.env.apply_allocation``, or ``with view.env.store.changing(unit)``)
    so checkpoints can restore it."""

    def apply(self, view: EnvView) -> dict[str, Any]:
        """Change the model; return the record of what was done: ``ppl`` on the reward windows, and
        ``unit_sparsity`` / ``checkpoint`` when known (as in a step's info)."""


@runtime_checkable
class Progressing(Protocol):
    """A direct policy that works for long inside :meth:`DirectPolicy.apply` (a search): the runner gives it a
    ``write(entry)`` that appends ``{"kind": "search", **entry}`` to the run's steps.jsonl, flushed, so the run
    directory keeps its progress (e.g. one line per generation) even if the process dies."""

    def set_progress(self, write: Callable[[dict[str, Any]], None]) -> None:
        """Where to write progress entries."""


@runtime_checkable
class Policy(Protocol):
    """One small interface for every policy. ``name`` is how the command line refers to it."""

    name: str

    def reset(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        """Start an episode."""

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray | Restore:
        """The next action: an int array of levels, one per unit (or a :class:`Restore`, see above)."""

    def observe(self, outcome: StepOutcome) -> None:
        """Learn what the last action did (perplexity change, rollback, ...)."""

    def record(self) -> dict[str, Any]:
        """Per-step extras for the runner's JSONL (e.g. the agent's rationale, tokens, retries); {} if none."""
