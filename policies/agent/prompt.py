"""The agent's prompt, built by pure functions: the goal, the current profile table, a bounded history.

The history is what makes the agent self-reflective (as in the paper): every past step shows what was pruned,
what it did to perplexity, whether it was rolled back, and the agent's own rationale and reflection at the
time. Only the last ``history_size`` steps are shown in full; older ones shrink to a one-line summary, so the
prompt length stays bounded however long the episode runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prune_env.env import observation_to_text

from ..base import EnvView

SYSTEM_PROMPT = """\
You are a pruning agent. You remove weights from a language model step by step so that it reaches a target \
global sparsity while its perplexity rises as little as possible. Each step you choose which units (decoder \
blocks or linear layers) to prune further and by how many levels; one level adds a fixed amount of sparsity \
to a unit. Units with a high importance z-score (zw: Wanda activation-weighted magnitude, zg: gradient \
importance) usually hurt more when pruned. A step that raises perplexity above the rollback threshold is \
undone, and that step is lost. Learn from your history: repeat what kept perplexity low, avoid what was \
rolled back.

Answer with one JSON object and nothing else. Its fields:
- "reflection": one sentence on what your past steps and their perplexity changes taught you
- "rationale": one sentence on why you prune these units now
- "prune": a list of {"unit": name from the table, "level": integer level}"""


@dataclass(frozen=True)
class HistoryEntry:
    """One past step as the agent remembers it."""

    step: int
    levels: dict[str, int]           # short unit name -> level asked for (non-zero only)
    ppl_before: float
    ppl_after: float                 # the perplexity the step produced (the rejected one if rolled back)
    sparsity_after: float            # global sparsity after the step (after a rollback: the restored one)
    rolled_back: bool
    fallback: bool = False           # the action was the fallback, not the agent's answer
    rationale: str = ""
    reflection: str = ""

    @property
    def ppl_change(self) -> float:
        """Relative perplexity change of the step (before any rollback)."""
        return self.ppl_after / self.ppl_before - 1.0


def clip_text(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def format_levels(levels: dict[str, int]) -> str:
    """``{3: 2, 7: 1}``-style text of an action, or ``nothing`` when empty."""
    return "{" + ", ".join(f"{u}: {lv}" for u, lv in levels.items()) + "}" if levels else "nothing"


def goal_text(view: EnvView, obs: dict[str, np.ndarray]) -> str:
    """The goal and the rules of one step, in numbers."""
    now = float(obs["global_sparsity"][0])
    steps_left = int(obs["steps_left"][0])
    lines = [
        f"Goal: global sparsity {view.target_sparsity:.3f} (now {now:.3f}) within {steps_left} more steps.",
        f"Levels: integers 0..{view.n_levels - 1}; level j adds j x {view.step_size:g} to a unit's sparsity; "
        f"no unit may exceed {view.max_unit_sparsity:g}. Name at least one unit with level >= 1.",
    ]
    if view.rollback_threshold is not None:
        lines.append(f"Rollback: a step that raises perplexity more than {view.rollback_threshold:.0%} is undone.")
    return "\n".join(lines)


def profile_text(view: EnvView, obs: dict[str, np.ndarray]) -> str:
    """The units table (short names, s = sparsity, zw/zg = importance z-scores) and the global line."""
    header = "Units (s = sparsity, zw = Wanda importance z-score, zg = gradient importance z-score):"
    return header + "\n" + observation_to_text(list(view.unit_names), obs)


def history_text(history: Sequence[HistoryEntry], limit: int, reflection_chars: int) -> str:
    """The last ``limit`` steps in full, older ones summarised in one line; '' when there is no history."""
    if not history:
        return "History: none yet (this is the first step)."
    shown = list(history[-limit:]) if limit > 0 else []
    older = history[: len(history) - len(shown)]
    lines = [f"History (last {len(shown)} of {len(history)} steps):"]
    if older:
        rollbacks = sum(e.rolled_back for e in older)
        lines.append(f"{len(older)} earlier steps not shown ({rollbacks} rolled back, "
                     f"{sum(e.fallback for e in older)} fallbacks).")
    for e in shown:
        verdict = "ROLLED BACK" if e.rolled_back else "kept"
        who = " (fallback action, not yours)" if e.fallback else ""
        lines.append(f"step {e.step}: pruned {format_levels(e.levels)}{who} -> perplexity {e.ppl_change:+.1%}, "
                     f"{verdict}; sparsity {e.sparsity_after:.3f}")
        if e.rationale:
            lines.append(f"  rationale: {clip_text(e.rationale, reflection_chars)}")
        if e.reflection:
            lines.append(f"  reflection: {clip_text(e.reflection, reflection_chars)}")
    return "\n".join(lines)


def user_prompt(view: EnvView, obs: dict[str, np.ndarray], history: Sequence[HistoryEntry], *,
                history_size: int, reflection_chars: int) -> str:
    """The user message of one step."""
    return "\n\n".join([
        goal_text(view, obs),
        profile_text(view, obs),
        history_text(history, history_size, reflection_chars),
        "Reflect on the history, then choose the units to prune now. Answer with the JSON object only.",
    ])


def build_messages(view: EnvView, obs: dict[str, np.ndarray], history: Sequence[HistoryEntry], *,
                   history_size: int, reflection_chars: int) -> list[dict[str, str]]:
    """The Chat Completions messages of the first request of a step."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(view, obs, history, history_size=history_size,
                                                reflection_chars=reflection_chars)},
    ]


def retry_messages(messages: list[dict[str, str]], answer: str, error: str) -> list[dict[str, str]]:
    """The conversation extended with the invalid answer and the error, so the model can correct itself."""
    return [*messages, {"role": "assistant", "content": answer},
            {"role": "user", "content": f"Your answer was invalid: {error}\nAnswer again with the JSON object only."}]
