"""Held-out documents of the packaged Wikipedia text for the perplexity task.

The text is ``prune_env.text.packaged_wiki_text()`` itself: the one place this package imports
``prune_env``, on purpose, because "no overlap with the env's windows" is only checkable against the very
same text (its cleaning rules are prune_env's and versioned there). This task starts at the first paragraph
that begins at or after 85% of the characters (:func:`heldout_start`, which is
``prune_env.text.paragraph_start_at``). prune-gym tokenizes the text before that point and after it
separately and cuts its calibration, validation and test windows only from the part before it
(``prune_env.text.build_token_sets``, reserved range ``pg_wiki_ppl``), so these documents share no text
with any of the env's windows, for every tokenizer. The held-out part is cut at paragraph boundaries into
documents of at most ``max_chars`` characters (a longer paragraph is a document of its own), so ``limit=``
takes whole documents and every document fits in one 2048-token window of common tokenizers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HELDOUT_START_FRACTION", "WikiDoc", "heldout_start", "heldout_wiki_docs", "packaged_text"]

HELDOUT_START_FRACTION = 0.85  # = prune_env.text.WIKI_RESERVED_FRACTION (a test checks they agree)
MAX_DOC_CHARS = 4000
_PARAGRAPH = "\n\n"


def packaged_text() -> str:
    """prune-gym's packaged Wikipedia text (the env's calibration and evaluation source)."""
    from prune_env.text import packaged_wiki_text

    return packaged_wiki_text()


@dataclass(frozen=True)
class WikiDoc:
    """A run of whole paragraphs; ``start`` is its character offset in the packaged text."""

    start: int
    text: str


def heldout_start(text: str, fraction: float = HELDOUT_START_FRACTION) -> int:
    """Offset of the first paragraph that starts at or after ``fraction`` of the characters (the rule the env
    uses to keep this part out of its windows: ``prune_env.text.paragraph_start_at``)."""
    from prune_env.text import paragraph_start_at

    return paragraph_start_at(text, fraction)


def _paragraphs(text: str, offset: int) -> list[tuple[int, str]]:
    """(start offset, paragraph) for every non-blank paragraph of ``text[offset:]``."""
    found = []
    pos = offset
    while pos < len(text):
        end = text.find(_PARAGRAPH, pos)
        end = len(text) if end < 0 else end
        if text[pos:end].strip():
            found.append((pos, text[pos:end].strip("\n")))
        pos = end + len(_PARAGRAPH)
    return found


def heldout_wiki_docs(text: str | None = None, max_chars: int = MAX_DOC_CHARS) -> list[WikiDoc]:
    """Documents of the held-out part (default: the packaged text), in text order."""
    if text is None:
        text = packaged_text()
    docs: list[WikiDoc] = []
    start, parts = -1, []
    for pos, paragraph in _paragraphs(text, heldout_start(text)):
        candidate = _PARAGRAPH.join([*parts, paragraph])
        if parts and len(candidate) > max_chars:
            docs.append(WikiDoc(start, _PARAGRAPH.join(parts)))
            start, parts = pos, [paragraph]
        else:
            start, parts = (pos if not parts else start), [*parts, paragraph]
    if parts:
        docs.append(WikiDoc(start, _PARAGRAPH.join(parts)))
    return docs
