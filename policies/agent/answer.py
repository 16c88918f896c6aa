"""The agent's answer: its JSON schema, a tolerant parser, and a validator (all pure).

The model is asked for ``{"reflection": str, "rationale": str, "prune": [{"unit": name, "level": int}]}``.
Servers that honour a schema keep the shape but not always the bounds (llama.cpp returned 4 for
``maximum: 3``), and servers that ignore schemas answer with prose, code fences or other shapes, so every
answer goes through :func:`parse_answer` (shape) and :func:`validate_answer` (meaning). Their errors are
short sentences written for the model: the agent feeds them back when it asks again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TEXT_CHARS = 240  # schema bound on reflection and rationale
PRUNE_KEYS = ("prune", "actions", "action", "units", "levels")  # accepted names of the action field
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class AnswerError(ValueError):
    """An answer the agent cannot act on; the message is fed back to the model."""


@dataclass(frozen=True)
class Answer:
    """A parsed answer: requested levels by unit name as the model wrote it, plus its words."""

    levels: tuple[tuple[str, Any], ...]   # (unit, level) in the model's order, not yet validated
    rationale: str
    reflection: str


def answer_schema(unit_names: Sequence[str], n_levels: int) -> dict[str, Any]:
    """JSON schema of an answer (for ``response_format``). Unit names are an enum so grammar-constrained
    servers can only write real ones; the validator still checks everything."""
    return {
        "type": "object",
        "properties": {
            "reflection": {"type": "string", "maxLength": TEXT_CHARS},  # bounded, so a rambling model
            "rationale": {"type": "string", "maxLength": TEXT_CHARS},   # still closes the object in time
            "prune": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "unit": {"type": "string", "enum": list(unit_names)},
                        # an enum, not minimum/maximum: llama.cpp's grammar enforces enums but not bounds
                        "level": {"type": "integer", "enum": list(range(n_levels))},
                    },
                    "required": ["unit", "level"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["reflection", "rationale", "prune"],
        "additionalProperties": False,
    }


def response_format(mode: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """The ``response_format`` request field of a mode: ``json_schema`` (OpenAI, vLLM, Ollama),
    ``json_object`` with the schema inline (llama-cpp-python's server), or ``none`` (no field)."""
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "prune_action", "schema": schema}}
    if mode == "json_object":
        return {"type": "json_object", "schema": schema}
    if mode == "none":
        return None
    raise ValueError(f"response_format mode must be json_schema, json_object or none, got {mode!r}")


def _json_object(text: str) -> dict[str, Any]:
    """The answer object in ``text``: the whole text, a fenced block, or the first embedded ``{...}`` that has
    an action field (so an item of a cut-off answer is never taken for the answer)."""
    error: json.JSONDecodeError | None = None
    for candidate in [text.strip(), *(m.strip() for m in _FENCE.findall(text))]:
        try:
            obj = json.loads(candidate, strict=False)
        except json.JSONDecodeError as e:
            error = error or e
            continue
        if isinstance(obj, dict):
            return obj
    decoder = json.JSONDecoder(strict=False)
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text[start:])
            if isinstance(obj, dict) and any(k in obj for k in PRUNE_KEYS):
                return obj
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    why = f" ({error.msg} at character {error.pos})" if error is not None else ""
    raise AnswerError(f'no valid JSON object found{why}; answer with one object such as '
                      '{"reflection": "...", "rationale": "...", "prune": [{"unit": "<name>", "level": 1}]}')


def _pairs(field: Any) -> list[tuple[str, Any]]:
    """Unit/level pairs from the shapes models write: a list of {unit, level}, a {unit: level} map, or a list
    of [unit, level] pairs."""
    if isinstance(field, dict):
        return [(str(k), v) for k, v in field.items()]
    if not isinstance(field, list):
        raise AnswerError('"prune" must be a list of {"unit": name, "level": integer}')
    pairs = []
    for item in field:
        if isinstance(item, dict) and "unit" in item:
            pairs.append((str(item["unit"]), item.get("level", item.get("levels"))))
        elif isinstance(item, dict) and len(item) == 1:
            (k, v), = item.items()
            pairs.append((str(k), v))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            pairs.append((str(item[0]), item[1]))
        else:
            raise AnswerError(f'each "prune" item must be {{"unit": name, "level": integer}}, got {json.dumps(item)}')
    return pairs


def parse_answer(text: str | None) -> Answer:
    """Parse a model's reply tolerantly (code fences, text around the JSON, alternative shapes)."""
    if not text or not text.strip():
        raise AnswerError("the answer was empty")
    obj = _json_object(text)
    key = next((k for k in PRUNE_KEYS if k in obj), None)
    if key is None:
        raise AnswerError('the JSON object has no "prune" field (a list of {"unit": name, "level": integer})')
    return Answer(levels=tuple(_pairs(obj[key])), rationale=str(obj.get("rationale", "") or ""),
                  reflection=str(obj.get("reflection", "") or ""))


def _level(unit: str, raw: Any, n_levels: int) -> int:
    if isinstance(raw, bool) or raw is None:
        raise AnswerError(f"unit {unit}: level must be an integer 0..{n_levels - 1}, got {json.dumps(raw)}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise AnswerError(f"unit {unit}: level must be an integer 0..{n_levels - 1}, got {json.dumps(raw)}") from None
    if value != int(value) or not 0 <= value <= n_levels - 1:
        raise AnswerError(f"unit {unit}: level must be an integer 0..{n_levels - 1}, got {json.dumps(raw)}")
    return int(value)


def _unit_index(unit: str, short: Sequence[str], full: Sequence[str], groups: Mapping[str, Sequence[int]]) -> int | None:
    """The index of a named unit; None for a group name; AnswerError for an unknown name."""
    if unit in groups:
        return None
    if unit in short:
        return short.index(unit)
    if unit in full:
        return full.index(unit)
    names = list(groups) if groups else list(short)
    listed = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
    raise AnswerError(f"unknown {'group' if groups else 'unit'} {unit!r}; {'groups' if groups else 'units'} are: {listed}")


def _room(sparsity: float, step_size: float, cap: float) -> int:
    """Levels a unit at ``sparsity`` can still take under the cap."""
    return max(int(np.floor((cap - sparsity) / step_size + 1e-6)), 0)


def validate_answer(answer: Answer, *, short_names: Sequence[str], full_names: Sequence[str],
                    sparsity: np.ndarray, n_levels: int, step_size: float, cap: float,
                    groups: Mapping[str, Sequence[int]] | None = None) -> np.ndarray:
    """The env action (int levels, one per unit) of a parsed answer, or AnswerError saying what is wrong:
    an unknown unit, a unit named twice, a level outside 0..n_levels-1, a unit (or group) already at the cap,
    or nothing to prune.

    A level past a unit's room under the cap is cut to that room, as the env itself caps a step (the model
    chose the unit; how far it can go is arithmetic). ``groups`` (name -> unit indices, a grouped table): a
    group's level goes to each of its units, cut the same way; only a group with no room at all is an error."""
    groups = groups or {}
    action = np.zeros(len(short_names), dtype=np.int64)
    seen: set[int] = set()
    for unit, raw in answer.levels:
        name = unit.strip()
        i = _unit_index(name, short_names, full_names, groups)
        members = list(groups[name]) if i is None else [i]
        label = name if i is None else short_names[i]
        if any(j in seen for j in members):
            raise AnswerError(f"unit {label} is listed twice; list each unit once" if not groups else
                              f"{'group' if i is None else 'unit'} {label} is listed twice (a group and its "
                              f"units count as one); list each once")
        seen.update(members)
        level = _level(label, raw, n_levels)
        rooms = [_room(float(sparsity[j]), step_size, cap) for j in members]
        if i is None:
            if level > 0 and max(rooms) == 0:
                raise AnswerError(f"group {label}: every unit of it is at the cap {cap:g}; choose another group")
            for j, room in zip(members, rooms):
                action[j] = min(level, room)
            continue
        if level > 0 and rooms[0] == 0:
            raise AnswerError(f"unit {label} has sparsity {float(sparsity[i]):.2f}, at the cap {cap:g}: it cannot be "
                              "pruned further; choose another unit")
        action[i] = min(level, rooms[0])
    if not action.any():
        kind = "group" if groups else "unit"
        raise AnswerError(f"no {kind} has a level >= 1; name at least one {kind} to prune")
    return action
