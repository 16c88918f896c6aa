"""Factual question/answer pairs from installed packages: Red-Trivia's lists and gensim's analogy pairs.

Red-Trivia (PyPI ``Red-Trivia``, GPLv3) ships trivia lists as YAML (question -> accepted answers). Its
sdist has no geography list, so geography comes from gensim's ``questions-words.txt`` instead: US city ->
state and country -> currency pairs. Everything is read from the installed packages at run time.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..normalize import normalize_answer

__all__ = ["FACT_SOURCES", "MC_SOURCES", "Fact", "load_facts", "red_trivia_list"]

_RED_TRIVIA_DIST = "Red-Trivia"
_RED_TRIVIA_LISTS = "redbot/ext/trivia/lists"

# source name -> answer kind (distractors for multiple choice are answers of the same kind).
_RED_TRIVIA_KINDS = {"worldcapitals": "world_capital", "uscapitals": "us_capital", "elements": "element_symbol",
                     "general": None}
FACT_SOURCES = ("worldcapitals", "uscapitals", "geography", "elements", "general")
# general trivia answers are of every kind (people, films, numbers...): no same-kind distractors exist.
MC_SOURCES = ("worldcapitals", "uscapitals", "geography", "elements")


@dataclass(frozen=True)
class Fact:
    """One question with its accepted answers; ``answers[0]`` is the canonical (displayed) one.

    ``kind`` names the answer type that multiple-choice distractors are drawn from (None: no MC).
    """

    source: str
    kind: str | None
    question: str
    answers: tuple[str, ...]


def red_trivia_list(name: str) -> Path:
    """Path of one Red-Trivia list YAML inside the installed package (never imported, only read)."""
    try:
        dist = importlib.metadata.distribution(_RED_TRIVIA_DIST)
    except importlib.metadata.PackageNotFoundError as e:
        raise ImportError(
            "the factual tasks read their questions from the 'Red-Trivia' package, which is not installed: "
            "pip install 'Red-Trivia==1.1.1' (or pip install 'prune-gym[eval]')"
        ) from e
    path = Path(str(dist.locate_file(f"{_RED_TRIVIA_LISTS}/{name}.yaml")))
    if not path.is_file():
        raise FileNotFoundError(f"Red-Trivia is installed but its list {path} is missing; reinstall it: "
                                f"pip install --force-reinstall 'Red-Trivia==1.1.1'")
    return path


def _unique(answers: list[object]) -> tuple[str, ...]:
    """Answers as strings, duplicates (same text) dropped, order kept."""
    seen: dict[str, None] = {}
    for answer in answers:
        text = str(answer).strip()
        if text and text not in seen:
            seen[text] = None
    return tuple(seen)


def _red_trivia_facts(name: str) -> list[Fact]:
    data = yaml.safe_load(red_trivia_list(name).read_text(encoding="utf-8"))
    facts = []
    for question, answers in data.items():
        if question.isupper() or not isinstance(answers, list):  # AUTHOR, CONFIG and other metadata keys
            continue
        accepted = _unique(answers)
        if accepted:
            facts.append(Fact(name, _RED_TRIVIA_KINDS[name], question.strip(), accepted))
    return facts


def _questions_words() -> Path:
    import gensim

    path = Path(gensim.__file__).parent / "test" / "test_data" / "questions-words.txt"
    if not path.is_file():
        raise FileNotFoundError(f"gensim's test data file {path} is missing (this gensim build ships no test "
                                f"data); reinstall the wheel: pip install --force-reinstall gensim")
    return path


def _analogy_pairs(section: str) -> Iterator[tuple[str, str]]:
    """The distinct (a, b) word pairs of one ``: section`` of questions-words.txt (each line holds two)."""
    current = None
    seen: set[tuple[str, str]] = set()
    for line in _questions_words().read_text(encoding="utf-8").splitlines():
        if line.startswith(":"):
            current = line[1:].strip()
            continue
        words = line.split()
        if current != section or len(words) != 4:
            continue
        for pair in ((words[0], words[1]), (words[2], words[3])):
            if pair not in seen:
                seen.add(pair)
                yield pair


def _geography_facts() -> list[Fact]:
    """US city -> state (a city in two states accepts both) and country -> currency."""
    states: dict[str, list[str]] = {}
    for city, state in _analogy_pairs("city-in-state"):
        states.setdefault(city, []).append(state)
    facts = [Fact("geography", "us_state", f"In which US state is the city of {city}?", tuple(names))
             for city, names in sorted(states.items())]
    facts += [Fact("geography", "currency", f"What is the currency of {country}?", (currency,))
              for country, currency in sorted(_analogy_pairs("currency"))]
    return facts


def load_facts(source: str) -> list[Fact]:
    """All facts of one source in a fixed order, questions unique after normalisation (first kept)."""
    if source == "geography":
        facts = _geography_facts()
    elif source in _RED_TRIVIA_KINDS:
        facts = _red_trivia_facts(source)
    else:
        raise ValueError(f"unknown fact source {source!r}; sources are: {', '.join(FACT_SOURCES)}")
    unique: dict[str, Fact] = {}
    for fact in facts:
        unique.setdefault(normalize_answer(fact.question), fact)
    return list(unique.values())
