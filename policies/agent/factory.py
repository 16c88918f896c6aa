"""Building the agent: :func:`make_agent` (any endpoint, the local server, or a replayed transcript) and
:func:`local_agent` (the offline default as a context manager)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from .chat import ChatSession
from .policy import LLMAgent
from .server import LocalServer
from .settings import NO_KEY, AgentSettings, resolve_settings, settings_from_record
from .transcript import ReplayTransport, TranscriptWriter, transcript_settings
from .transport import ChatTransport, OpenAITransport

# LocalServer options also accepted flat among make_agent's options (e.g. `--agent-option n_threads=1`)
SERVER_KEYS = ("model_path", "log_path", "n_ctx", "n_threads", "startup_timeout")


def _server_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    """LocalServer keyword arguments; numbers given as strings (from a command line) are parsed."""
    out = dict(options)
    for key, kind in (("n_ctx", int), ("n_threads", int), ("startup_timeout", float)):
        if isinstance(out.get(key), str):
            out[key] = kind(out[key])
    return out


def _no_sleep(_: float) -> None:
    """Replays do not wait out the recorded backoffs."""


def make_agent(*, transcript_path: str | Path | None = None, replay_path: str | Path | None = None,
               local: bool | None = None, server_options: Mapping[str, Any] | None = None,
               env: Mapping[str, str] | None = None, transport: ChatTransport | None = None,
               sleep: Callable[[float], None] | None = None, **options: Any) -> LLMAgent:
    """An :class:`LLMAgent`.

    ``options`` are :class:`AgentSettings` fields (``base_url``, ``model``, ``api_key``, ``temperature``,
    ``seed``, ``max_retries``, ``timeout``, ``history_size``, ``answer_retries``, ``max_tokens``,
    ``response_format``, ``pace``, ``rollback_reserve``, ``memory``, ``context_tokens`` (the local server's
    ``n_ctx`` with ``local``), ``max_endpoint_failures``, ``step_time_limit_s``, ...); unset ones come from ``env`` (default ``os.environ``: ``PRUNE_GYM_AGENT_*``, then ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``
    / ``OPENAI_MODEL``), then the defaults.

    * ``local``: start the local llama.cpp server (SmolLM2-135M-Instruct; ``server_options``, or the flat
      options ``model_path``, ``log_path``, ``n_ctx``, ``n_threads``, ``startup_timeout``, go to
      :class:`LocalServer`) and talk to it; the agent owns it and ``agent.close()`` stops it. Default
      (``None``): local exactly when neither a base URL nor a model is configured anywhere.
    * ``transcript_path``: write every request and response there (JSONL, as it goes).
    * ``replay_path``: serve the responses of that transcript instead of calling an endpoint, with the
      settings it recorded (``options`` are ignored), so the run repeats exactly.
    * ``transport``: another way to send requests (default: the ``openai`` client).
    """
    server: LocalServer | None = None
    server_options = {**(server_options or {}), **{k: options.pop(k) for k in SERVER_KEYS if k in options}}
    if replay_path is not None:
        settings: AgentSettings = settings_from_record(transcript_settings(replay_path))
        transport = ReplayTransport(replay_path)
        sleep = sleep or _no_sleep
    else:
        settings = resolve_settings(os.environ if env is None else env, **options)
        if local is None:
            local = transport is None and settings.base_url is None and settings.model is None
        if local:  # ready once a completion in the agent's response_format mode has answered
            fmt = "json_object" if settings.response_format == "auto" else settings.response_format
            server = LocalServer(**_server_kwargs(server_options), response_format=fmt).start()
            settings = replace(settings, base_url=server.base_url, model=server.model, api_key=NO_KEY,
                               response_format=fmt, context_tokens=server.spec.n_ctx)
        if not settings.model:
            raise ValueError("the agent needs a model name: pass model=... or set OPENAI_MODEL (or "
                             "PRUNE_GYM_AGENT_MODEL); or leave base URL and model unset for the local server")
        transport = transport or OpenAITransport(base_url=settings.base_url, api_key=settings.api_key,
                                                 timeout=settings.timeout)
    writer = None
    if transcript_path is not None:
        writer = TranscriptWriter(transcript_path, settings.public(),
                                  replay_of=str(replay_path) if replay_path is not None else None)
    session = ChatSession(transport, settings, transcript=writer, sleep=sleep or time.sleep)
    return LLMAgent(settings, session, server=server)


@contextmanager
def local_agent(*, model_path: str | Path | None = None, server_log: str | Path | None = None,
                n_ctx: int = 4096, n_threads: int | None = None, startup_timeout: float = 120.0,
                **agent_options: Any) -> Iterator[LLMAgent]:
    """The offline default as a context manager: start ``llama_cpp.server`` with the SmolLM2-135M-Instruct
    GGUF (or ``model_path``) on a free local port, yield an agent on it (``response_format="json_object"``,
    the mode that server supports), stop the server on exit. ``agent_options`` go to :func:`make_agent`.

    >>> with local_agent(transcript_path="runs/agent/transcript.jsonl") as agent:   # doctest: +SKIP
    ...     run_episode(env, agent, steps_path="runs/agent/steps.jsonl")
    """
    server = {"model_path": model_path, "log_path": server_log, "n_ctx": n_ctx, "n_threads": n_threads,
              "startup_timeout": startup_timeout}
    agent = make_agent(local=True, server_options=server, **agent_options)
    try:
        yield agent
    finally:
        agent.close()
