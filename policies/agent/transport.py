"""One Chat Completions request, sent once: the transport interface and its ``openai`` implementation.

A transport sends a request dict (the JSON body of ``/v1/chat/completions``) and returns a :class:`ChatReply`
or raises :class:`TransportError`. Retrying is not its job (:mod:`policies.agent.chat` does it, so every try
is recorded): the ``openai`` client is built with ``max_retries=0``. The replay transport in
:mod:`policies.agent.transcript` implements the same interface from a recorded run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every 5xx
FATAL_STATUS = frozenset({401, 403, 404})      # wrong key, no access, unknown model or URL: retrying cannot help


@dataclass(frozen=True)
class ChatReply:
    """What the agent uses of a Chat Completions response."""

    content: str | None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ChatReply:
        return cls(**record)


class TransportError(Exception):
    """A request that got no usable response: ``kind`` is connection, timeout, http or invalid_response."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{kind}{f' {status}' if status else ''}: {message}")
        self.kind, self.message, self.status = kind, message, status

    @property
    def retryable(self) -> bool:
        """Network errors, timeouts, unreadable bodies, HTTP 408/409/429 and 5xx may pass on a later try."""
        return self.kind in ("connection", "timeout", "invalid_response") or (
            self.status is not None and (self.status in RETRYABLE_STATUS or self.status >= 500))

    @property
    def endpoint_down(self) -> bool:
        """A transport failure that says the endpoint is not serving: connection refused or reset, a timeout,
        HTTP 5xx (what :class:`policies.agent.policy.LLMAgent` counts toward ``max_endpoint_failures``)."""
        return self.kind in ("connection", "timeout") or (self.status is not None and self.status >= 500)

    @property
    def fatal(self) -> bool:
        """A configuration error (key, model name, URL) that no retry or fallback should hide."""
        return self.status in FATAL_STATUS

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, "status": self.status}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TransportError:
        return cls(record["kind"], record["message"], record.get("status"))


class ChatTransport(Protocol):
    """Sends one request; no retries."""

    def send(self, request: dict[str, Any], *, timeout: float | None = None) -> ChatReply:
        """The reply, or TransportError. ``timeout``: seconds for this request (None: the transport's own),
        so a step's time limit also bounds its last request."""


class OpenAITransport:
    """A transport over the ``openai`` client: any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp)."""

    def __init__(self, *, base_url: str | None, api_key: str, timeout: float) -> None:
        try:
            import openai
        except ImportError as e:
            raise ImportError("the LLM agent needs the openai client: pip install 'prune-gym[agent]'") from e
        self._openai = openai
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)

    def send(self, request: dict[str, Any], *, timeout: float | None = None) -> ChatReply:
        openai = self._openai
        extra = {} if timeout is None else {"timeout": timeout}
        try:
            response = self.client.chat.completions.create(**request, **extra)
        except openai.APITimeoutError as e:
            raise TransportError("timeout", str(e)) from e
        except openai.APIConnectionError as e:
            raise TransportError("connection", str(e)) from e
        except openai.APIStatusError as e:
            raise TransportError("http", _status_message(e), e.status_code) from e
        except openai.APIResponseValidationError as e:  # a 2xx body the client cannot read
            raise TransportError("invalid_response", str(e)) from e
        except openai.OpenAIError as e:  # anything else the client raises: no answer this time
            raise TransportError("client", f"{type(e).__name__}: {e}") from e
        if not response.choices:
            raise TransportError("invalid_response", "the response has no choices")
        choice = response.choices[0]
        usage = response.usage
        return ChatReply(content=choice.message.content, finish_reason=choice.finish_reason,
                         prompt_tokens=getattr(usage, "prompt_tokens", None),
                         completion_tokens=getattr(usage, "completion_tokens", None), model=response.model)


def _status_message(error: Any) -> str:
    """A short message of an HTTP error: the server's own error text when it sent one."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:500]
        if isinstance(inner, str):
            return inner[:500]
    return str(error)[:500]
