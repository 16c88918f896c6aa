"""The LLM agent's settings: one validated dataclass, resolved from arguments and environment variables.

Every setting can come from a keyword argument (first), a ``PRUNE_GYM_AGENT_*`` variable, or, for the four
the ``openai`` ecosystem already names, the usual ``OPENAI_*`` variable. Resolution is a pure function of the
arguments and an environment mapping, so tests pass their own mapping instead of touching ``os.environ``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")
NO_KEY = "no-key"  # local servers (llama.cpp, vLLM, Ollama) accept any key; the openai client wants a non-empty one

# setting -> environment variables, first match wins
ENV_VARS: Mapping[str, tuple[str, ...]] = {
    "base_url": ("PRUNE_GYM_AGENT_BASE_URL", "OPENAI_BASE_URL"),
    "api_key": ("PRUNE_GYM_AGENT_API_KEY", "OPENAI_API_KEY"),
    "model": ("PRUNE_GYM_AGENT_MODEL", "OPENAI_MODEL"),
    "temperature": ("PRUNE_GYM_AGENT_TEMPERATURE",),
    "seed": ("PRUNE_GYM_AGENT_SEED",),
    "timeout": ("PRUNE_GYM_AGENT_TIMEOUT",),
    "max_retries": ("PRUNE_GYM_AGENT_MAX_RETRIES",),
    "answer_retries": ("PRUNE_GYM_AGENT_ANSWER_RETRIES",),
    "history_size": ("PRUNE_GYM_AGENT_HISTORY",),
    "max_tokens": ("PRUNE_GYM_AGENT_MAX_TOKENS",),
    "response_format": ("PRUNE_GYM_AGENT_RESPONSE_FORMAT",),
    "pace": ("PRUNE_GYM_AGENT_PACE",),
    "rollback_reserve": ("PRUNE_GYM_AGENT_ROLLBACK_RESERVE",),
    "memory": ("PRUNE_GYM_AGENT_MEMORY",),
    "scaffold_band": ("PRUNE_GYM_AGENT_SCAFFOLD_BAND",),
    "bar_rejected": ("PRUNE_GYM_AGENT_BAR_REJECTED",),
    "context_tokens": ("PRUNE_GYM_AGENT_CONTEXT_TOKENS",),
    "max_endpoint_failures": ("PRUNE_GYM_AGENT_MAX_ENDPOINT_FAILURES",),
    "step_time_limit_s": ("PRUNE_GYM_AGENT_STEP_TIME_LIMIT",),
}


@dataclass(frozen=True)
class AgentSettings:
    """Everything that defines how the agent talks to its endpoint and what its prompt holds."""

    base_url: str | None = None      # e.g. http://127.0.0.1:8080/v1 (None: the openai client's default, api.openai.com)
    api_key: str = NO_KEY
    model: str | None = None         # the endpoint's model name (required unless replaying)
    temperature: float = 0.0
    seed: int | None = 0             # sent as `seed` (servers that support it sample reproducibly)
    timeout: float = 120.0           # seconds per HTTP request
    max_retries: int = 4             # network errors, timeouts, HTTP 408/409/429/5xx: retried with backoff
    backoff: float = 0.5             # first backoff in seconds, doubled per retry
    max_backoff: float = 8.0
    answer_retries: int = 2          # invalid answers re-asked with the error fed back, then the fallback
    history_size: int = 8            # past steps shown in full in the prompt (older ones are summarised)
    reflection_chars: int = 240      # each past rationale/reflection is cut to this length in the prompt
    max_tokens: int = 384            # completion budget per request
    response_format: str = "auto"    # auto | json_schema | json_object | none
    pace: bool = True                # top up too-small actions so the target stays reachable (agent/pacing.py)
    rollback_reserve: int = 4        # spare steps pacing keeps for rollbacks (each rollback spends one)
    memory: bool = True              # the outcome memory in the prompt: per-unit cost, rolled-back steps (agent/memory.py)
    scaffold_band: float = 0.15      # pacing and the fallback rank units more than this above the global sparsity last
    bar_rejected: bool = True        # after a rollback, the model's own rejected choices are barred until a step is kept
    context_tokens: int = 4096       # the agent model's context window; the prompt stays within it minus max_tokens
    max_endpoint_failures: int = 2   # this many consecutive steps without a reply (transport errors): EndpointError
    step_time_limit_s: float = 300.0  # all tries of one step together; past it the step counts as failed

    def validate(self) -> AgentSettings:
        """Return self, or raise ValueError naming the setting and the fix."""
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {RESPONSE_FORMATS}, got {self.response_format!r}")
        checks = [
            ("temperature", self.temperature >= 0, ">= 0"),
            ("timeout", self.timeout > 0, "> 0 seconds"),
            ("max_retries", self.max_retries >= 0, ">= 0"),
            ("backoff", self.backoff >= 0, ">= 0 seconds"),
            ("max_backoff", self.max_backoff >= self.backoff, ">= backoff"),
            ("answer_retries", self.answer_retries >= 0, ">= 0"),
            ("history_size", self.history_size >= 0, ">= 0"),
            ("reflection_chars", self.reflection_chars >= 20, ">= 20"),
            ("max_tokens", self.max_tokens >= 32, ">= 32"),
            ("rollback_reserve", self.rollback_reserve >= 0, ">= 0 steps"),
            ("scaffold_band", 0 <= self.scaffold_band <= 1, "in [0, 1] (global sparsity)"),
            ("context_tokens", self.context_tokens > self.max_tokens, f"> max_tokens ({self.max_tokens})"),
            ("max_endpoint_failures", self.max_endpoint_failures >= 1, ">= 1 step"),
            ("step_time_limit_s", self.step_time_limit_s > 0, "> 0 seconds"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"agent setting {name} must be {want}, got {getattr(self, name)!r}")
        return self

    def public(self) -> dict[str, Any]:
        """The settings without the API key (what a transcript records)."""
        out = asdict(self)
        out["api_key"] = "<set>" if self.api_key != NO_KEY else NO_KEY
        return out


def _coerce(name: str, raw: str) -> Any:
    kind = {f.name: f.type for f in fields(AgentSettings)}[name]
    if kind == "bool":
        if raw.strip().lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"agent setting {name} must be true or false, got {raw!r}")
        return raw.strip().lower() in ("1", "true", "yes", "on")
    try:
        if "int" in kind and "float" not in kind:
            return None if raw.strip().lower() in ("", "none") and "None" in kind else int(raw)
        if "float" in kind:
            return float(raw)
    except ValueError as e:
        raise ValueError(f"agent setting {name} must be a number, got {raw!r}") from e
    return raw


def resolve_settings(env: Mapping[str, str], **options: Any) -> AgentSettings:
    """Settings from ``options`` (None means unset), then the environment variables of ``ENV_VARS``, then the
    defaults; validated."""
    known = {f.name for f in fields(AgentSettings)}
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown agent setting(s) {sorted(unknown)}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for name in known:
        if options.get(name) is not None:  # strings (KEY=VALUE from a command line) are parsed like env values
            raw = options[name]
            values[name] = _coerce(name, raw) if isinstance(raw, str) else raw
            continue
        for var in ENV_VARS.get(name, ()):
            if env.get(var):
                values[name] = _coerce(name, env[var])
                break
    return AgentSettings(**values).validate()


def settings_from_record(record: Mapping[str, Any]) -> AgentSettings:
    """Rebuild the settings a transcript recorded (the API key is never recorded)."""
    known = {f.name for f in fields(AgentSettings)}
    values = {k: v for k, v in record.items() if k in known and k != "api_key"}
    return AgentSettings(**values).validate()
