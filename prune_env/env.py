"""``PruningEnv``: a Gymnasium environment in which a policy prunes a real causal LM step by step."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from .block_cache import BlockCache
from .checkpoints import CheckpointStore, Unit, make_units
from .dense_weights import dense_weights_for
from .env_config import PruningEnvConfig
from .models import LoadedModel, load_model
from .perplexity import Perplexity, perplexity
from .profiles import wanda_unit_score, zscore
from .pruner import collect_statistics, sparsify_weight
from .sensitivity import gradient_importance
from .statistics import LayerStatistics
from .structure import discover
from .text import build_token_sets, default_seqlen, load_text, ood_source_name

Z_BOUND = 10.0  # z-scores are clipped to [-Z_BOUND, Z_BOUND] so the observation space is bounded
PPL_RATIO_BOUND = 1e6  # perplexity ratios are clipped to [0, PPL_RATIO_BOUND] for the same reason


@dataclass(frozen=True)
class Transition:
    """What a reward function sees about one step."""

    sparsity_before: float
    sparsity_after: float
    target: float
    ppl_before: float
    ppl_after: float
    dense_ppl: float


RewardFn = Callable[[Transition], float]


def default_reward(progress_weight: float = 1.0, ppl_weight: float = 1.0) -> RewardFn:
    """Progress toward the target (fraction of the target gained) minus the increase in log perplexity."""

    def reward(t: Transition) -> float:
        progress = (t.sparsity_after - t.sparsity_before) / t.target
        return progress_weight * progress - ppl_weight * (math.log(t.ppl_after) - math.log(t.ppl_before))

    return reward


class PruningEnv(gym.Env):
    """Prune a Hugging Face causal LM unit by unit; the reward trades sparsity progress against perplexity.

    A *unit* is a decoder block (``granularity="block"``, default) or a single prunable linear
    (``granularity="linear"``); ``L`` is the number of units, ``env.unit_names`` their names.

    **Observation** (``Dict`` of float32 ``Box`` arrays):

    * ``wanda_z`` ``(L,)``: z-score across units of the raw Wanda score, the 10th percentile of the non-zero
      ``|W| * ||X||_2`` of the unit, from the *current* (pruned) weights and the current model's activations on
      the validation windows. Recomputed every step, for the blocks the step re-ran.
    * ``grad_z`` ``(L,)``: z-score of the gradient importance, the mean over kept weights of
      ``|W * dL/dW|`` averaged over ``gradient_samples`` calibration windows. Recomputed at reset and every
      ``gradient_every`` steps (backward passes cost); zeros when ``gradient_samples == 0``.
    * ``sparsity`` ``(L,)``: the current sparsity level of each unit.
    * ``global_sparsity``, ``target``, ``ppl_ratio`` (current validation perplexity / dense), ``steps_left``,
      ``grad_age`` (steps since ``grad_z`` was computed, in ``[0, max_steps]``; ``max_steps`` when the gradient
      profile is off): each shape ``(1,)``.

    Z-scores are clipped to ``[-10, 10]``, the perplexity ratio to ``[0, 1e6]``.

    **Action**: ``MultiDiscrete([n_levels] * L)``. Level ``j`` raises the unit's sparsity by
    ``j * step_size`` (capped at ``max_unit_sparsity``); 0 leaves it. Touched units are re-pruned from their
    dense weights and the fixed (dense, one-shot) calibration statistics, so SparseGPT updates never compound.
    If a step would overshoot ``target_sparsity``, all its increments are scaled down by one common factor so
    that the step lands on the target exactly. A malformed action raises ``ValueError``.

    **Data** (``env.tokens``, see :mod:`prune_env.text`): three disjoint window sets. Calibration: the pruning
    statistics and the gradient profile. Validation (``reward_eval_samples`` windows): everything a policy
    can react to (the reward, the observation, AutoRollback, ``evaluate_validation``). Test
    (``final_eval_samples``): only :meth:`evaluate_full`. :meth:`evaluate_ood` scores a second text.

    **Reward**: by default ``progress_weight * (sparsity gained / target) - ppl_weight * (increase in log
    perplexity)`` on the validation windows; pass ``reward_fn`` to change it.

    **Termination**: ``terminated`` when the global sparsity (over all prunable linears) reaches the target;
    ``truncated`` after ``max_steps`` steps.

    **Info**: ``ppl`` (validation), ``dense_ppl``, ``ppl_ratio``, ``global_sparsity`` (measured zeros),
    ``unit_sparsity`` (``{unit: level}``), ``changed_units``, ``step``, ``checkpoint`` (id saved after the
    step), ``rolled_back`` (False here; set by :class:`prune_env.wrappers.AutoRollback`), ``grad_refreshed``
    (this step recomputed the gradient profile), ``reward_terms`` and, when ``info_timings``, ``timings``.
    Timings in seconds are always in ``env.last_timings`` (set by every step, reset, restore and
    ``apply_allocation``); they stay out of ``info`` by default so that infos are deterministic.

    **Counters**: ``evaluations`` and ``tokens_evaluated`` count validation-set evaluations and the validation
    tokens (windows x seqlen) they ran through the model: one per step (rejected or not), per
    ``apply_allocation`` and per ``evaluate_validation``. The dense measurement at construction, resets and
    restores are not counted (they re-measure no new state); test and ood evaluations are not either.

    **Checkpoints**: one is saved automatically after reset and after every step; ``save_checkpoint()``
    saves one explicitly. ``reset(options={"checkpoint": id or "last"})`` restores one bitwise (a rollback;
    the episode and its step count go on); its info's ``changed_units`` are the units the restore wrote back.
    With ``options={"checkpoint": id, "refresh_gradients": True}`` the gradient profile is then recomputed on
    the restored state and a new checkpoint saved (so a refresh made by a rejected step is not lost). A plain
    ``reset()`` starts a new episode from the dense model.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(
        self,
        config: PruningEnvConfig | None = None,
        *,
        render_mode: str | None = None,
        reward_fn: RewardFn | None = None,
        model_factory: Callable[[], LoadedModel] | None = None,
        **settings: Any,
    ) -> None:
        if config is not None and settings:
            raise TypeError("pass either a PruningEnvConfig or keyword settings, not both")
        self.config = (config or PruningEnvConfig.from_kwargs(**settings)).validate()
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode = render_mode
        cfg = self.config
        self.reward_fn = reward_fn or default_reward(cfg.progress_weight, cfg.ppl_weight)
        torch.manual_seed(cfg.seed)

        loaded = model_factory() if model_factory else load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        self.loaded, self.model = loaded, loaded.model
        self.structure = discover(self.model)
        self.units: list[Unit] = make_units(self.structure, cfg.granularity)
        self.unit_names = [u.name for u in self.units]
        self._unit_numel = np.array([u.numel for u in self.units], dtype=np.float64)
        self._unit_first_block = [min(u.blocks) for u in self.units]

        seqlen = cfg.seqlen or default_seqlen(loaded.device)
        try:
            tokens = build_token_sets(loaded.tokenizer, load_text(cfg.text), seqlen=seqlen,
                                      n_calib=cfg.calib_samples, n_validation=cfg.reward_eval_samples,
                                      n_test=cfg.final_eval_samples, seed=cfg.seed, needs_bos=loaded.needs_bos,
                                      ood=ood_source_name(cfg.ood_text, cfg.text), n_ood=cfg.ood_eval_samples)
        except ValueError as err:
            raise ValueError(f"{err} (PruningEnv settings: n_calib = calib_samples, n_validation = "
                             "reward_eval_samples, n_test = final_eval_samples (None: the whole test range), "
                             "n_ood = ood_eval_samples)") from err
        self.tokens = tokens
        self._reward_ids = tokens.validation
        self._final_ids = tokens.test
        self._ood_ids = tokens.ood
        self._grad_ids = tokens.calib[: cfg.gradient_samples]
        self.evaluations = 0       # validation-set evaluations (see the class docstring)
        self.tokens_evaluated = 0  # validation tokens run through the model by them
        self.last_timings: dict[str, float] = {}

        self.dense = dense_weights_for(self.structure, loaded.weights_dir)
        needs_stats = cfg.method != "magnitude"
        self.stats: dict[str, LayerStatistics] = (
            collect_statistics(self.model, tokens.calib, hessian=cfg.method == "sparsegpt", structure=self.structure,
                               batch_size=cfg.batch_size, progress=cfg.progress) if needs_stats else {}
        )
        self.store = CheckpointStore(self.units, dense=self.dense)
        self._store_generation = 0  # zero counts are cached per (store generation, unit version)
        self._zero_counts: dict[str, tuple[tuple[int, int], int]] = {}
        self.cache = BlockCache(self.model, self.structure, self._reward_ids, batch_size=cfg.batch_size)
        self._act: dict[str, LayerStatistics] = {}
        self._stale_from: int | None = None
        self.dense_ppl = self._measure(0)[0].ppl

        L = len(self.units)
        z_box = spaces.Box(-Z_BOUND, Z_BOUND, shape=(L,), dtype=np.float32)
        self.observation_space = spaces.Dict({
            "wanda_z": z_box,
            "grad_z": z_box,
            "sparsity": spaces.Box(0.0, 1.0, shape=(L,), dtype=np.float32),
            "global_sparsity": spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
            "target": spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
            "ppl_ratio": spaces.Box(0.0, PPL_RATIO_BOUND, shape=(1,), dtype=np.float32),
            "steps_left": spaces.Box(0.0, float(cfg.max_steps), shape=(1,), dtype=np.float32),
            "grad_age": spaces.Box(0.0, float(cfg.max_steps), shape=(1,), dtype=np.float32),
        })
        self.action_space = spaces.MultiDiscrete([cfg.n_levels] * L)
        self._initial_checkpoint: int | None = None
        self._last_checkpoint: int | None = None
        self._init_episode_state()

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"checkpoint", "refresh_gradients"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; the options are 'checkpoint' and "
                             f"'refresh_gradients'")
        if options.get("refresh_gradients") and "checkpoint" not in options:
            raise ValueError("reset option 'refresh_gradients' goes with 'checkpoint' (a plain reset computes the "
                             "gradient profile anyway)")
        if "checkpoint" in options:
            start = time.perf_counter()
            rewritten = self._restore(options["checkpoint"])
            timings = {"restore": time.perf_counter() - start}
            if options.get("refresh_gradients") and self._refresh_gradients(timings):
                self.save_checkpoint()
            self.last_timings = timings
            info = self._info(changed=rewritten, timings=timings)
            return self._observation(), {**info, "checkpoint": self._last_checkpoint}
        start = time.perf_counter()
        if self._initial_checkpoint is None:  # first reset: the dense model is the state
            self._init_episode_state()
            self._refresh_profiles(dirty_from=0, gradients=True, timings={})
        else:  # back to the dense model; a new episode starts a new checkpoint history (ids from 0)
            self._restore(self._initial_checkpoint)
            self._steps = 0
            self.store = CheckpointStore(self.units, dense=self.dense)
            self._store_generation += 1
        self._initial_checkpoint = self.save_checkpoint()
        self.last_timings = {"reset": time.perf_counter() - start}
        info = self._info(changed=[], timings=self.last_timings)
        return self._observation(), {**info, "checkpoint": self._last_checkpoint}

    def step(self, action):
        if self._initial_checkpoint is None:
            raise RuntimeError("call reset() before step()")
        t0 = time.perf_counter()
        levels = self._check_action(action)
        before_sparsity, before_ppl = self.global_sparsity_planned, self._ppl
        new = self._planned_ratios(levels)
        changed = [i for i in range(len(self.units)) if new[i] != self._ratios[i]]
        for i in changed:
            self._apply_unit(i, new[i])
        t1 = time.perf_counter()
        dirty = min((self._unit_first_block[i] for i in changed), default=None)
        if dirty is not None and not self.config.use_block_cache:
            dirty = 0
        self._steps += 1
        gradients = self.config.gradient_every > 0 and self._steps % self.config.gradient_every == 0
        timings: dict[str, float] = {}
        refreshed = self._refresh_profiles(dirty_from=dirty, gradients=gradients, timings=timings)
        self.count_evaluation()
        t2 = time.perf_counter()
        transition = Transition(before_sparsity, self.global_sparsity_planned, self.config.target_sparsity,
                                before_ppl, self._ppl, self.dense_ppl)
        reward = float(self.reward_fn(transition))
        terminated = self.global_sparsity_planned >= self.config.target_sparsity - 1e-9
        truncated = bool(self._steps >= self.config.max_steps and not terminated)
        checkpoint = self.save_checkpoint()
        timings.update({"prune": t1 - t0, "evaluate": t2 - t1, "step": time.perf_counter() - t0})
        self.last_timings = timings
        info = self._info(changed=[self.unit_names[i] for i in changed], timings=timings)
        info["reward_terms"] = {"sparsity_gain": transition.sparsity_after - transition.sparsity_before,
                                "log_ppl_increase": math.log(transition.ppl_after) - math.log(transition.ppl_before)}
        info["checkpoint"] = checkpoint
        info["grad_refreshed"] = refreshed
        return self._observation(), reward, bool(terminated), truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return units_table(self.unit_names, self._observation())

    def close(self) -> None:
        self.cache = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ checkpoints and evaluation
    def save_checkpoint(self) -> int:
        """Save the current state (copy-on-write: only units changed since the last checkpoint are stored)."""
        meta = {"ratios": self._ratios.copy(), "ppl": self._ppl, "wanda_raw": self._wanda_raw.copy(),
                "grad_raw": self._grad_raw.copy(), "grad_step": self._grad_step}
        self._last_checkpoint = self.store.save(meta)
        return self._last_checkpoint

    def apply_allocation(self, sparsity_map: dict[str, float]) -> dict[str, Any]:
        """Set units to absolute sparsity levels, re-pruned from their dense weights (1.0 zeroes a unit), then
        re-measure and save a checkpoint. Not a step (the step count goes on unchanged): it rebuilds a run's
        final model from its sparsity map, or evaluates a hand-made allocation. Returns the info dict."""
        if self._initial_checkpoint is None:
            raise RuntimeError("call reset() before apply_allocation()")
        unknown = sorted(set(sparsity_map) - set(self.unit_names))
        if unknown:
            raise ValueError(f"unknown unit(s) {unknown[:5]}; units are named like {self.unit_names[0]!r}")
        for name, level in sparsity_map.items():
            if not 0.0 <= float(level) <= 1.0:
                raise ValueError(f"sparsity of {name} must be in [0, 1], got {level}")
        start = time.perf_counter()
        changed = []
        for name, level in sparsity_map.items():
            i = self.unit_names.index(name)
            if float(level) == self._ratios[i]:
                continue
            if float(level) >= 1.0:
                with self.store.changing(name):
                    for lin in self.units[i].linears:
                        lin.set_weight_matrix(torch.zeros_like(lin.weight_matrix()))
                self._ratios[i] = 1.0
            else:
                self._apply_unit(i, float(level))
            changed.append(i)
        dirty = min((self._unit_first_block[i] for i in changed), default=None)
        t1 = time.perf_counter()
        timings: dict[str, float] = {}
        self._refresh_profiles(dirty_from=dirty, gradients=False, timings=timings)
        self.count_evaluation()
        timings.update({"prune": t1 - start, "evaluate": time.perf_counter() - t1, "apply": time.perf_counter() - start})
        self.last_timings = timings
        info = self._info(changed=[self.unit_names[i] for i in changed], timings=timings)
        info["checkpoint"] = self.save_checkpoint()
        return info

    def invalidate_cache(self, from_block: int = 0) -> None:
        """Weights of blocks >= ``from_block`` were changed outside ``step``/``apply_allocation`` (e.g. by
        :func:`prune_env.finalize.finalize_allocation`): their cached activations are stale, so the next
        evaluation re-runs them."""
        self._stale_from = from_block if self._stale_from is None else min(self._stale_from, from_block)

    def evaluate_full(self, *, progress: bool = False) -> Perplexity:
        """Perplexity on the TEST windows (``final_eval_samples``), for final reports only: nothing a policy
        reacts to is measured on them. ``Perplexity.window_nll`` holds the per-window NLLs."""
        return perplexity(self.model, self._final_ids, batch_size=self.config.batch_size, progress=progress,
                          structure=self.structure)

    def evaluate_ood(self, *, progress: bool = False) -> Perplexity | None:
        """Perplexity on the out-of-domain windows of ``ood_text`` (None when it is off), for final reports."""
        if self._ood_ids is None:
            return None
        return perplexity(self.model, self._ood_ids, batch_size=self.config.batch_size, progress=progress,
                          structure=self.structure)

    def evaluate_validation(self, windows: int | None = None) -> Perplexity:
        """Perplexity of the current model on the first ``windows`` validation windows (None: all of them), by a
        plain forward pass (no cache); counted in ``evaluations`` and ``tokens_evaluated``."""
        ids = self._reward_ids if windows is None else self._reward_ids[:windows]
        if windows is not None and not 1 <= windows <= len(self._reward_ids):
            raise ValueError(f"windows must be in 1..{len(self._reward_ids)} (reward_eval_samples), got {windows}")
        result = perplexity(self.model, ids, batch_size=self.config.batch_size, structure=self.structure)
        self.count_evaluation(ids)
        return result

    def sparsity_map(self) -> dict[str, float]:
        """``{unit name: sparsity level}``: the allocation, in the shape ``prune_env.pruner.make_spec`` takes."""
        return {name: float(r) for name, r in zip(self.unit_names, self._ratios)}

    @property
    def ppl(self) -> float:
        return self._ppl

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def global_sparsity_planned(self) -> float:
        """Parameter-weighted mean of the unit levels (what the target is compared with)."""
        return float((self._ratios * self._unit_numel).sum() / self._unit_numel.sum())

    def measured_sparsity(self) -> float:
        """Zeros over all prunable linears, counted in the weights (recounted only for units whose checkpoint-store
        version changed since they were last counted, so a step or a rollback pays for the units it touched)."""
        return sum(self._unit_zeros(i) for i in range(len(self.units))) / float(self._unit_numel.sum())

    def _unit_zeros(self, index: int) -> int:
        unit = self.units[index]
        key = (self._store_generation, self.store.version(unit.name))
        cached = self._zero_counts.get(unit.name)
        if cached is None or cached[0] != key:
            cached = (key, sum(int((lin.module.weight == 0).sum()) for lin in unit.linears))
            self._zero_counts[unit.name] = cached
        return cached[1]

    # ------------------------------------------------------------------ internals
    def _init_episode_state(self) -> None:
        L = len(self.units)
        self._ratios = np.zeros(L, dtype=np.float64)
        self._wanda_raw = np.zeros(L, dtype=np.float64)
        self._grad_raw = np.zeros(L, dtype=np.float64)
        self._grad_step: int | None = None  # step at which _grad_raw was computed (None: never)
        self._ppl = self.dense_ppl
        self._steps = 0

    def _check_action(self, action) -> np.ndarray:
        arr = np.asarray(action)
        L = len(self.units)
        if arr.shape != (L,):
            raise ValueError(f"action must have shape ({L},) (one level per unit), got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise ValueError(f"action levels must be integers in [0, {self.config.n_levels - 1}], got {arr.tolist()}")
            arr = arr.astype(np.int64)
        if arr.min() < 0 or arr.max() >= self.config.n_levels:
            raise ValueError(f"action levels must be in [0, {self.config.n_levels - 1}], got {arr.tolist()}")
        return arr.astype(np.int64)

    def _planned_ratios(self, levels: np.ndarray) -> np.ndarray:
        cfg = self.config
        proposed = np.minimum(self._ratios + levels * cfg.step_size, cfg.max_unit_sparsity)
        delta = proposed - self._ratios
        total = self._unit_numel.sum()
        after = float((proposed * self._unit_numel).sum() / total)
        if after > cfg.target_sparsity + 1e-12:
            need = cfg.target_sparsity - self.global_sparsity_planned
            gain = float((delta * self._unit_numel).sum() / total)
            proposed = self._ratios + delta * (need / gain)
        return np.round(proposed, 12)

    def _apply_unit(self, index: int, ratio: float) -> None:
        unit = self.units[index]
        self.store.about_to_change(unit.name)
        for lin in unit.linears:
            dense = self.dense.get(lin.name).to(lin.module.weight.device)
            result = sparsify_weight(self.config.method, dense, float(ratio), None, self.stats.get(lin.name),
                                     name=lin.name)
            lin.set_weight_matrix(result.weight)
        self.store.mark_changed(unit.name)
        self._ratios[index] = ratio

    def _measure(self, dirty_from: int | None) -> tuple[Perplexity, int | None]:
        """Reward perplexity via the block cache; blocks >= the first changed one (this step's or a rollback's)
        are re-run, and their linears' activation norms are re-measured on the way. Returns (ppl, re-run from)."""
        if self._stale_from is not None:
            dirty_from = self._stale_from if dirty_from is None else min(dirty_from, self._stale_from)
            self._stale_from = None

        def sink(name: str, x: torch.Tensor) -> None:
            if name not in self._act:
                self._act[name] = LayerStatistics(x.shape[-1], x.device, hessian=False)
            self._act[name].add(x)

        if dirty_from is not None:
            for lin in self.structure.linears:
                if lin.block >= dirty_from:
                    self._act.pop(lin.name, None)
        return self.cache.perplexity(dirty_from, activation_sink=sink if dirty_from is not None else None), dirty_from

    def _refresh_profiles(self, *, dirty_from: int | None, gradients: bool, timings: dict[str, float]) -> bool:
        """Re-measure the validation perplexity and the Wanda profile of re-run units; the gradient profile too
        when ``gradients``. Returns whether the gradient profile was recomputed."""
        ppl, dirty_from = self._measure(dirty_from)
        self._ppl = ppl.ppl
        for i, unit in enumerate(self.units):
            if dirty_from is not None and self._unit_first_block[i] >= dirty_from:
                self._wanda_raw[i] = wanda_unit_score([lin.weight_matrix() for lin in unit.linears],
                                                      [self._act[lin.name].act_norm for lin in unit.linears])
        return self._refresh_gradients(timings) if gradients else False

    def _refresh_gradients(self, timings: dict[str, float]) -> bool:
        """Recompute the gradient profile on the current weights (False when it is off)."""
        if self.config.gradient_samples == 0:
            return False
        start = time.perf_counter()
        acc = gradient_importance(self.model, self.structure, self._grad_ids)
        self._grad_raw = np.array([acc.unit_score([lin.name for lin in u.linears]) for u in self.units])
        self._grad_step = self._steps
        timings["gradients"] = time.perf_counter() - start
        return True

    def count_evaluation(self, ids: torch.Tensor | None = None) -> None:
        """Count one validation evaluation of ``ids`` (None: all validation windows) in ``evaluations`` and
        ``tokens_evaluated``; for evaluators outside the env that score validation windows
        (:class:`prune_env.candidates.CandidateEvaluator`), so every search's work is in the same counters."""
        ids = self._reward_ids if ids is None else ids
        self.evaluations += 1
        self.tokens_evaluated += int(ids.numel())

    def _restore(self, checkpoint: int | str) -> list[str]:
        """Restore a checkpoint; returns the names of the units written back."""
        names, meta = self.store.restore(checkpoint)
        if checkpoint != "last":
            self._last_checkpoint = int(checkpoint)
        self._ratios = meta["ratios"].copy()
        self._ppl = meta["ppl"]
        self._wanda_raw = meta["wanda_raw"].copy()
        self._grad_raw = meta["grad_raw"].copy()
        self._grad_step = meta["grad_step"]
        touched = [self._unit_first_block[self.unit_names.index(n)] for n in names]
        if touched:  # cached activations of these blocks are stale; re-run lazily at the next step
            first = min(touched)
            self._stale_from = first if self._stale_from is None else min(first, self._stale_from)
        return list(names)

    def _grad_age(self) -> float:
        """Steps since the gradient profile was computed, clipped to the space's ``[0, max_steps]``."""
        cap = float(self.config.max_steps)
        return cap if self._grad_step is None else min(float(self._steps - self._grad_step), cap)

    def _observation(self) -> dict[str, np.ndarray]:
        cfg = self.config
        return {
            "wanda_z": np.clip(zscore(self._wanda_raw), -Z_BOUND, Z_BOUND).astype(np.float32),
            "grad_z": np.clip(zscore(self._grad_raw), -Z_BOUND, Z_BOUND).astype(np.float32),
            "sparsity": self._ratios.astype(np.float32),
            "global_sparsity": np.array([self.global_sparsity_planned], dtype=np.float32),
            "target": np.array([cfg.target_sparsity], dtype=np.float32),
            "ppl_ratio": np.array([min(self._ppl / self.dense_ppl, PPL_RATIO_BOUND)], dtype=np.float32),
            "steps_left": np.array([max(cfg.max_steps - self._steps, 0)], dtype=np.float32),
            "grad_age": np.array([self._grad_age()], dtype=np.float32),
        }

    def _info(self, *, changed: list[str], timings: dict[str, float]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "ppl": self._ppl,
            "dense_ppl": self.dense_ppl,
            "ppl_ratio": self._ppl / self.dense_ppl,
            "global_sparsity": self.measured_sparsity(),
            "unit_sparsity": self.sparsity_map(),
            "changed_units": changed,
            "step": self._steps,
            "rolled_back": False,
        }
        if self.config.info_timings:
            info["timings"] = timings
        return info


def units_table(unit_names: list[str], obs: dict[str, np.ndarray]) -> str:
    """A fixed-width table of the units (the ``ansi`` rendering)."""
    width = max(len(n) for n in unit_names)
    lines = [f"{'unit':<{width}}  sparsity  wanda_z  grad_z"]
    for i, name in enumerate(unit_names):
        lines.append(f"{name:<{width}}  {obs['sparsity'][i]:8.3f}  {obs['wanda_z'][i]:7.2f}  {obs['grad_z'][i]:6.2f}")
    lines.append(f"global sparsity {obs['global_sparsity'][0]:.3f} / target {obs['target'][0]:.3f}, "
                 f"perplexity x{obs['ppl_ratio'][0]:.3f} of dense, {int(obs['steps_left'][0])} steps left"
                 + (f", grad_z {int(obs['grad_age'][0])} steps old" if "grad_age" in obs else ""))
    return "\n".join(lines)


def short_unit_names(unit_names: list[str]) -> list[str]:
    """Unit names without the prefix they all share (``model.layers.3`` -> ``3``, ``3.mlp.up_proj``)."""
    if len(unit_names) < 2:
        return list(unit_names)
    prefix = os.path.commonprefix(unit_names)
    prefix = prefix[: prefix.rfind(".") + 1]
    return [n[len(prefix):] for n in unit_names]


def observation_to_text(unit_names: list[str], obs: dict[str, np.ndarray]) -> str:
    """Compact text of an observation for LLM policies: one line per unit (shared name prefix dropped),
    then the globals (``grad_age``: how many steps old ``zg`` is)."""
    rows = [f"{short}: s={obs['sparsity'][i]:.2f} zw={obs['wanda_z'][i]:+.2f} zg={obs['grad_z'][i]:+.2f}"
            for i, short in enumerate(short_unit_names(unit_names))]
    rows.append(f"global={obs['global_sparsity'][0]:.3f} target={obs['target'][0]:.3f} "
                f"ppl_ratio={obs['ppl_ratio'][0]:.3f} steps_left={int(obs['steps_left'][0])}"
                + (f" grad_age={int(obs['grad_age'][0])}" if "grad_age" in obs else ""))
    return "\n".join(rows)


def make_pruning_env(**kwargs: Any) -> gym.Env:
    """``gymnasium.make`` entry point: a PruningEnv, wrapped in AutoRollback when ``rollback_threshold`` is set."""
    from .wrappers import AutoRollback

    env = PruningEnv(**kwargs)
    if env.config.rollback_threshold is not None:
        return AutoRollback(env, max_ppl_increase=env.config.rollback_threshold,
                            penalty=env.config.rollback_penalty,
                            keep_final_step=env.config.rollback_keep_final_step)
    return env
