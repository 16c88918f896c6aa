"""Chat requests with retries, backoff, ``response_format`` negotiation and a transcript of every try.

:class:`ChatSession` builds the request body, sends it through a transport, retries network errors,
timeouts and HTTP 408/409/429/5xx with exponential backoff (``backoff * 2**k``, capped), and writes a
``request`` and a ``response``/``error`` record per try. In ``auto`` response-format mode it starts with
``json_schema``; if the very first answers are HTTP 400/422/500 (servers that do not know that format, such as
llama-cpp-python's), it moves to ``json_object`` with the schema inline, then to no ``response_format``, and
keeps the first mode that works for the rest of the run. Because all of this is a function of the replies,
a replayed transcript takes exactly the same path.

A :class:`StepBudget` bounds the time all tries of one agent step may take (``step_time_limit_s``): each
request's timeout is cut to what is left, and no backoff is waited that would pass it. It counts request
latencies and the backoff delays (in a replay the recorded latencies), so a replay gives up where the
recorded run gave up. ``liveness`` (set by the agent that owns a local server) is called before and after
every try and raises :class:`EndpointError` as soon as that server's process has exited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .answer import response_format
from .settings import AgentSettings
from .transcript import TranscriptWriter
from .transport import ChatReply, ChatTransport, TransportError

AUTO_FORMATS = ("json_schema", "json_object", "none")
FORMAT_REJECTED = frozenset({400, 422, 500})  # how servers answer a response_format they do not support
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"  # the openai client's base URL when none is configured
RESUME_FIX = ("start (or restart) the server, check the base URL (OPENAI_BASE_URL or PRUNE_GYM_AGENT_BASE_URL), "
              "then continue the run with `prune-gym run --resume DIR` (the run directory keeps every finished "
              "step)")


class EndpointError(RuntimeError):
    """The agent's endpoint cannot serve the episode: it refuses the configuration (HTTP 401/403/404), the local
    server process exited, or ``max_endpoint_failures`` consecutive steps failed for transport reasons.

    ``endpoint`` is the base URL, ``reason`` what failed, ``fix`` what to do, ``details`` more (a server log's
    last lines); the message holds them all.
    Raised out of :meth:`LLMAgent.act`, never hidden behind a fallback (a run of fallbacks must not pass for an
    agent's run); the runner restores the last checkpoint and wraps it in ``EpisodeError`` (its ``__cause__``).
    """

    def __init__(self, endpoint: str, reason: str, fix: str = RESUME_FIX, *, details: str = "") -> None:
        message = f"the agent's endpoint {endpoint} is unusable: {reason}. Fix: {fix}"
        super().__init__(message + (f"\n{details}" if details else ""))
        self.endpoint, self.reason, self.fix, self.details = endpoint, reason, fix, details


@dataclass
class StepBudget:
    """Seconds one agent step may spend on its endpoint, all tries and backoffs together."""

    limit_s: float
    spent_s: float = 0.0

    @property
    def left_s(self) -> float:
        return self.limit_s - self.spent_s

    @property
    def exhausted(self) -> bool:
        return self.left_s <= 0.0


@dataclass
class CallResult:
    """The outcome of one :meth:`ChatSession.complete`: a reply, or the errors that exhausted the retries."""

    reply: ChatReply | None
    tries: int = 0
    errors: list[str] = field(default_factory=list)
    latency_s: float = 0.0                     # time spent in requests, backoff excluded
    wait_s: float = 0.0                        # requests plus backoff waits: what the call cost the episode
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_down: bool = False                    # the last try failed for a transport reason (connection, timeout, 5xx)
    out_of_time: bool = False                  # gave up because the step's time budget ran out

    @property
    def endpoint_down(self) -> bool:
        """No reply, and the endpoint looks down: the last try failed for a transport reason, or the step's
        time ran out before a reply came."""
        return self.reply is None and (self.out_of_time or self.last_down)


def backoff_delay(retry: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``retry`` (0-based): ``base * 2**retry``, at most ``cap``."""
    return min(cap, base * 2.0 ** retry)


class ChatSession:
    """Sends the agent's requests; owns retries, the response-format mode and the transcript."""

    def __init__(self, transport: ChatTransport, settings: AgentSettings, *,
                 transcript: TranscriptWriter | None = None, sleep: Callable[[float], None] = time.sleep,
                 liveness: Callable[[], None] | None = None) -> None:
        self.transport = transport
        self.settings = settings
        self.transcript = transcript
        self.sleep = sleep
        self.liveness = liveness  # raises EndpointError when the endpoint is known dead (a local server exited)
        auto = settings.response_format == "auto"
        self._formats = list(AUTO_FORMATS) if auto else [settings.response_format]
        self._format_settled = not auto
        self._n = 0

    @property
    def endpoint(self) -> str:
        """The base URL requests go to."""
        return self.settings.base_url or OPENAI_DEFAULT_URL

    @property
    def format_mode(self) -> str:
        """The response-format mode the next request uses."""
        return self._formats[0]

    def build_request(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> dict[str, Any]:
        """The JSON body of one Chat Completions request."""
        s = self.settings
        request: dict[str, Any] = {"model": s.model, "messages": messages, "temperature": s.temperature,
                                   "max_tokens": s.max_tokens}
        if s.seed is not None:
            request["seed"] = s.seed
        fmt = response_format(self.format_mode, schema)
        if fmt is not None:
            request["response_format"] = fmt
        return request

    def _record(self, record: dict[str, Any]) -> None:
        if self.transcript is not None:
            self.transcript.write(record)

    def _check_alive(self) -> None:
        if self.liveness is not None:
            self.liveness()

    def _send(self, request: dict[str, Any], step: int, attempt: int,
              timeout: float | None) -> tuple[ChatReply | None, TransportError | None, float]:
        self._n += 1
        self._record({"type": "request", "n": self._n, "step": step, "attempt": attempt, "request": request})
        start = time.perf_counter()
        reply: ChatReply | None = None
        error: TransportError | None = None
        try:
            reply = self.transport.send(request, timeout=timeout)
        except TransportError as e:
            error = e
        latency = time.perf_counter() - start
        recorded = getattr(self.transport, "last_latency_s", None)  # a replay counts the recorded time
        if recorded is not None:
            latency = float(recorded)
        if error is not None:
            self._record({"type": "error", "n": self._n, "error": error.to_record(), "latency_s": latency})
        else:
            assert reply is not None
            self._record({"type": "response", "n": self._n, "reply": reply.to_record(), "latency_s": latency})
        return reply, error, latency

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any], *, step: int,
                 budget: StepBudget | None = None) -> CallResult:
        """One answer from the endpoint, retrying what may pass; ``reply`` is None when the retries (or the
        step's ``budget``) ran out or the error cannot pass by retrying. Raises EndpointError on HTTP
        401/403/404 and when ``liveness`` says the endpoint is gone."""
        result = CallResult(reply=None)
        retries = 0
        while True:
            self._check_alive()
            if budget is not None and budget.exhausted:
                result.out_of_time = True
                result.errors.append(f"step time limit of {budget.limit_s:g} s reached")
                return result
            timeout = None
            if budget is not None and budget.left_s < self.settings.timeout:
                timeout = budget.left_s  # the step's last request may only take what is left of its time
            result.tries += 1
            reply, error, latency = self._send(self.build_request(messages, schema), step, result.tries, timeout)
            result.latency_s += latency
            result.wait_s += latency
            if budget is not None:
                budget.spent_s += latency
            if reply is not None:
                self._format_settled = True
                result.reply = reply
                result.prompt_tokens += reply.prompt_tokens or 0
                result.completion_tokens += reply.completion_tokens or 0
                return result
            assert error is not None
            result.errors.append(str(error))
            result.last_down = error.endpoint_down
            self._check_alive()  # a dead local server: say so now, not after the retries
            if error.fatal:
                raise EndpointError(self.endpoint, f"it refused the request ({error})",
                                    "check the base URL (OPENAI_BASE_URL), the model name (OPENAI_MODEL) and "
                                    "the API key (OPENAI_API_KEY)")
            if not self._format_settled and error.status in FORMAT_REJECTED and len(self._formats) > 1:
                self._formats.pop(0)  # try the next response_format at once; not counted as a retry
                continue
            if not error.retryable or retries >= self.settings.max_retries:
                return result
            delay = backoff_delay(retries, self.settings.backoff, self.settings.max_backoff)
            if budget is not None and delay >= budget.left_s:
                result.out_of_time = True
                result.errors.append(f"step time limit of {budget.limit_s:g} s reached")
                return result
            self.sleep(delay)
            result.wait_s += delay
            if budget is not None:
                budget.spent_s += delay
            retries += 1
