"""FreebaseQA (Jiang et al., NAACL 2019; CC BY 4.0) for the online task ``pg_freebaseqa``.

The public release is three JSON files on GitHub (train 20,358 / dev 3,994 / eval 3,996 questions). They
are downloaded once into ``<cache>/harness/freebaseqa/`` and read from there afterwards, so the task also
runs offline once fetched. The test split is ``eval``; few-shot examples come from ``dev``. Accepted
answers are every answer name of every semantic parse.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .paths import harness_root

__all__ = ["FREEBASEQA_URL", "OnlineDataUnavailable", "freebaseqa_rows", "load_freebaseqa"]

FREEBASEQA_URL = "https://raw.githubusercontent.com/kelvin-jiang/FreebaseQA/master/FreebaseQA-{split}.json"
_SPLITS = {"test": "eval", "fewshot": "dev"}
_TIMEOUT_S = 60


class OnlineDataUnavailable(ConnectionError):
    """An online task's data could not be fetched (offline, or the source is unreachable)."""


def _offline_mode() -> bool:
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
               for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _fetch(split: str) -> Path:
    """The cached JSON of one FreebaseQA split, downloaded first when missing."""
    path = harness_root() / "freebaseqa" / f"FreebaseQA-{split}.json"
    if path.is_file():
        return path
    url = FREEBASEQA_URL.format(split=split)
    hint = ("pg_freebaseqa needs internet access once to download FreebaseQA from GitHub "
            f"({url}) into {path.parent}. Run it once online (or put the file there by hand); offline, use "
            "the packaged tasks pg_factual_qa / pg_factual_mc instead.")
    if _offline_mode():
        raise OnlineDataUnavailable(f"offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE): {hint}")
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            payload = response.read()
        json.loads(payload)  # refuse to cache an error page
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise OnlineDataUnavailable(f"download failed ({e}): {hint}") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(payload)
    os.replace(tmp, path)
    return path


def _answers(question: dict[str, Any]) -> list[str]:
    names: dict[str, None] = {}
    for parse in question.get("Parses", []):
        for answer in parse.get("Answers", []):
            for name in answer.get("AnswersName", []):
                for text in name if isinstance(name, list) else [name]:
                    names.setdefault(str(text).strip(), None)
    return [n for n in names if n]


def freebaseqa_rows(split: str) -> list[dict[str, Any]]:
    """Rows ``{id, question, answer, answers}`` of one task split ("test" or "fewshot")."""
    data = json.loads(_fetch(_SPLITS[split]).read_text(encoding="utf-8"))
    rows = []
    for q in data["Questions"]:
        answers = _answers(q)
        if answers:
            rows.append({"id": q["Question-ID"], "question": q["RawQuestion"].strip(), "answer": answers[0],
                         "answers": answers})
    return rows


def load_freebaseqa(**_: Any) -> Any:
    """lm-eval ``custom_dataset`` hook: a DatasetDict with splits ``test`` and ``fewshot``."""
    import datasets

    return datasets.DatasetDict({split: datasets.Dataset.from_list(freebaseqa_rows(split)) for split in _SPLITS})
