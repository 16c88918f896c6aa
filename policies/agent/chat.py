"""Chat requests with retries, backoff, ``response_format`` negotiation and a transcript of every try.

:class:`ChatSession` builds the request body, sends it through a transport, retries network errors,
timeouts and HTTP 408/409/429/5xx with exponential backoff (``backoff * 2**k``, capped), and writes a
``request`` and a ``response``/``error`` record per try. In ``auto`` response-format mode it starts with
``json_schema``; if the very first answers are HTTP 400/422/500 (servers that do not know that format, such as
llama-cpp-python's), it moves to ``json_object`` with the schema inline, then to no ``response_format``, and
keeps the first mode that works for the rest of the run. Because all of this is a function of the replies,
a replayed transcript takes exactly the same path.
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


class EndpointError(RuntimeError):
    """The endpoint refuses the configuration (HTTP 401/403/404): raised, never hidden behind a fallback."""


@dataclass
class CallResult:
    """The outcome of one :meth:`ChatSession.complete`: a reply, or the errors that exhausted the retries."""

    reply: ChatReply | None
    tries: int = 0
    errors: list[str] = field(default_factory=list)
    latency_s: float = 0.0                     # time spent in requests, backoff excluded
    prompt_tokens: int = 0
    completion_tokens: int = 0


def backoff_delay(retry: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``retry`` (0-based): ``base * 2**retry``, at most ``cap``."""
    return min(cap, base * 2.0 ** retry)


class ChatSession:
    """Sends the agent's requests; owns retries, the response-format mode and the transcript."""

    def __init__(self, transport: ChatTransport, settings: AgentSettings, *,
                 transcript: TranscriptWriter | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.transport = transport
        self.settings = settings
        self.transcript = transcript
        self.sleep = sleep
        auto = settings.response_format == "auto"
        self._formats = list(AUTO_FORMATS) if auto else [settings.response_format]
        self._format_settled = not auto
        self._n = 0

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

    def _send(self, request: dict[str, Any], step: int, attempt: int) -> tuple[ChatReply | None, TransportError | None, float]:
        self._n += 1
        self._record({"type": "request", "n": self._n, "step": step, "attempt": attempt, "request": request})
        start = time.perf_counter()
        try:
            reply = self.transport.send(request)
        except TransportError as e:
            latency = time.perf_counter() - start
            self._record({"type": "error", "n": self._n, "error": e.to_record(), "latency_s": latency})
            return None, e, latency
        latency = time.perf_counter() - start
        self._record({"type": "response", "n": self._n, "reply": reply.to_record(), "latency_s": latency})
        return reply, None, latency

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any], *, step: int) -> CallResult:
        """One answer from the endpoint, retrying what may pass; ``reply`` is None when the retries ran out
        or the error cannot pass by retrying. Raises EndpointError on HTTP 401/403/404."""
        result = CallResult(reply=None)
        retries = 0
        while True:
            result.tries += 1
            reply, error, latency = self._send(self.build_request(messages, schema), step, result.tries)
            result.latency_s += latency
            if reply is not None:
                self._format_settled = True
                result.reply = reply
                result.prompt_tokens += reply.prompt_tokens or 0
                result.completion_tokens += reply.completion_tokens or 0
                return result
            assert error is not None
            result.errors.append(str(error))
            if error.fatal:
                raise EndpointError(f"the agent's endpoint refused the request ({error}); check the base URL "
                                    f"(OPENAI_BASE_URL), the model name (OPENAI_MODEL) and the API key "
                                    f"(OPENAI_API_KEY)")
            if not self._format_settled and error.status in FORMAT_REJECTED and len(self._formats) > 1:
                self._formats.pop(0)  # try the next response_format at once; not counted as a retry
                continue
            if not error.retryable or retries >= self.settings.max_retries:
                return result
            self.sleep(backoff_delay(retries, self.settings.backoff, self.settings.max_backoff))
            retries += 1
