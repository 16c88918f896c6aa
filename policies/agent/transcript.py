"""Transcripts: every request and response of a run, one JSON line each, written as it goes; and replay.

Records (``type`` field):

* ``meta``: first line; the agent settings (API key redacted) and the transcript format version.
* ``request``: ``n`` (request number from 1), ``step``, ``attempt``, ``request`` (the exact JSON body sent).
* ``response``: ``n``, ``reply`` (content, finish reason, token usage, model), ``latency_s``.
* ``error``: ``n``, ``error`` (kind, message, HTTP status), ``latency_s``.
* ``decision``: ``step``, the action taken, ``fallback`` and its reason (for people; replay ignores it).

:class:`ReplayTransport` serves the responses and errors of a transcript in order, after checking that each
request is exactly the recorded one, so a run can be re-run deterministically without the endpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .transport import ChatReply, TransportError

FORMAT_VERSION = 1


class ReplayError(RuntimeError):
    """A replay that cannot go on: the transcript is missing, malformed, exhausted, or the run diverged."""


class TranscriptWriter:
    """Appends records to a JSONL file, one line per record, flushed at once (a crash loses nothing)."""

    def __init__(self, path: str | Path, settings: dict[str, Any], *, replay_of: str | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self.write({"type": "meta", "version": FORMAT_VERSION, "settings": settings, "replay_of": replay_of,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays in records."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to a transcript")


def read_transcript(path: str | Path) -> list[dict[str, Any]]:
    """All records of a transcript, or ReplayError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"transcript {path} does not exist; pass the transcript path of an earlier run")
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ReplayError(f"{path}:{i} is not valid JSON ({e}); the transcript is damaged") from e
    if not records or records[0].get("type") != "meta":
        raise ReplayError(f"{path} does not start with a meta record; it is not a prune-gym agent transcript")
    if records[0].get("version") != FORMAT_VERSION:
        raise ReplayError(f"{path} has transcript version {records[0].get('version')}, expected {FORMAT_VERSION}")
    return records


def transcript_settings(path: str | Path) -> dict[str, Any]:
    """The agent settings a transcript was recorded with."""
    return dict(read_transcript(path)[0]["settings"])


def _first_difference(recorded: Any, actual: Any, where: str = "request") -> str:
    """Where two JSON values first differ, e.g. ``request.messages[1].content``, with both values cut short."""
    if isinstance(recorded, dict) and isinstance(actual, dict):
        for key in sorted(set(recorded) | set(actual)):
            if recorded.get(key) != actual.get(key):
                return _first_difference(recorded.get(key), actual.get(key), f"{where}.{key}")
    if isinstance(recorded, list) and isinstance(actual, list) and len(recorded) == len(actual):
        for i, (a, b) in enumerate(zip(recorded, actual)):
            if a != b:
                return _first_difference(a, b, f"{where}[{i}]")
    if isinstance(recorded, str) and isinstance(actual, str):
        at = next((i for i, (a, b) in enumerate(zip(recorded, actual)) if a != b), min(len(recorded), len(actual)))
        return f"{where} at character {at}: recorded {recorded[at:at + 80]!r}, now {actual[at:at + 80]!r}"
    return f"{where}: recorded {json.dumps(recorded)[:160]}, now {json.dumps(actual)[:160]}"


class ReplayTransport:
    """Serves a transcript's responses (and errors) in order, checking every request against the recorded one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        records = read_transcript(self.path)
        self._exchanges = list(self._pair(records))
        self._next = 0
        self.last_latency_s: float | None = None

    def _pair(self, records: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        pending: dict[str, Any] | None = None
        for r in records:
            if r["type"] == "request":
                if pending is not None:
                    raise ReplayError(f"{self.path}: request {pending['n']} has no response record")
                pending = r
            elif r["type"] in ("response", "error"):
                if pending is None or r["n"] != pending["n"]:
                    raise ReplayError(f"{self.path}: {r['type']} record {r.get('n')} has no matching request")
                yield pending, r
                pending = None
        # a trailing request without a response (the recorded run was killed mid-request) is not served

    @property
    def remaining(self) -> int:
        """Recorded exchanges not yet served."""
        return len(self._exchanges) - self._next

    def send(self, request: dict[str, Any], *, timeout: float | None = None) -> ChatReply:
        """The recorded reply (or error) of this request; ``timeout`` is ignored, and ``last_latency_s`` is
        set to the recorded latency, so the step time limit counts the recorded time and a replay gives up
        exactly where the recorded run did."""
        if self._next >= len(self._exchanges):
            raise ReplayError(f"{self.path} has only {len(self._exchanges)} recorded requests, and the replay "
                              f"asked for one more: the replayed run diverged (different env or settings)")
        recorded, outcome = self._exchanges[self._next]
        if recorded["request"] != request:
            raise ReplayError(f"request {recorded['n']} (step {recorded.get('step')}) differs from the transcript "
                              f"{self.path}: {_first_difference(recorded['request'], request)}. Replay needs the "
                              f"same env settings and the same agent settings as the recorded run")
        self._next += 1
        self.last_latency_s = float(outcome.get("latency_s") or 0.0)
        if outcome["type"] == "error":
            raise TransportError.from_record(outcome["error"])
        return ChatReply.from_record(outcome["reply"])
