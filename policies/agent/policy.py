"""``LLMAgent``: the policy that asks an LLM, through any OpenAI-compatible endpoint, what to prune next.

One step: build the prompt (goal, profile table, bounded history with the agent's own reflections), ask,
parse and validate the answer; an invalid answer is asked again with the error fed back, up to
``answer_retries`` times; an endpoint that stays unreachable (after the transport retries) or answers that
stay invalid lead to the documented fallback action (:mod:`policies.agent.fallback`), recorded as such.
The env is only ever stepped with a validated action, so the agent cannot corrupt the model. Only a refused
configuration (HTTP 401/403/404: key, model, URL) and a diverging replay raise.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prune_env.env import short_unit_names

from ..base import EnvView, StepOutcome
from .answer import AnswerError, answer_schema, parse_answer, validate_answer
from .chat import ChatSession
from .fallback import fallback_action
from .pacing import pace_action
from .prompt import HistoryEntry, build_messages, retry_messages
from .server import LocalServer
from .settings import AgentSettings

CUT_OFF_HINT = " (the answer was cut off at the token limit: keep reflection and rationale to one sentence each)"


@dataclass
class StepRecord:
    """What the agent did to choose one action (returned by :meth:`LLMAgent.record`)."""

    step: int
    action: list[int] = field(default_factory=list)
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
    response_format: str = ""

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
            "latency_s": self.latency_s, "response_format": self.response_format,
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
        self.history: list[HistoryEntry] = []
        self._view: EnvView | None = None
        self._current: StepRecord | None = None
        self._last: dict[str, Any] = {}

    # ------------------------------------------------------------------ Policy interface
    def reset(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> None:
        self._view = view
        self._short = short_unit_names(list(view.unit_names))
        self._schema = answer_schema(self._short, view.n_levels)
        self.history = []
        self._ppl = float(info["ppl"])
        self._current = None
        self._last = {}

    def act(self, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        view = self._require_view()
        rec = StepRecord(step=len(self.history) + 1)
        base = build_messages(view, obs, self.history, history_size=self.settings.history_size,
                              reflection_chars=self.settings.reflection_chars)
        messages = base
        action: np.ndarray | None = None
        for attempt in range(self.settings.answer_retries + 1):
            call = self.session.complete(messages, self._schema, step=rec.step)
            rec.response_format = self.session.format_mode  # after the call: auto mode may have moved on
            rec.requests += call.tries
            rec.network_retries += call.tries - 1
            rec.transport_errors += call.errors
            rec.prompt_tokens += call.prompt_tokens
            rec.completion_tokens += call.completion_tokens
            rec.latency_s += call.latency_s
            if call.reply is None:
                rec.fallback_reason = f"no answer from the endpoint: {call.errors[-1] if call.errors else 'unknown'}"
                break
            rec.answer_retries = attempt
            try:
                answer = parse_answer(call.reply.content)
                rec.rationale, rec.reflection = answer.rationale, answer.reflection
                action = validate_answer(answer, short_names=self._short, full_names=view.unit_names,
                                         sparsity=obs["sparsity"], n_levels=view.n_levels,
                                         step_size=view.step_size, cap=view.max_unit_sparsity)
                break
            except AnswerError as e:
                error = str(e) + (CUT_OFF_HINT if call.reply.finish_reason == "length" else "")
                rec.answer_errors.append(error)
                messages = retry_messages(base, call.reply.content or "", error)
        else:
            rec.fallback_reason = f"{len(rec.answer_errors)} invalid answers, the last: {rec.answer_errors[-1]}"
        if action is None:
            rec.fallback = True
            action = fallback_action(obs, step_size=view.step_size, cap=view.max_unit_sparsity)
        if self.settings.pace:  # top up too-small actions so the target stays reachable (.pacing)
            action, rec.topped_up_levels = pace_action(action, obs, np.asarray(view.unit_numel), step_size=view.step_size,
                                                       n_levels=view.n_levels, cap=view.max_unit_sparsity)
        rec.action = [int(a) for a in action]
        self._current = rec
        self._last = rec.as_dict()
        if self.session.transcript is not None:
            self.session.transcript.write({"type": "decision", "step": rec.step, "action": rec.action,
                                           "fallback": rec.fallback, "fallback_reason": rec.fallback_reason,
                                           "topped_up_levels": rec.topped_up_levels})
        return action

    def observe(self, outcome: StepOutcome) -> None:
        rec = self._current
        info = outcome.info
        ppl_after = float(info.get("rejected_ppl", info["ppl"])) if outcome.rolled_back else float(info["ppl"])
        levels = {self._short[i]: int(a) for i, a in enumerate(np.asarray(outcome.action)) if a}
        self.history.append(HistoryEntry(
            step=len(self.history) + 1, levels=levels, ppl_before=self._ppl, ppl_after=ppl_after,
            sparsity_after=float(outcome.obs["global_sparsity"][0]), rolled_back=outcome.rolled_back,
            fallback=bool(rec and rec.fallback), rationale=rec.rationale if rec else "",
            reflection=rec.reflection if rec else ""))
        self._ppl = float(info["ppl"])
        self._current = None

    def recall(self, extras: dict[str, Any]) -> None:
        """Resume (:class:`policies.base.Recalling`): the next observed step was decided with these extras."""
        self._current = StepRecord(step=len(self.history) + 1, rationale=str(extras.get("rationale") or ""),
                                   reflection=str(extras.get("reflection") or ""),
                                   fallback=bool(extras.get("fallback", False)))

    def record(self) -> dict[str, Any]:
        """The last decision: rationale, reflection, tokens, requests, retries, errors, fallback, latency."""
        return dict(self._last)

    def close(self) -> None:
        """Stop the local server this agent started, if any (idempotent)."""
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> LLMAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _require_view(self) -> EnvView:
        if self._view is None:
            raise RuntimeError("call reset(view, obs, info) before act()")
        return self._view
