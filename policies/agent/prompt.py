"""The agent's prompt, built by pure functions: the goal and pace, the units table with the outcome memory,
the rolled-back steps, and a bounded history.

The history is what makes the agent self-reflective (as in the paper): every past step shows what the model
chose, what pacing added or whether the step was the fallback's (separately: the model only reasons about
its own choices as its own), what the step did to perplexity, whether it was rolled back, and the model's
rationale and reflection at the time. Only the last ``history_size`` steps are shown in full; older ones
shrink to one line. The outcome memory (:mod:`policies.agent.memory`) adds, per unit, what pruning it has
cost so far, and every rolled-back step (the last :data:`ROLLBACK_LINES`), so what was learnt does not fall
out of the history window.

The prompt is kept within the agent model's context (``context_tokens - max_tokens``): :func:`choose_rows`
sizes the longest prompt an episode can produce (:func:`worst_case_messages`, counted by the conservative
:func:`estimate_tokens`), and when a per-unit table would not fit (``granularity="linear"``: 210 units on the
default model) the table shows one row per decoder block instead (:func:`unit_rows`), and the model answers
with block names, a level on a block applying to each of its linears
(:func:`policies.agent.answer.validate_answer`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..base import EnvView
from .memory import Cost, Outcome
from .pacing import Pace

ROLLBACK_LINES = 3      # rolled-back steps the memory lists (the most recent ones)
LEVEL_ITEMS = 5         # unit: level pairs shown per part of a history line, then "... N more"
BARRED_ITEMS = 3        # barred unit: level pairs shown (the validator names any other it meets)
REASONED_STEPS = 2      # history steps shown with their rationale and reflection (the most recent ones)
CHAT_OVERHEAD = 16      # tokens a chat template adds around two messages and the answer's start

_SYSTEM_HEAD = """\
You are a pruning agent. You remove weights from a language model step by step so that it reaches a target \
global sparsity while its perplexity rises as little as possible. Each step you choose which units (decoder \
blocks or linear layers) to prune further and by how many levels; one level adds a fixed amount of sparsity \
to a unit, and a unit's share of the weights (w) says how much that adds to the global sparsity. Units with \
a high importance z-score (zw: Wanda activation-weighted magnitude, zg: gradient importance) usually hurt \
more when pruned."""
_SYSTEM_MEMORY = """ The cost of a unit is measured: the change in log-perplexity one level on it has \
caused so far (cost=? means not tried yet); prefer cheap units, and spread levels over several units."""
_SYSTEM_TAIL = """ A step that raises perplexity above the rollback threshold is undone, and that step is \
lost. Learn from your history: repeat what kept perplexity low, avoid what was rolled back.

Answer with one JSON object and nothing else. Its fields:
- "reflection": one sentence on what your past steps and their perplexity changes taught you
- "rationale": one sentence on why you prune these units now
- "prune": a list of {"unit": name from the table, "level": integer level}"""
SYSTEM_PROMPT = _SYSTEM_HEAD + _SYSTEM_MEMORY + _SYSTEM_TAIL


def system_prompt(memory: bool = True) -> str:
    """The fixed system message (without the cost sentence when the outcome memory is off)."""
    return _SYSTEM_HEAD + (_SYSTEM_MEMORY if memory else "") + _SYSTEM_TAIL


@dataclass(frozen=True)
class HistoryEntry:
    """One past step as the agent remembers it."""

    step: int
    levels: dict[str, int]           # short unit name -> level applied (the choice plus pacing; non-zero only)
    ppl_before: float
    ppl_after: float                 # the perplexity the step produced (the rejected one if rolled back)
    sparsity_after: float            # global sparsity after the step (after a rollback: the restored one)
    rolled_back: bool
    fallback: bool = False           # the choice was the fallback's, not the model's answer
    rationale: str = ""
    reflection: str = ""
    chosen: dict[str, int] | None = None  # the model's (or the fallback's) levels before pacing; None: = levels
    chosen_gain: float | None = None      # planned global sparsity of the choice
    added_gain: float = 0.0               # planned global sparsity pacing added

    @property
    def ppl_change(self) -> float:
        """Relative perplexity change of the step (before any rollback)."""
        return self.ppl_after / self.ppl_before - 1.0

    @property
    def own(self) -> dict[str, int]:
        """The levels chosen before pacing."""
        return dict(self.levels) if self.chosen is None else dict(self.chosen)

    @property
    def added(self) -> dict[str, int]:
        """The levels pacing added on top of the choice."""
        own = self.own
        return {u: lv - own.get(u, 0) for u, lv in self.levels.items() if lv > own.get(u, 0)}


@dataclass(frozen=True)
class Rows:
    """The rows of the units table: one per unit, or one per decoder block (``grouped``)."""

    units: tuple[str, ...]                    # every unit's short name
    names: tuple[str, ...]                    # row names: what the model names in its answer
    members: tuple[tuple[int, ...], ...]      # unit indices of each row
    grouped: bool = False
    numel: tuple[int, ...] = ()               # every unit's size (for a group's level); () = equal

    def groups(self) -> dict[str, tuple[int, ...]]:
        """Row name -> unit indices of the rows of several units (what the validator expands)."""
        return {n: m for n, m in zip(self.names, self.members) if len(m) > 1}


def unit_rows(short_names: Sequence[str], grouped: bool, numel: Sequence[int] = ()) -> Rows:
    """One row per unit, or, ``grouped``, one per prefix before the first dot (``3.mlp.up_proj`` -> ``3``:
    the decoder block of a linear)."""
    units, sizes = tuple(short_names), tuple(int(n) for n in numel)
    if grouped:
        blocks: dict[str, list[int]] = {}
        for i, name in enumerate(units):
            blocks.setdefault(name.split(".", 1)[0], []).append(i)
        if len(blocks) < len(units) and not set(blocks) & set(units):  # a real grouping, names unambiguous
            return Rows(units, tuple(blocks), tuple(tuple(v) for v in blocks.values()), True, sizes)
    return Rows(units, units, tuple((i,) for i in range(len(units))), False, sizes)


@dataclass(frozen=True)
class PromptState:
    """What the agent knows besides the observation: its history, the pace and the outcome memory."""

    history: Sequence[HistoryEntry] = ()
    pace: Pace | None = None                  # None: no pace line
    paced: bool = False                       # pacing tops up short steps
    rollbacks: int = 0
    reserve: int = 0                          # spare steps kept for rollbacks (rollback_reserve)
    costs: Sequence[Cost] | None = None       # per row; None: the outcome memory is off
    outcomes: Sequence[Outcome] = field(default_factory=tuple)  # the memory's steps (for the rolled-back lines)
    barred: Mapping[str, int] = field(default_factory=dict)     # short unit name -> lowest barred level (memory.py)


def clip_text(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def compress_levels(levels: Mapping[str, int], rows: Rows | None) -> dict[str, str]:
    """Levels in the table's terms, as text: per unit; or, for a grouped table, per group, ``"1"`` when all its
    units got that level (``{3: 1}`` for the 7 linears of block 3 at level 1), else ``"~0.4"``, the level of
    the group's sparsity increase (its units' levels weighted by their sizes)."""
    if rows is None or not rows.grouped:
        return {u: str(lv) for u, lv in levels.items()}
    out: dict[str, str] = {}
    for name, members in zip(rows.names, rows.members):
        got = np.array([levels.get(rows.units[i], 0) for i in members], dtype=np.float64)
        if not got.any():
            continue
        if np.all(got == got[0]):
            out[name] = str(int(got[0]))
        else:
            w = np.asarray([rows.numel[i] for i in members], dtype=np.float64) if rows.numel else np.ones(len(got))
            out[name] = f"~{float(got @ w / w.sum()):.1f}"
    return out


def format_levels(levels: Mapping[str, int], rows: Rows | None = None, limit: int = LEVEL_ITEMS) -> str:
    """``{3: 2, 7: 1}``-style text of an action (per group in a grouped table), ``nothing`` when empty; at most
    ``limit`` pairs, then ``... N more``."""
    items = list(compress_levels(levels, rows).items())
    if not items:
        return "nothing"
    text = ", ".join(f"{u}: {lv}" for u, lv in items[:limit])
    if len(items) > limit:
        text += f", ... {len(items) - limit} more"
    return "{" + text + "}"


def percent(x: float) -> str:
    """``0.1`` -> ``10%``, ``0.004`` -> ``0.4%`` (a threshold as written)."""
    return f"{x * 100:.4g}%"


def _shares(view: EnvView, rows: Rows) -> np.ndarray:
    numel = np.asarray(view.unit_numel, dtype=np.float64)
    return np.array([numel[list(m)].sum() for m in rows.members]) / numel.sum()


def goal_text(view: EnvView, obs: Mapping[str, np.ndarray], rows: Rows, state: PromptState) -> str:
    """The goal, what this step must add to arrive (the pace, spare steps and rollbacks), and the rules."""
    now = float(obs["global_sparsity"][0])
    steps_left = int(obs["steps_left"][0])
    remaining = max(view.target_sparsity - now, 0.0)
    kind = "group" if rows.grouped else "unit"
    lines = [f"Goal: global sparsity {view.target_sparsity:.3f}, now {now:.3f}: add {remaining:.3f} in the "
             f"{steps_left} steps left (of {view.max_steps})."]
    pace = state.pace
    if pace is not None and pace.remaining > 1e-9:
        mean_share = float(_shares(view, rows).mean())
        levels = math.ceil(pace.required / (view.step_size * mean_share) - 1e-9)
        spread = max(pace.steps_left - pace.reserve_left, 1)
        lines.append(f"This step: add {pace.required:.4f} ({remaining:.3f} over {spread} steps), about {levels} "
                     f"levels on {kind}s of average size (w={mean_share:.1%}). Spare steps for rollbacks: "
                     f"{pace.reserve_left} of {state.reserve} left ({state.rollbacks} rollback{'' if state.rollbacks == 1 else 's'}).")
        if state.paced:
            lines.append(f"Pacing tops up a smaller choice (at most +{pace.bound:.4f}) on the cheapest units "
                         f"('pacing added').")
    lines.append(f"Levels: 0..{view.n_levels - 1}; level j adds j x {view.step_size:g} to a unit's sparsity (j x "
                 f"{view.step_size:g} x w to the global); units stay <= {view.max_unit_sparsity:g}; name at least "
                 f"one {kind} with level >= 1.")
    if view.rollback_threshold is not None:
        lines.append(f"Rollback: a step that raises perplexity more than {percent(view.rollback_threshold)} is undone and "
                     f"lost; past the spare steps, rollbacks make later steps larger.")
    if state.barred:
        lines.append(f"Barred (rolled back; until a kept step prunes them): {barred_text(state.barred, rows)}.")
    return "\n".join(lines)


def barred_text(barred: Mapping[str, int], rows: Rows | None = None, limit: int = BARRED_ITEMS) -> str:
    """``{1: >=2, 5: >=3}``: the barred levels (per group in a grouped table), at most ``limit`` pairs."""
    items = list(compress_levels(barred, rows).items())
    text = ", ".join(f"{u}: >={lv}" for u, lv in items[:limit])
    if len(items) > limit:
        text += f", ... {len(items) - limit} more"
    return "{" + text + "}"


def _grad_note(view: EnvView, obs: Mapping[str, np.ndarray]) -> str:
    """How old ``zg`` is, from ``obs["grad_age"]`` ('' when the observation has no age)."""
    if "grad_age" not in obs:
        return ""
    age = int(obs["grad_age"][0])
    if age >= view.max_steps and not np.any(np.asarray(obs["grad_z"])):
        return " (gradient profile off: zg is 0)"
    return " (zg of this state)" if age == 0 else f" (zg from {age} step{'s' if age > 1 else ''} ago)"


def _equal_sizes(shares: np.ndarray) -> bool:
    return bool(shares.max() - shares.min() <= 0.01 * shares.max())


def units_text(view: EnvView, obs: Mapping[str, np.ndarray], rows: Rows, costs: Sequence[Cost] | None) -> str:
    """The table: per unit (or per group) sparsity, z-scores, share of the weights (a column when the rows
    differ in size, else one note) and, with the memory, cost."""
    numel = np.asarray(view.unit_numel, dtype=np.float64)
    s = np.asarray(obs["sparsity"], dtype=np.float64)
    zw = np.asarray(obs["wanda_z"], dtype=np.float64)
    zg = np.asarray(obs["grad_z"], dtype=np.float64)
    shares = _shares(view, rows)
    equal = _equal_sizes(shares)
    what = ("Groups (one per decoder block; a level on a group goes to each of its linears with room; weighted "
            "means)" if rows.grouped else "Units")
    size = f"every {'group' if rows.grouped else 'unit'} w={shares[0]:.1%} of the weights" if equal else \
        "w = share of the weights"
    cost = ", cost = log-perplexity change per level so far in % over n steps" if costs is not None else ""
    lines = [f"{what}: s = sparsity, zw = Wanda and zg = gradient importance z-scores{_grad_note(view, obs)}, "
             f"{size}{cost}."]
    for r, (name, members) in enumerate(zip(rows.names, rows.members)):
        m = list(members)
        w = numel[m] / numel[m].sum()
        row = f"{name}: s={float(s[m] @ w):.2f} zw={float(zw[m] @ w):+.1f} zg={float(zg[m] @ w):+.1f}"
        if not equal:
            row += f" w={shares[r]:.1%}"
        if costs is not None:
            c = costs[r]
            row += " cost=?" if c.per_level is None else f" cost={100 * c.per_level:+.1f}% n={c.steps}"
        lines.append(row)
    return "\n".join(lines)


def memory_text(outcomes: Sequence[Outcome], rows: Rows, threshold: float | None, limit: int = ROLLBACK_LINES) -> str:
    """The rolled-back steps (the last ``limit``) and why: the perplexity increase past the threshold."""
    back = [o for o in outcomes if o.rolled_back]
    if not back:
        return "Rolled back so far: none."
    shown = back[-limit:]
    why = f" > {percent(threshold)}" if threshold is not None else ""
    head = f"Rolled back so far ({len(back)} of {len(outcomes)} steps" + (
        f", the last {len(shown)}):" if len(shown) < len(back) else "):")
    lines = [head] + [f"step {o.step}: {format_levels(o.levels, rows)} -> perplexity {o.ppl_change:+.1%}{why}, "
                      f"undone" for o in shown]
    return "\n".join(lines)


def _history_line(e: HistoryEntry, rows: Rows | None) -> str:
    gain = f" (+{e.chosen_gain:.3f})" if e.chosen_gain is not None else ""
    if e.fallback:
        text = f"no valid answer; fallback {format_levels(e.own, rows)}{gain}, not yours"
    else:
        text = f"you chose {format_levels(e.own, rows)}{gain}"
    added = e.added
    if added:
        text += f"; pacing added {format_levels(added, rows)} (+{e.added_gain:.3f})"
    verdict = "ROLLED BACK" if e.rolled_back else "kept"
    return f"step {e.step}: {text} -> perplexity {e.ppl_change:+.1%}, {verdict}; sparsity {e.sparsity_after:.3f}"


def history_text(history: Sequence[HistoryEntry], limit: int, reflection_chars: int, rows: Rows | None = None,
                 reasoned: int = REASONED_STEPS) -> str:
    """The last ``limit`` steps (the rationale and reflection of the last ``reasoned`` of them), older ones
    summarised in one line."""
    if not history:
        return "History: none yet (this is the first step)."
    shown = list(history[-limit:]) if limit > 0 else []
    older = history[: len(history) - len(shown)]
    lines = [f"History (last {len(shown)} of {len(history)} steps):"]
    if older:
        lines.append(f"{len(older)} earlier steps not shown ({sum(e.rolled_back for e in older)} rolled back, "
                     f"{sum(e.fallback for e in older)} fallbacks, {sum(bool(e.added) for e in older)} topped up).")
    for k, e in enumerate(shown):
        lines.append(_history_line(e, rows))
        if k < len(shown) - reasoned:
            continue
        if e.rationale:
            lines.append(f"  rationale: {clip_text(e.rationale, reflection_chars)}")
        if e.reflection:
            lines.append(f"  reflection: {clip_text(e.reflection, reflection_chars)}")
    return "\n".join(lines)


def user_prompt(view: EnvView, obs: Mapping[str, np.ndarray], state: PromptState, rows: Rows, *,
                history_size: int, reflection_chars: int) -> str:
    """The user message of one step."""
    parts = [goal_text(view, obs, rows, state), units_text(view, obs, rows, state.costs)]
    if state.costs is not None:
        parts.append(memory_text(state.outcomes, rows, view.rollback_threshold))
    parts += [history_text(state.history, history_size, reflection_chars, rows),
              "Reflect on the history, then choose the " + ("groups" if rows.grouped else "units")
              + " to prune now. Answer with the JSON object only."]
    return "\n\n".join(parts)


def build_messages(view: EnvView, obs: Mapping[str, np.ndarray], state: PromptState, rows: Rows, *,
                   history_size: int, reflection_chars: int) -> list[dict[str, str]]:
    """The Chat Completions messages of the first request of a step."""
    return [
        {"role": "system", "content": system_prompt(state.costs is not None)},
        {"role": "user", "content": user_prompt(view, obs, state, rows, history_size=history_size,
                                                reflection_chars=reflection_chars)},
    ]


def retry_messages(messages: list[dict[str, str]], answer: str, error: str) -> list[dict[str, str]]:
    """The conversation extended with the invalid answer and the error, so the model can correct itself."""
    return [*messages, {"role": "assistant", "content": answer},
            {"role": "user", "content": f"Your answer was invalid: {error}\nAnswer again with the JSON object only."}]


# ---------------------------------------------------------------- the bound
_PIECES = re.compile(r"[^\W\d_]+|\S")
_SPACE_DIGIT = re.compile(r" (?=\d)")


def estimate_tokens(text: str) -> int:
    """A conservative token count for a prompt: every digit, sign and punctuation mark one token (as
    SmolLM2's tokenizer splits them; others group digits), a word of letters one token up to 5 letters and
    one more per 3 letters past that, each newline and each space before a digit one."""
    count = text.count("\n") + len(_SPACE_DIGIT.findall(text))
    for piece in _PIECES.findall(text):
        count += 1 + math.ceil(max(len(piece) - 5, 0) / 3) if piece[0].isalpha() else len(piece.encode("utf-8"))
    return count


def messages_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """:func:`estimate_tokens` of a conversation, with the chat template's overhead."""
    return CHAT_OVERHEAD + sum(estimate_tokens(m["content"]) for m in messages)


WORST_TEXT = "Blocks 12, 13 and 27 cost +0.4% per level over 3 steps and zg=-1.2, so I give 2 levels to 14 now. "


def worst_case_messages(view: EnvView, rows: Rows, *, history_size: int, reflection_chars: int,
                        memory: bool = True, paced: bool = True) -> list[dict[str, str]]:
    """The longest prompt an episode of ``view`` can produce: the longest numbers (z-scores reach at most
    ``(n - 1) / sqrt(n)`` over ``n`` units), every row with a cost, :data:`ROLLBACK_LINES` rollbacks, and
    ``history_size`` steps that each chose and were topped up on more units than a line lists, with
    rationale and reflection (number-heavy text) at ``reflection_chars``."""
    n, steps = view.n_units, view.max_steps
    top = view.n_levels - 1
    big = {u: top if i % 2 else max(top - 1, 1) for i, u in enumerate(rows.units)}  # no group is uniform
    chosen = {u: 1 if i % 2 else max(top - 2, 1) for i, u in enumerate(rows.units)}
    text = (WORST_TEXT * (reflection_chars // len(WORST_TEXT) + 1))[:reflection_chars]
    history = [HistoryEntry(step=steps - k, levels=big, ppl_before=1.0, ppl_after=10.99, sparsity_after=0.999,
                            rolled_back=bool(k % 2), fallback=False, rationale=text, reflection=text,
                            chosen=chosen, chosen_gain=0.999, added_gain=0.999)
               for k in range(history_size + 1)][::-1]
    outcomes = [Outcome(step=steps - k, added=np.zeros(n), log_ppl_change=math.log(10.99), rolled_back=True,
                        levels=big) for k in range(ROLLBACK_LINES + 1)][::-1]
    costs = [Cost(-0.999, steps)] * len(rows.names) if memory else None
    pace = Pace(remaining=0.999, steps_left=steps, reserve_left=steps - 1, required=0.0999, bound=0.0999)
    z = -min(10.0, (n - 1) / math.sqrt(n)) if n > 1 else 0.0
    obs = {"sparsity": np.full(n, 0.99), "wanda_z": np.full(n, z), "grad_z": np.full(n, z),
           "global_sparsity": np.array([0.001]), "steps_left": np.array([steps]), "grad_age": np.array([steps - 1])}
    state = PromptState(history=history, pace=pace, paced=paced, rollbacks=steps, reserve=steps, costs=costs,
                        outcomes=outcomes, barred={u: top for u in rows.units})
    return build_messages(view, obs, state, rows, history_size=history_size, reflection_chars=reflection_chars)


def choose_rows(view: EnvView, short_names: Sequence[str], *, history_size: int, reflection_chars: int,
                context_tokens: int, max_tokens: int, memory: bool = True, paced: bool = True) -> Rows:
    """A row per unit when the worst-case prompt fits ``context_tokens - max_tokens`` (by
    :func:`messages_tokens`), else a row per block; ValueError naming the fix when not even that fits."""
    budget = context_tokens - max_tokens
    options = dict(history_size=history_size, reflection_chars=reflection_chars, memory=memory, paced=paced)
    for grouped in (False, True):
        rows = unit_rows(short_names, grouped, view.unit_numel)
        size = messages_tokens(worst_case_messages(view, rows, **options))
        if size <= budget:
            return rows
    raise ValueError(f"the agent's prompt can reach ~{size} tokens with {len(rows.names)} table rows, more than the "
                     f"{budget} the model's context leaves (context_tokens {context_tokens} - max_tokens "
                     f"{max_tokens}): lower history_size ({history_size}) or reflection_chars ({reflection_chars}), "
                     f"or raise context_tokens for a model with a larger context")
