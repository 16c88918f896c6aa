"""One episode runner for every policy: reset, act / step / observe until done, a JSONL line per step.

``run_episode(env, policy, steps_path=...)`` writes (and flushes) one JSON object per line as it goes, so a
crash loses nothing that happened before it:

* ``{"kind": "start", ...}``: policy, env config, unit names, dense perplexity, seed;
* ``{"kind": "step", ...}``: ``step``, ``action``, ``reward``, ``ppl``, ``ppl_ratio``, ``global_sparsity``
  (measured), ``unit_sparsity``, ``changed_units``, ``rolled_back`` / ``rejected_ppl``, ``checkpoint``,
  ``terminated`` / ``truncated``, ``timings`` (env's plus ``act`` and ``observe``), ``policy``
  (``policy.record()``) and ``replayed`` (True for steps replayed from ``start_from``);
* ``{"kind": "restore", ...}``: a search policy went back to a checkpoint (no step, no evaluation);
* ``{"kind": "direct", ...}``: a :class:`~policies.base.DirectPolicy` changed the model outside the action;
* ``{"kind": "error", ...}``: a policy (or the env step it asked for) raised; the env was restored to its
  last checkpoint first, then :class:`EpisodeError` is raised;
* ``{"kind": "finalize", ...}``: the final weights were re-made (``finalize=``, e.g. sequential calibration);
* ``{"kind": "end", ...}``: the :class:`EpisodeResult` without the per-step records.

Every episode is accounted in validation work: ``evaluations`` and ``tokens_evaluated`` are the differences
of the env's counters between the start and the end of the episode (rejected steps and ``apply_allocation``
included), so a search can be given exactly the budget an agent used. ``max_steps`` truncates an episode,
except for a search (:class:`~policies.base.Backtracking`) that still wants more: its budget bounds it.

**Resuming** (``--resume``, issue 6): read the lines with :func:`load_steps` and pass them as
``start_from``. The runner resets the env with the same seed and replays every recorded ``step`` action and
``restore`` through the env (checkpoint ids repeat, since they are numbered from 0 in each episode), feeding
each replayed outcome to ``policy.observe`` so the policy can rebuild its history; then the policy acts on.
A replayed perplexity that differs from the recorded one is logged (the env is deterministic on CPU).
"""

from __future__ import annotations

import json
import math
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm.auto import tqdm

from .base import Backtracking, DirectPolicy, EnvView, Policy, Progressing, Recalling, Restore, StepOutcome


class EpisodeError(RuntimeError):
    """A policy (or the env step it asked for) failed; the env was restored to ``checkpoint``."""

    def __init__(self, message: str, *, step: int, checkpoint: int | None) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


@dataclass
class EpisodeResult:
    """What one episode achieved and cost."""

    policy: str
    dense_ppl: float                  # test windows (final_eval_samples), dense model
    final_ppl: float                  # test windows, at the end (after finalization, if any)
    ppl_ratio: float                  # final_ppl / dense_ppl
    reward_ppl: float                 # validation (reward) windows, the last state the policy saw
    global_sparsity: float            # measured zeros over all prunable linears (after finalization)
    target_sparsity: float
    sparsity_map: dict[str, float]    # per unit: the env's levels
    steps: int                        # env steps taken (replayed ones included)
    rollbacks: int
    evaluations: int                  # validation evaluations: every env step (rejected ones included), every
                                      # apply_allocation (a DirectPolicy's), from the env's counters
    tokens_evaluated: int             # validation tokens those evaluations ran (the budget unit of searches)
    restores: int                     # search backtracks (Restore): free, no evaluation
    terminated: bool
    truncated: bool
    wall_seconds: float               # whole episode, final evaluation included
    ood_ppl: float | None = None      # out-of-domain text at the end (None: the env has no ood text)
    dense_ood_ppl: float | None = None
    finalize: str = "none"            # how the final weights were made: none (the env's own) or sequential
    finalize_seconds: float = 0.0
    totals: dict[str, float] = field(default_factory=dict)    # sums of numeric policy.record() fields
    summary: dict[str, Any] = field(default_factory=dict)     # policy.summary(), if the policy has one
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def as_dict(self, *, with_records: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not with_records:
            d.pop("records")
        return d


class StepLog:
    """Appends JSON lines to a file (flushed per line), keeps them in memory and hands each to ``listener``."""

    def __init__(self, path: str | Path | None, listener: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.lines: list[dict[str, Any]] = []
        self._listener = listener
        self._file: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w")

    def write(self, record: dict[str, Any]) -> None:
        self.lines.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record, default=_jsonable) + "\n")
            self._file.flush()
        if self._listener is not None:  # after the line is on disk
            try:
                self._listener(record)
            except Exception as err:  # noqa: BLE001 - a logging side channel must not end the episode
                warnings.warn(f"step listener failed ({type(err).__name__}: {err}); it is switched off for the rest "
                              f"of the episode, and {self.path or 'the in-memory log'} still has every line",
                              RuntimeWarning, stacklevel=2)
                self._listener = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def load_steps(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a steps JSONL (a torn last line from a crash is skipped)."""
    lines = []
    for raw in Path(path).read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            break
    return lines


def run_episode(
    env: Any,
    policy: Policy,
    *,
    steps_path: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    start_from: Sequence[Mapping[str, Any]] = (),
    final_eval: bool = True,
    dense_ppl: float | None = None,
    dense_ood_ppl: float | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    finalize: Callable[[Any], Mapping[str, Any]] | None = None,
) -> EpisodeResult:
    """Run ``policy`` on ``env`` (a PruningEnv, possibly wrapped) for one episode; see the module docstring.

    ``on_record`` gets every line of the steps log as it is written (start, step, restore, error, end), e.g. to
    stream steps to W&B while the episode runs.

    ``finalize(env)`` (e.g. ``lambda e: finalize_allocation(e, "sequential")``) re-makes the final weights after
    the last step and before the test and out-of-domain evaluations; it returns ``{"finalize": name, "seconds":
    s}``. A failing finalization restores the last checkpoint and raises :class:`EpisodeError` like a failing
    policy. ``dense_ppl`` / ``dense_ood_ppl``: the dense test / ood perplexities when the caller has them
    (``compare`` measures them once), else they are measured right after the reset.
    """
    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    raw = env.unwrapped
    steps_log = StepLog(steps_path, on_record)
    state = _State()
    try:
        obs, info = env.reset(seed=seed)
        state.track(info)
        if final_eval:
            state.dense_full = dense_full_ppl(raw) if dense_ppl is None else float(dense_ppl)
            state.dense_ood = evaluate_ood(raw) if dense_ood_ppl is None else float(dense_ood_ppl)
        state.counters_at_start = eval_counters(raw)
        view = EnvView.of(env)
        steps_log.write({"kind": "start", "policy": policy.name, "seed": seed, "config": raw.config.as_dict(),
                         "unit_names": list(view.unit_names), "dense_reward_ppl": raw.dense_ppl,
                         "checkpoint": info.get("checkpoint"), "time": time.time()})
        _guard(env, state, steps_log, policy, "reset", lambda: policy.reset(view, obs, info))
        if start_from:
            obs, info = _replay(env, policy, start_from, state, steps_log, say)
        bar = tqdm(total=view.max_steps, initial=state.steps, desc=policy.name, unit="step", disable=not progress)
        if isinstance(policy, DirectPolicy):
            _run_direct(env, policy, view, state, steps_log)
        while not state.done(policy):
            t0 = time.perf_counter()
            action = _guard(env, state, steps_log, policy, "act", lambda o=obs, i=info: policy.act(o, i))
            act_seconds = time.perf_counter() - t0
            if isinstance(action, Restore):
                obs, info = _guard(env, state, steps_log, policy, "restore",
                                   lambda a=action: _restore(env, a, state, steps_log, check_loop=True))
                if action.final:
                    break
                continue
            action = np.asarray(action)
            obs, reward, terminated, truncated, info = _guard(env, state, steps_log, policy, "env.step",
                                                              lambda a=action: env.step(a))
            env_timings = step_timings(raw, info)
            outcome = StepOutcome(state.steps + 1, action, float(reward), bool(terminated), bool(truncated), obs, info)
            t1 = time.perf_counter()
            _guard(env, state, steps_log, policy, "observe", lambda o=outcome: policy.observe(o))
            extras = _guard(env, state, steps_log, policy, "record", policy.record) or {}
            record = _step_record(outcome, extras, {**env_timings, "act": act_seconds,
                                                    "observe": time.perf_counter() - t1})
            state.add_step(outcome, record)
            steps_log.write(record)
            bar.update(1)
            bar.set_postfix(ppl=f"{info['ppl']:.2f}", sparsity=f"{info['global_sparsity']:.3f}")
        bar.close()
        if finalize is not None:
            done = _guard(env, state, steps_log, policy, "finalize", lambda: _finalize(env, finalize, state))
            steps_log.write({"kind": "finalize", **done})
        result = _finish(env, policy, state, t_start, final_eval, say)
        steps_log.write({"kind": "end", **result.as_dict()})
        result.records = [line for line in steps_log.lines if line["kind"] in ("step", "direct")]
        return result
    finally:
        steps_log.close()


# ------------------------------------------------------------------------------------------------ internals


class _State:
    """What the runner tracks while stepping."""

    def __init__(self) -> None:
        self.steps = self.rollbacks = self.restores = 0
        self.restores_in_a_row = 0
        self.checkpoint: int | None = None
        self.terminated = self.truncated = False
        self.direct = False
        self.dense_full = math.nan
        self.dense_ood: float | None = None
        self.counters_at_start: tuple[int, int] | None = None
        self.counters_at_end: tuple[int, int] | None = None
        self.finalize = "none"
        self.finalize_seconds = 0.0
        self.reward_ppl = math.nan
        self.sparsity_map: dict[str, float] = {}
        self.records: list[dict[str, Any]] = []

    def track(self, info: Mapping[str, Any]) -> None:
        if info.get("checkpoint") is not None:
            self.checkpoint = int(info["checkpoint"])
        self.reward_ppl = float(info.get("ppl", self.reward_ppl))
        self.sparsity_map = dict(info.get("unit_sparsity", self.sparsity_map))

    def add_step(self, outcome: StepOutcome, record: dict[str, Any]) -> None:
        self.steps += 1
        self.restores_in_a_row = 0
        self.rollbacks += int(outcome.rolled_back)
        self.terminated, self.truncated = outcome.terminated, outcome.truncated
        self.track(outcome.info)
        self.records.append(record)

    def done(self, policy: Policy) -> bool:
        """After a DirectPolicy's change; after a step that reached the target or hit ``max_steps``, unless
        the policy is a search that wants more (a search's budget, not ``max_steps``, bounds its evaluations;
        ``max_steps`` truncates the agent's episode)."""
        if self.direct:
            return True
        if self.terminated or self.truncated:
            return not (isinstance(policy, Backtracking) and policy.wants_more())
        return False


def _guard(env: Any, state: _State, steps_log: StepLog, policy: Policy, where: str, call: Callable[[], Any]) -> Any:
    """Run ``call``; on any exception restore the last checkpoint, log an error line, raise EpisodeError."""
    try:
        return call()
    except Exception as err:
        restored, restore_error = state.checkpoint, None
        if restored is not None:
            try:
                env.reset(options={"checkpoint": restored})
            except Exception as second:  # noqa: BLE001 - reported, the original error is what matters
                restore_error = repr(second)
        steps_log.write({"kind": "error", "where": where, "step": state.steps, "error": repr(err),
                         "traceback": traceback.format_exc(), "restored_checkpoint": restored,
                         "restore_error": restore_error})
        note = f"restored to checkpoint {restored}" if restore_error is None else f"restoring failed: {restore_error}"
        raise EpisodeError(f"policy {policy.name!r} failed in {where} after step {state.steps} "
                           f"({type(err).__name__}: {err}); env {note}", step=state.steps,
                           checkpoint=restored) from err


MAX_RESTORES_IN_A_ROW = 2  # a search restores its base, or its best at the end; more without a step is a loop


def _restore(env: Any, action: Restore, state: _State, steps_log: StepLog, *,
             check_loop: bool = False) -> tuple[dict, dict]:
    if check_loop and state.restores_in_a_row >= MAX_RESTORES_IN_A_ROW:
        raise RuntimeError(f"{state.restores_in_a_row + 1} restores in a row without an env step: the policy loops")
    t0 = time.perf_counter()
    obs, info = env.reset(options={"checkpoint": action.checkpoint})
    state.track(info)
    state.restores += 1
    state.restores_in_a_row += 1
    if action.final:  # the episode ends on the state the policy chose
        raw = env.unwrapped
        state.terminated = raw.global_sparsity_planned >= raw.config.target_sparsity - 1e-9
    steps_log.write({"kind": "restore", "after_step": state.steps, "checkpoint": action.checkpoint,
                     "final": action.final, "ppl": info["ppl"], "global_sparsity": info["global_sparsity"],
                     "seconds": time.perf_counter() - t0})
    return obs, info


def _run_direct(env: Any, policy: DirectPolicy, view: EnvView, state: _State, steps_log: StepLog) -> None:
    t0 = time.perf_counter()
    if isinstance(policy, Progressing):  # a long search writes its progress as it goes
        policy.set_progress(lambda entry: steps_log.write({"kind": "search", **entry}))
    record = _guard(env, state, steps_log, policy, "apply", lambda: policy.apply(view))  # type: ignore[arg-type]
    state.direct = state.terminated = True
    state.track(record)  # ppl, unit_sparsity (env levels: 1.0 for removed units), checkpoint
    raw = env.unwrapped
    line = {"kind": "direct", "step": 0, **record, "ppl_ratio": record["ppl"] / raw.dense_ppl,
            "global_sparsity": raw.measured_sparsity(), "timings": {"apply": time.perf_counter() - t0}}
    state.records.append(line)
    steps_log.write(line)


def _replay(env: Any, policy: Policy, start_from: Iterable[Mapping[str, Any]], state: _State, steps_log: StepLog,
            say: Callable[[str], None]) -> tuple[dict, dict]:
    """Re-apply recorded steps and restores (a resume); returns the latest (obs, info)."""
    obs, info = None, None
    for line in start_from:
        if line.get("kind") == "restore":
            obs, info = _restore(env, Restore(int(line["checkpoint"]), bool(line.get("final", False))), state, steps_log)
            continue
        if line.get("kind") != "step":
            continue
        action = np.asarray(line["action"], dtype=np.int64)
        obs, reward, terminated, truncated, info = env.step(action)
        if "ppl" in line and not math.isclose(info["ppl"], line["ppl"], rel_tol=1e-6):
            say(f"replayed step {line.get('step')}: ppl {info['ppl']:.4f} differs from the recorded {line['ppl']:.4f}")
        outcome = StepOutcome(state.steps + 1, action, float(reward), bool(terminated), bool(truncated), obs, info)
        extras = dict(line.get("policy", {}))
        if isinstance(policy, Recalling):
            _guard(env, state, steps_log, policy, "recall", lambda e=extras: policy.recall(e))
        _guard(env, state, steps_log, policy, "observe", lambda o=outcome: policy.observe(o))
        record = {**_step_record(outcome, extras, step_timings(env.unwrapped, info)), "replayed": True}
        state.add_step(outcome, record)
        steps_log.write(record)
    if obs is None:  # nothing replayed: the current state, unchanged (restoring 'last' rewrites nothing)
        obs, info = env.reset(options={"checkpoint": "last"})
    return obs, info


def step_timings(raw: Any, info: Mapping[str, Any]) -> dict[str, float]:
    """The env's timings of the step just taken: ``info["timings"]`` when the env puts them there
    (``info_timings=True``), else ``env.last_timings``."""
    timings = info.get("timings")
    if timings is None:
        timings = getattr(raw, "last_timings", None) or {}
    return dict(timings)


def _step_record(outcome: StepOutcome, extras: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    info = outcome.info
    record = {
        "kind": "step", "step": outcome.step, "action": outcome.action.tolist(), "reward": outcome.reward,
        "ppl": info["ppl"], "ppl_ratio": info["ppl_ratio"], "global_sparsity": info["global_sparsity"],
        "unit_sparsity": info["unit_sparsity"], "changed_units": info.get("changed_units", []),
        "rolled_back": bool(info.get("rolled_back", False)), "rejected_ppl": info.get("rejected_ppl"),
        "rollback_waived": bool(info.get("rollback_waived", False)), "checkpoint": info.get("checkpoint"), "terminated": outcome.terminated, "truncated": outcome.truncated,
        "timings": timings, "policy": extras,
    }
    return record


def _finalize(env: Any, finalize: Callable[[Any], Mapping[str, Any]], state: _State) -> dict[str, Any]:
    """Counters are read first (finalization is no validation evaluation of the policy), then ``finalize``."""
    state.counters_at_end = eval_counters(env.unwrapped)
    done = dict(finalize(env))
    state.finalize = str(done.get("finalize", "none"))
    state.finalize_seconds = float(done.get("seconds", 0.0))
    return done


def _finish(env: Any, policy: Policy, state: _State, t_start: float, final_eval: bool,
            say: Callable[[str], None]) -> EpisodeResult:
    raw = env.unwrapped
    evaluations, tokens_evaluated = _evaluated(raw, state)
    dense = state.dense_full if final_eval else raw.dense_ppl
    final = raw.evaluate_full().ppl if final_eval else state.reward_ppl
    ood = evaluate_ood(raw) if final_eval else None
    totals: dict[str, float] = {}
    for record in state.records:
        for key, value in record.get("policy", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value
    summary = policy.summary() if callable(getattr(policy, "summary", None)) else {}
    result = EpisodeResult(
        policy=policy.name, dense_ppl=dense, final_ppl=final, ppl_ratio=final / dense, reward_ppl=state.reward_ppl,
        global_sparsity=raw.measured_sparsity(), target_sparsity=raw.config.target_sparsity,
        sparsity_map=state.sparsity_map, steps=state.steps, rollbacks=state.rollbacks, evaluations=evaluations,
        tokens_evaluated=tokens_evaluated, restores=state.restores, terminated=state.terminated,
        truncated=state.truncated, wall_seconds=time.perf_counter() - t_start, ood_ppl=ood,
        dense_ood_ppl=state.dense_ood if final_eval else None, finalize=state.finalize,
        finalize_seconds=state.finalize_seconds, totals=totals, summary=summary,
    )
    say(f"{policy.name}: ppl {final:.2f} (x{result.ppl_ratio:.2f} of dense {dense:.2f}; finalize {state.finalize}), "
        f"sparsity {result.global_sparsity:.4f}, {state.steps} steps, {state.rollbacks} rollbacks, {evaluations} "
        f"evaluations ({tokens_evaluated} validation tokens), {result.wall_seconds:.0f} s")
    return result


def eval_counters(raw: Any) -> tuple[int, int]:
    """The env's cumulative ``(evaluations, tokens_evaluated)`` of validation windows."""
    return int(raw.evaluations), int(raw.tokens_evaluated)


def _evaluated(raw: Any, state: _State) -> tuple[int, int]:
    """Validation evaluations and tokens of this episode: the env counters' difference between the start and
    the end of the episode (before finalization and the test evaluations)."""
    end = state.counters_at_end or eval_counters(raw)
    start = state.counters_at_start or end
    return end[0] - start[0], end[1] - start[1]


def evaluate_ood(raw: Any) -> float | None:
    """Perplexity on the env's out-of-domain text, None when the env has none."""
    method = getattr(raw, "evaluate_ood", None)
    result = method() if callable(method) else None
    return None if result is None else float(result.ppl)


def dense_full_ppl(raw: Any) -> float:
    """Dense perplexity on the test windows; call it when the model is dense (right after a plain reset)."""
    return float(raw.evaluate_full().ppl)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)
