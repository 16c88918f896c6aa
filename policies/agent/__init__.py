"""The LLM agent: a policy that asks any OpenAI-compatible Chat Completions endpoint what to prune next.

Modules, one job each: ``settings`` (options and environment variables), ``prompt`` (pure prompt building),
``answer`` (schema, tolerant parser, validator), ``fallback`` (the action taken without a valid answer),
``memory`` (the outcome memory: per-unit cost, rolled-back steps, pure), ``pacing`` (the pace and the
top-up, pure), ``accounting`` (whose pruning it was: the LLM's, pacing's or the fallback's, pure), ``transport`` (one
request via the ``openai`` client), ``chat`` (retries, backoff, response-format mode, the step time limit,
:class:`EndpointError`, transcript records), ``transcript`` (JSONL writer, replay), ``policy``
(:class:`LLMAgent`), ``server`` (the local llama.cpp server), ``factory`` (:func:`make_agent`,
:func:`local_agent`). See docs/AGENT.md.
"""

from .chat import EndpointError
from .factory import local_agent, make_agent
from .policy import LLMAgent
from .server import LocalServer
from .settings import AgentSettings

__all__ = ["AgentSettings", "EndpointError", "LLMAgent", "LocalServer", "local_agent", "make_agent"]
