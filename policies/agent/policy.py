"""``LLMAgent``: the policy that asks an LLM, through any OpenAI-compatible endpoint, what to prune next.

One step: build the prompt (goal and pace, the units table with the outcome memory, the rolled-back steps, a
bounded history that keeps the model's own choices apart from pacing's and the fallback's, with its
reflections; :mod:`policies.agent.prompt`), ask, parse and validate the answer; an invalid answer is asked again with the error fed back, up to
``answer_retries`` times; answers that stay invalid, or a single step without any reply (a transient outage),
lead to the documented fallback action (:mod:`policies.agent.fallback`), recorded as such. The env is only
ever stepped with a validated action, so the agent cannot corrupt the model.

What raises (:class:`~policies.agent.chat.EndpointError`, so a run of fallbacks never passes for an agent's
run): a refused configuration (HTTP 401/403/404: key, model, URL), the exit of the local server process this
agent owns (noticed before and after every request), and ``max_endpoint_failures`` consecutive steps whose
tries all failed for transport reasons (connection refused or reset, timeouts, 5xx after the retries) or ran
past ``step_time_limit_s`` without a reply. A diverging replay raises ReplayError.

:meth:`LLMAgent.summary` says whose pruning it was (:mod:`policies.agent.accounting`) and what the endpoint
cost (requests, tokens, seconds waited).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prune_env.env import short_unit_names

from ..base import EnvView, StepOutcome
from .accounting import StepGain, gain_shares, step_gain
from .answer import AnswerError, answer_schema, parse_answer, validate_answer
from .chat import ChatSession, EndpointError, StepBudget
from .fallback import fallback_action
from .memory import Outcome, bar_rejected, barred_violations, costs, outcome_of, release_bars
from .pacing import Pace, pace_action, pace_plan, planned_gain
from .prompt import HistoryEntry, PromptState, build_messages, choose_rows, retry_messages
from .server import LocalServer
from .settings import AgentSettings

CUT_OFF_HINT = " (the answer was cut off at the token limit: keep reflection and rationale to one sentence each)"


@dataclass
class StepRecord:
    """What the agent did to choose one action (returned by :meth:`LLMAgent.record`)."""

    step: int
    action: list[int] = field(default_factory=list)
    own_action: list[int] = field(default_factory=list)   # the LLM's (or the fallback's) levels, before pacing
    rationale: str = ""
    reflection: str = ""
    fallback: bool = False
    fallback_reason: str | None = None
    topped_up_levels: int = 0
    requests: int = 0
    network_retries: int = 0
    answer_retries: int = 0
    answer_errors: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    llm_wait_s: float = 0.0                  # requests plus backoff waits
    response_format: str = ""
    endpoint_failed: bool = False            # no reply in the whole step for transport reasons (counted)

    def as_dict(self) -> dict[str, Any]:
        """Flat, so the runner's per-episode totals sum the numbers (tokens, requests, retries, fallbacks)."""
        return {
            "rationale": self.rationale, "reflection": self.reflection,
            "fallback": self.fallback, "fallbacks": int(self.fallback), "fallback_reason": self.fallback_reason,
            "topped_up_levels": self.topped_up_levels,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "requests": self.requests, "network_retries": self.network_retries,
            "answer_retries": self.answer_retries,
            "answer_errors": list(self.answer_errors), "transport_errors": list(self.transport_errors),
            "latency_s": self.latency_s, "llm_wait_s": self.llm_wait_s, "response_format": self.response_format,
            "own_action": list(self.own_action), "endpoint_failed": self.endpoint_failed,
        }


class LLMAgent:
    """An LLM with self-reflection as a :class:`policies.base.Policy` (``name = "agent"``)."""

    name = "agent"

    def __init__(self, settings: AgentSettings, session: ChatSession, *, server: LocalServer | None = None) -> None:
        self.settings = settings
        self.session = session
        self.server = server  # a local server this agent started and owns (stopped by close())
        if server is not None:
            weakref.finalize(self, server.stop)
            if session.liveness is None:  # its exit ends the episode at once, not after the retries
                session.liveness = server.check_alive
        self.history: list[HistoryEntry] = []
        self._view: EnvView | None = None
        self._current: StepRecord | None = None
        self._last: dict[str, Any] = {}
        self._start_episode(np.zeros(0))

    def _start_episode(self, sparsity: np.ndarray) -> None:
        """Per-episode counters: consecutive failed steps, kept gains, endpoint costs."""
        self._failed_steps = 0
        self._last_failure = ""
        self._sparsity = np.asarray(sparsity, dtype=np.float64).copy()  # per unit, before the next step
        self._pending: StepGain | None = None    # the gain of the step just acted on, until observed
        self._pending_own: np.ndarray | None = None  # its chosen levels (before pacing), until observed
        self._recalled: dict[str, Any] | None = None
        self._gains: list[StepGain] = []         # one per step, zero for rolled-back ones
        self.outcomes: list[Outcome] = []        # the outcome memory's steps (rolled-back ones included)
        self._avoid: set[int] = set()            # units of the rolled-back steps since the last kept one
        self._barred: dict[int, int] = {}        # unit -> lowest level the model chose in a rolled-back step, until
        #                                          a kept step prunes the unit (memory.bar_rejected, release_bars)
        self._costs = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "llm_wait_s": 0.0}

    # ------------------------------------------------------------------ Policy interface
    def reset(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        self._view = view
        self._short = short_unit_names(list(view.unit_names))
        st = self.settings
        self._rows = choose_rows(view, self._short, history_size=st.history_size, reflection_chars=st.reflection_chars,
                                 context_tokens=st.context_tokens, max_tokens=st.max_tokens, memory=st.memory,
                                 paced=st.pace)
        self._schema = answer_schema(self._rows.names, view.n_levels)
        self.history = []
        self._ppl = float(info["ppl"])
        self._current = None
        self._last = {}
        self._start_episode(obs["sparsity"])

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        view = self._require_view()
        rec = StepRecord(step=len(self.history) + 1)
        pace = self.pace(obs)
        base = build_messages(view, obs, self.prompt_state(pace), self._rows, history_size=self.settings.history_size,
                              reflection_chars=self.settings.reflection_chars)
        messages = base
        action: np.ndarray | None = None
        budget = StepBudget(self.settings.step_time_limit_s)
        answered = False
        for attempt in range(self.settings.answer_retries + 1):
            call = self.session.complete(messages, self._schema, step=rec.step, budget=budget)
            rec.response_format = self.session.format_mode  # after the call: auto mode may have moved on
            rec.requests += call.tries
            rec.network_retries += max(call.tries - 1, 0)
            rec.transport_errors += call.errors
            rec.prompt_tokens += call.prompt_tokens
            rec.completion_tokens += call.completion_tokens
            rec.latency_s += call.latency_s
            rec.llm_wait_s += call.wait_s
            if call.reply is None:
                rec.fallback_reason = f"no answer from the endpoint: {call.errors[-1] if call.errors else 'unknown'}"
                rec.endpoint_failed = not answered and call.endpoint_down
                break
            answered = True
            rec.answer_retries = attempt
            try:
                answer = parse_answer(call.reply.content)
                rec.rationale, rec.reflection = answer.rationale, answer.reflection
                valid = validate_answer(answer, short_names=self._short, full_names=view.unit_names,
                                        sparsity=obs["sparsity"], n_levels=view.n_levels,
                                        step_size=view.step_size, cap=view.max_unit_sparsity,
                                        groups=self._rows.groups())
                self._check_barred(valid)
                action = valid
                break
            except AnswerError as e:
                error = str(e) + (CUT_OFF_HINT if call.reply.finish_reason == "length" else "")
                rec.answer_errors.append(error)
                messages = retry_messages(base, call.reply.content or "", error)
        else:
            rec.fallback_reason = f"{len(rec.answer_errors)} invalid answers, the last: {rec.answer_errors[-1]}"
        self._count_endpoint_failure(rec)
        unit_cost = [c.per_level for c in costs(self.outcomes, view.unit_numel, view.step_size,
                                                 [(i,) for i in range(view.n_units)])]
        if action is None:
            rec.fallback = True
            action = fallback_action(obs, step_size=view.step_size, cap=view.max_unit_sparsity,
                                     avoid=self._avoid | set(self._barred), cost=unit_cost,
                                     band=self.settings.scaffold_band)
        own = np.asarray(action, dtype=np.int64).copy()
        if self.settings.pace:  # top up too-small actions so the target is reached evenly (.pacing)
            action, rec.topped_up_levels = pace_action(action, obs, np.asarray(view.unit_numel), step_size=view.step_size,
                                                       n_levels=view.n_levels, cap=view.max_unit_sparsity, pace=pace,
                                                       avoid=self._avoid, cost=unit_cost,
                                                       band=self.settings.scaffold_band)
        rec.own_action = [int(a) for a in own]
        rec.action = [int(a) for a in action]
        self._pending = self._gain(obs["sparsity"], own, np.asarray(action), rec.fallback)
        self._pending_own = own
        self._add_costs(rec.requests, rec.prompt_tokens, rec.completion_tokens, rec.llm_wait_s)
        self._current = rec
        self._last = rec.as_dict()
        if self.session.transcript is not None:
            self.session.transcript.write({"type": "decision", "step": rec.step, "action": rec.action,
                                           "fallback": rec.fallback, "fallback_reason": rec.fallback_reason,
                                           "topped_up_levels": rec.topped_up_levels})
        return action

    def observe(self, outcome: StepOutcome) -> None:
        view = self._require_view()
        rec = self._current
        info = outcome.info
        applied = np.asarray(outcome.action, dtype=np.int64)
        own = self._pending_own if self._pending is not None else self._recalled_own(applied)
        gain = self._pending if self._pending is not None else self._gain(self._sparsity, own, applied, bool(rec and rec.fallback))
        kept = gain if not outcome.rolled_back else StepGain()  # a rolled-back step gained nothing
        self._gains.append(kept)
        self._last = {**self._last, "gain_own": kept.own, "gain_topped_up": kept.topped_up,
                      "gain_fallback": kept.fallback}
        ppl_after = float(info.get("rejected_ppl", info["ppl"])) if outcome.rolled_back else float(info["ppl"])
        numel = np.asarray(view.unit_numel)
        step = len(self.history) + 1
        self.outcomes.append(outcome_of(step, self._sparsity, applied, numel, step_size=view.step_size,
                                        cap=view.max_unit_sparsity, target=view.target_sparsity, ppl_before=self._ppl,
                                        ppl_after=ppl_after, rolled_back=outcome.rolled_back, short_names=self._short))
        self._avoid = (self._avoid | {int(i) for i in np.flatnonzero(applied)}) if outcome.rolled_back else set()
        if not outcome.rolled_back:
            self._barred = release_bars(self._barred, applied)
        elif self.settings.bar_rejected and not (rec and rec.fallback):
            self._barred = bar_rejected(self._barred, own)
        chosen_gain = self._planned(own)
        self.history.append(HistoryEntry(
            step=step, levels=self._named(applied), ppl_before=self._ppl, ppl_after=ppl_after,
            sparsity_after=float(outcome.obs["global_sparsity"][0]), rolled_back=outcome.rolled_back,
            fallback=bool(rec and rec.fallback), rationale=rec.rationale if rec else "",
            reflection=rec.reflection if rec else "", chosen=self._named(own), chosen_gain=chosen_gain,
            added_gain=max(self._planned(applied) - chosen_gain, 0.0)))
        self._sparsity = np.asarray(outcome.obs["sparsity"], dtype=np.float64).copy()
        self._pending, self._pending_own, self._recalled = None, None, None
        self._ppl = float(info["ppl"])
        self._current = None

    # ------------------------------------------------------------------ the pace and the memory
    def pace(self, obs: dict[str, np.ndarray]) -> Pace:
        """This step's pace (:func:`policies.agent.pacing.pace_plan`), from the rollbacks and kept gains so far."""
        view = self._require_view()
        remaining = view.target_sparsity - float(obs["global_sparsity"][0])
        last = self.history[-1] if self.history else None
        rejected = (last.chosen_gain or 0.0) + last.added_gain if last is not None and last.rolled_back else None
        return pace_plan(remaining, int(obs["steps_left"][0]), rollbacks=self.rollbacks,
                         reserve=self.settings.rollback_reserve, rejected=rejected,
                         largest_kept=max((g.total for g in self._gains), default=0.0))

    @property
    def rollbacks(self) -> int:
        """Steps of this episode that were rolled back."""
        return sum(o.rolled_back for o in self.outcomes)

    def prompt_state(self, pace: Pace | None = None) -> PromptState:
        """What the next prompt holds besides the observation (memory included when ``memory`` is on)."""
        view = self._require_view()
        memory = self.settings.memory
        table = costs(self.outcomes, view.unit_numel, view.step_size, self._rows.members) if memory else None
        return PromptState(history=tuple(self.history), pace=pace, paced=self.settings.pace, rollbacks=self.rollbacks,
                           reserve=self.settings.rollback_reserve, costs=table,
                           outcomes=tuple(self.outcomes) if memory else (),
                           barred={self._short[i]: level for i, level in self._barred.items()})

    def recall(self, extras: dict[str, Any]) -> None:
        """Resume (:class:`policies.base.Recalling`): the next observed step was decided with these extras
        (its reasoning for the history; its own levels and costs for :meth:`summary`)."""
        self._current = StepRecord(step=len(self.history) + 1, rationale=str(extras.get("rationale") or ""),
                                   reflection=str(extras.get("reflection") or ""),
                                   fallback=bool(extras.get("fallback", False)))
        self._recalled = dict(extras)
        self._pending, self._pending_own = None, None
        self._add_costs(int(extras.get("requests") or 0), int(extras.get("prompt_tokens") or 0),
                        int(extras.get("completion_tokens") or 0),
                        float(extras.get("llm_wait_s", extras.get("latency_s")) or 0.0))

    def record(self) -> dict[str, Any]:
        """The last decision: rationale, reflection, tokens, requests, retries, errors, fallback, latency, the
        levels before pacing (``own_action``) and, once observed, its kept gain (``gain_own``,
        ``gain_topped_up``, ``gain_fallback``: 0 for a rolled-back step)."""
        return dict(self._last)

    def summary(self) -> dict[str, Any]:
        """The episode's accounting: ``own_share``, ``topped_up_share``, ``fallback_share`` of the kept
        sparsity gain (None when nothing was kept), the gains themselves, and what the endpoint cost:
        ``requests``, ``tokens`` (prompt + completion), ``prompt_tokens``, ``completion_tokens``,
        ``llm_wait_s`` (seconds waited on the endpoint, backoffs included)."""
        own = sum(g.own for g in self._gains)
        topped = sum(g.topped_up for g in self._gains)
        fallback = sum(g.fallback for g in self._gains)
        c = self._costs
        return {**gain_shares(self._gains), "own_gain": own, "topped_up_gain": topped, "fallback_gain": fallback,
                "sparsity_gain": own + topped + fallback, "requests": int(c["requests"]),
                "tokens": int(c["prompt_tokens"] + c["completion_tokens"]), "prompt_tokens": int(c["prompt_tokens"]),
                "completion_tokens": int(c["completion_tokens"]), "llm_wait_s": float(c["llm_wait_s"]),
                "endpoint": self.session.endpoint}

    def close(self) -> None:
        """Stop the local server this agent started, if any (idempotent)."""
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> LLMAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _check_barred(self, action: np.ndarray) -> None:
        """AnswerError naming the units the answer puts at or above their bar (:func:`memory.bar_rejected`)."""
        bad = barred_violations(action, self._barred)
        if not bad:
            return
        row_of = {i: name for name, members in zip(self._rows.names, self._rows.members) for i in members}
        listed = ", ".join(dict.fromkeys(f"{row_of[i]} at level {level} (barred from {bar})" for i, level, bar in bad))
        raise AnswerError(f"{listed}: you chose that in a step that was rolled back, and the unit is unchanged "
                          "since, so it would be rolled back again; give those lower levels or choose other units")

    def _count_endpoint_failure(self, rec: StepRecord) -> None:
        """Count a step without any reply (transport reasons); EndpointError at ``max_endpoint_failures`` in a
        row. Any other step breaks the run of failures (the endpoint answered, or failed for another reason)."""
        if not rec.endpoint_failed:
            self._failed_steps = 0
            return
        self._failed_steps += 1
        self._last_failure = rec.transport_errors[-1] if rec.transport_errors else "no reply"
        if self._failed_steps >= self.settings.max_endpoint_failures:
            n = self._failed_steps
            raise EndpointError(self.session.endpoint,
                                f"{n} consecutive step{'s' if n > 1 else ''} failed (every request of each, after "
                                f"{self.settings.max_retries} retries or {self.settings.step_time_limit_s:g} s), "
                                f"the last with: {self._last_failure}")

    def _gain(self, sparsity: np.ndarray, own: np.ndarray, paced: np.ndarray, fallback: bool) -> StepGain:
        view = self._require_view()
        return step_gain(sparsity, np.asarray(view.unit_numel), own, paced, step_size=view.step_size,
                         cap=view.max_unit_sparsity, target=view.target_sparsity, fallback=fallback)

    def _recalled_own(self, applied: np.ndarray) -> np.ndarray:
        """The chosen levels of a step replayed on a resume, from its record (steps recorded before
        ``own_action`` existed count as wholly the agent's, or the fallback's)."""
        extras = self._recalled or {}
        own = np.asarray(extras.get("own_action") or applied, dtype=np.int64)
        return applied if own.shape != applied.shape or np.any(own > applied) else own

    def _planned(self, levels: np.ndarray) -> float:
        """Global sparsity ``levels`` add from the state before the step being observed."""
        view = self._require_view()
        return planned_gain(levels, self._sparsity, np.asarray(view.unit_numel), step_size=view.step_size,
                            cap=view.max_unit_sparsity, target=view.target_sparsity)

    def _named(self, levels: np.ndarray) -> dict[str, int]:
        """Short unit name -> level, non-zero levels only."""
        return {self._short[i]: int(a) for i, a in enumerate(np.asarray(levels)) if a}

    def _add_costs(self, requests: int, prompt_tokens: int, completion_tokens: int, wait_s: float) -> None:
        c = self._costs
        c["requests"] += requests
        c["prompt_tokens"] += prompt_tokens
        c["completion_tokens"] += completion_tokens
        c["llm_wait_s"] += wait_s

    def _require_view(self) -> EnvView:
        if self._view is None:
            raise RuntimeError("call reset(view, obs, info) before act()")
        return self._view
