"""Fitness of trial allocations on the validation windows, without committing them (for allocation searches).

A search such as ``evo-search`` scores many candidate allocations that differ from the env's current state
(its parent) in a few units. :class:`CandidateEvaluator` writes a candidate's pruned weights into those units,
replays only the blocks from the first changed one on cached hidden states (:meth:`BlockCache.evaluate`, read
only), computes the fitness in the model's own tail and writes the parent's weights back (also on error), so
the env's model, checkpoints and counters' meaning are untouched. Each evaluation is counted in the env's
``evaluations`` and ``tokens_evaluated`` (the windows it scored), like a step.

Fitness, lower is better: ``"kl"`` (default, EvoPress's): the mean per-token ``KL(dense || candidate)`` on the
windows (the dense reference is captured once, :class:`prune_env.divergence.DenseReference`); ``"ppl"``: the
perplexity of the windows.

Stages score prefixes of the validation windows (``windows=k``: the first ``k``); each distinct ``k`` has its
own :class:`BlockCache`, kept in step with the env's committed weights: when the env's units change (a commit
through ``env.apply_allocation``, a restore), the caches re-run from the first changed block before the next
evaluation. Keeping them in step is cache upkeep, not an evaluation, and is not counted.

Pruned weights of ``(unit, sparsity)`` are kept in a least-recently-used cache of ``weight_cache_bytes``, so a
level a search revisits is not pruned again; they are computed exactly as the env's own step computes them
(``sparsify_weight`` with the env's kernel and calibration statistics), so committing a candidate through
``env.apply_allocation`` gives bitwise the weights it was scored with.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch

from .block_cache import BlockCache
from .divergence import DenseReference
from .pruner import sparsify_weight

if TYPE_CHECKING:
    from .env import PruningEnv

FITNESSES = ("kl", "ppl")
DEFAULT_WEIGHT_CACHE_BYTES = {"cpu": 1 * 2**30, "cuda": 8 * 2**30}


@contextmanager
def trial_weights(writes: Sequence[tuple[object, torch.Tensor]]) -> Iterator[None]:
    """Write ``(PrunableLinear, weight matrix)`` pairs for the duration of the block; the previous weights are
    written back on exit, whatever happens inside (bitwise: the copies are of the module's own tensors)."""
    saved = [(lin, lin.weight_matrix().detach().clone()) for lin, _ in writes]
    try:
        for lin, weight in writes:
            lin.set_weight_matrix(weight)
        yield
    finally:
        for lin, weight in saved:
            lin.set_weight_matrix(weight)


class CandidateEvaluator:
    """Score allocations ``{unit index: sparsity}`` against the env's current state; see the module docstring.

    ``stage_windows``: the window counts the caller will ask for (each in ``1..reward_eval_samples``).
    """

    def __init__(self, env: PruningEnv, *, fitness: str = "kl", stage_windows: Sequence[int] = (),
                 weight_cache_bytes: int | None = None) -> None:
        if fitness not in FITNESSES:
            raise ValueError(f"fitness must be one of {', '.join(FITNESSES)}, got {fitness!r}")
        validation = env.tokens.validation
        n = int(validation.shape[0])
        counts = sorted({int(k) for k in stage_windows} | {n})
        bad = [k for k in counts if not 1 <= k <= n]
        if bad:
            raise ValueError(f"stage windows must be in 1..{n} (the env's reward_eval_samples), got {bad}")
        self.env, self.fitness_name, self.n_windows = env, fitness, n
        self._seqlen = int(validation.shape[1])
        device = env.loaded.device
        self._weight_budget = (weight_cache_bytes if weight_cache_bytes is not None
                               else DEFAULT_WEIGHT_CACHE_BYTES.get(device.type, DEFAULT_WEIGHT_CACHE_BYTES["cuda"]))
        self._weights: OrderedDict[tuple[int, float], list[torch.Tensor]] = OrderedDict()
        self._weight_bytes = 0
        self._first_block = [min(u.blocks) for u in env.units]
        batch = env.config.batch_size
        self._reference: DenseReference | None = None
        with self._dense_model() as wrote:
            self._caches = {k: BlockCache(env.model, env.structure, validation[:k], batch_size=batch) for k in counts}
            if fitness == "kl":
                full = self._caches[n]
                self._reference = DenseReference(env.model, env.structure.blocks, full.token_ids,
                                                 full.final_hidden(), full.template, batch_size=batch)
        for cache in self._caches.values() if wrote is not None else ():  # filled with dense weights: re-run on the real ones
            cache.invalidate(wrote)
            cache.refresh()
        self._synced = self._unit_versions()

    # ------------------------------------------------------------------ public
    @property
    def reference_form(self) -> str | None:
        """How the dense reference is held (``logprobs`` / ``hidden``), None for the ppl fitness."""
        return None if self._reference is None else self._reference.form

    def nbytes(self) -> int:
        """Bytes held: the stage caches, the dense reference and the pruned-weight cache."""
        held = sum(c.nbytes for c in self._caches.values()) + self._weight_bytes
        return held + (self._reference.nbytes if self._reference is not None else 0)

    def fitness(self, ratios: Sequence[float], windows: int | None = None) -> float:
        """Fitness of the allocation ``ratios`` (one sparsity per unit, in env order) on the first ``windows``
        validation windows (None: all); counted as one evaluation of those windows."""
        windows = self.n_windows if windows is None else int(windows)
        if windows not in self._caches:
            raise ValueError(f"windows={windows} is not a stage of this evaluator (stages: {sorted(self._caches)})")
        self._sync()
        allocation = self.env.sparsity_map()
        current = np.asarray([allocation[n] for n in self.env.unit_names])
        ratios = np.asarray(ratios, dtype=np.float64)
        if ratios.shape != current.shape:
            raise ValueError(f"ratios must have one sparsity per unit ({current.shape[0]}), got shape {ratios.shape}")
        changed = [i for i in range(len(ratios)) if ratios[i] != current[i]]
        writes = [pair for i in changed for pair in self._unit_weights(i, float(ratios[i]))]
        cache = self._caches[windows]
        changed_from = min((self._first_block[i] for i in changed), default=cache.num_blocks)
        with trial_weights(writes):
            sums = cache.evaluate(changed_from, self._reducer)
        self.env.count_evaluation(cache.token_ids)
        value = float(sums.sum()) / (windows * (self._seqlen - 1))
        if not math.isfinite(value):
            raise FloatingPointError("the candidate produced non-finite log-likelihoods (NaN/inf logits)")
        return value if self.fitness_name == "kl" else math.exp(value)

    # ------------------------------------------------------------------ internals
    def _reducer(self, batch: int, token_ids: torch.Tensor):
        if self._reference is not None:
            return self._reference.kl_reducer(batch, token_ids.shape[0])
        from .perplexity import sequence_nll

        return lambda logits, start, stop: sequence_nll(logits, token_ids[:, start + 1: stop + 1])

    def _unit_weights(self, index: int, ratio: float) -> list[tuple[object, torch.Tensor]]:
        key = (index, ratio)
        unit = self.env.units[index]
        if key in self._weights:
            self._weights.move_to_end(key)
            weights = self._weights[key]
        else:
            env = self.env
            weights = []
            for lin in unit.linears:
                dense = env.dense.get(lin.name).to(lin.module.weight.device)
                weights.append(sparsify_weight(env.config.method, dense, ratio, None, env.stats.get(lin.name),
                                               name=lin.name).weight)
            size = sum(w.numel() * w.element_size() for w in weights)
            if size <= self._weight_budget:
                self._weights[key] = weights
                self._weight_bytes += size
                while self._weight_bytes > self._weight_budget:
                    _, dropped = self._weights.popitem(last=False)
                    self._weight_bytes -= sum(w.numel() * w.element_size() for w in dropped)
        return list(zip(unit.linears, weights))

    def _unit_versions(self) -> tuple[int, tuple[int, ...]]:
        store = self.env.store
        return id(store), tuple(store.version(u.name) for u in self.env.units)

    def _sync(self) -> None:
        """Bring the stage caches in step with the env's committed weights (units whose version moved)."""
        now = self._unit_versions()
        if now == self._synced:
            return
        if now[0] != self._synced[0]:
            first = 0
        else:
            moved = [i for i, (a, b) in enumerate(zip(now[1], self._synced[1])) if a != b]
            first = min(self._first_block[i] for i in moved)
        for cache in self._caches.values():
            cache.invalidate(first)
            cache.refresh()
        self._synced = now

    @contextmanager
    def _dense_model(self) -> Iterator[int | None]:
        """The dense weights in every unit for the duration (to capture the reference), restored after; yields
        the first block it changed (None: the model was dense)."""
        env = self.env
        writes = []
        for unit in env.units:
            for lin in unit.linears:
                dense = env.dense.get(lin.name).to(lin.module.weight.device)
                if not torch.equal(lin.weight_matrix(), dense.to(lin.module.weight.dtype)):
                    writes.append((lin, dense))
        with trial_weights(writes):
            yield min((lin.block for lin, _ in writes), default=None)
