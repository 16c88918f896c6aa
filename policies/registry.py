"""Policy names -> factories, so any policy can be named from the command line.

Kernel-specific baselines (``uniform-wanda``, ``owl-sparsegpt``, ...) need the env built with that kernel:
:func:`required_method` says which (``None``: any). The ``agent`` entry is imported lazily, only when made.

A name may carry options for its factory after colons: ``evo-search:budget_tokens=2000000:offspring=32``
(values are read as int, float, ``true``/``false`` or text). The full string is the policy's name in a
comparison, so one policy can run twice with different options (e.g. a budget-matched and a large-budget
search); inline options take precedence over options passed in code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .base import Policy


@dataclass(frozen=True)
class PolicySpec:
    """How to make a policy: ``factory`` is ``"module:attribute"`` (imported when made) plus fixed options."""

    factory: str
    required_method: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    description: str = ""
    uses_rollback: bool = False  # runs under AutoRollback (the agent's loop); fixed-plan baselines run without it
    is_search: bool = False      # a budgeted search: takes ``budget_tokens`` (validation tokens), which compare sets
                                 # to what the agent of the same comparison evaluated

    def load(self) -> Callable[..., Policy]:
        module, _, attr = self.factory.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"policy factory {self.factory} cannot be imported ({err}); is that part of prune-gym "
                             "installed?") from err


def _uniform(kernel: str) -> PolicySpec:
    return PolicySpec("policies.baselines.uniform:UniformPolicy", kernel, (("kernel", kernel),),
                      f"every unit at the target with {kernel}")


def _owl(kernel: str) -> PolicySpec:
    return PolicySpec("policies.baselines.owl:OwlPolicy", kernel, (("kernel", kernel),),
                      f"OWL outlier-weighted allocation (M=5, lambda=0.08) with {kernel}")


def _dlp(kernel: str) -> PolicySpec:
    return PolicySpec("policies.baselines.dlp:DlpPolicy", kernel, (("kernel", kernel),),
                      f"DLP allocation by mean Wanda score (alpha 0.04/0.10/0.15 at 50/60/70%) with {kernel}")


def _alphapruning(kernel: str) -> PolicySpec:
    return PolicySpec("policies.baselines.alphapruning:AlphaPruningPolicy", kernel, (("kernel", kernel),),
                      f"AlphaPruning allocation by ESD power-law alpha (Hill) with {kernel}")


POLICIES: MappingProxyType[str, PolicySpec] = MappingProxyType({
    "uniform-magnitude": _uniform("magnitude"),
    "uniform-wanda": _uniform("wanda"),
    "uniform-sparsegpt": _uniform("sparsegpt"),
    "owl-wanda": _owl("wanda"),
    "owl-sparsegpt": _owl("sparsegpt"),
    "dlp-wanda": _dlp("wanda"),
    "dlp-sparsegpt": _dlp("sparsegpt"),
    "alphapruning-magnitude": _alphapruning("magnitude"),
    "alphapruning-wanda": _alphapruning("wanda"),
    "alphapruning-sparsegpt": _alphapruning("sparsegpt"),
    "greedy-sensitivity": PolicySpec("policies.baselines.greedy:GreedySensitivityPolicy",
                                     description="each step prunes the least sensitive units by the z-scores"),
    "random-search": PolicySpec("policies.baselines.random_search:RandomSearchPolicy",
                                description="evolutionary search over allocations with a budget of evaluations",
                                is_search=True),
    "evo-search": PolicySpec("policies.baselines.evo_search:EvoSearchPolicy",
                             description="EvoPress-style evolutionary search (level switches, staged KL selection) "
                                         "with a budget of validation tokens", is_search=True),
    "structured": PolicySpec("policies.baselines.structured:StructuredPolicy",
                             description="ShortGPT: remove the decoder blocks of lowest influence"),
    "agent": PolicySpec("policies.agent:make_agent", description="the LLM agent (policies/agent)",
                        uses_rollback=True),
})
ALIASES = MappingProxyType({"owl": "owl-wanda", "greedy": "greedy-sensitivity", "dlp": "dlp-wanda",
                            "alphapruning": "alphapruning-wanda"})


def parse_name(name: str) -> tuple[str, dict[str, Any]]:
    """``"base:key=value:..."`` -> ``(base, {key: value})``; a ValueError naming a malformed option."""
    base, *parts = name.split(":")
    options: dict[str, Any] = {}
    for part in parts:
        key, eq, raw = part.partition("=")
        if not eq or not key.strip() or not raw.strip():
            raise ValueError(f"policy {name!r}: option {part!r} must look like key=value "
                             "(e.g. evo-search:budget_tokens=2000000)")
        options[key.strip()] = _option_value(raw.strip())
    return base, options


def _option_value(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def inline_options(name: str) -> dict[str, Any]:
    """The options written into ``name`` after colons (``{}`` for a plain name)."""
    return parse_name(name)[1]


def spec(name: str) -> PolicySpec:
    """The spec of ``name`` (aliases and inline options allowed), or a ValueError listing the known names."""
    base = parse_name(name)[0]
    key = ALIASES.get(base, base)
    if key not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; known policies: {', '.join(POLICIES)} "
                         f"(aliases: {', '.join(f'{a}={t}' for a, t in ALIASES.items())})")
    return POLICIES[key]


def required_method(name: str) -> str | None:
    """The env ``method`` the policy must run on (its kernel), or None when any method works."""
    return spec(name).required_method


def is_search(name: str) -> bool:
    """Whether ``name`` is a budgeted search (its ``budget_tokens`` option is matched to the agent's)."""
    return spec(name).is_search


def make_policy(name: str, **options: Any) -> Policy:
    """A new policy by name; ``options`` go to its factory (e.g. ``budget=21`` for random-search), after the
    spec's fixed options and before the name's inline ones."""
    entry = spec(name)
    try:
        return entry.load()(**{**dict(entry.options), **options, **inline_options(name)})
    except TypeError as err:
        raise TypeError(f"policy {name!r}: {err} (check the option names of {parse_name(name)[0]})") from err
