"""Token sets for calibration, validation and test, from packaged offline text or (online) hub datasets.

Three disjoint sets of ``seqlen``-token windows (see :func:`build_token_sets`, and the protocol section of
the README):

* **calibration**: the pruning statistics (Wanda norms, SparseGPT Hessians) and the gradient profile;
* **validation**: everything a policy or wrapper can react to: the reward perplexity, AutoRollback's
  decisions, a search's fitness, the activations behind the observation's Wanda profile;
* **test**: only the final scores (``PruningEnv.evaluate_full``).

A single text (the packaged ``wiki`` and ``lee``, a local file) is split by token position into a
calibration range, a validation range and a test range (the last ``test_fraction`` of its tokens). Sources
with a train and a test split (``hf:wikitext2``, ``hf:c4``) take calibration and validation from disjoint
ranges of the train split and test windows from the test split, as the Wanda/SparseGPT repositories do.
Offline default: the real Wikipedia articles (CC BY-SA) shipped in gensim's test data (106 non-redirect
pages; 105 keep some prose), cleaned of wiki markup once and cached as ``<cache>/text/enwiki-gensim-v<N>.txt``;
its last 15% (from the first paragraph at or after 85% of the characters) is reserved for the harness task
``pg_wiki_ppl`` and never windowed. Sequence length is always explicit, never ``max_position_embeddings``.
"""

from __future__ import annotations

import bz2
import importlib.util
import itertools
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from .models import cache_dir

__all__ = [
    "DEFAULT_OOD_WINDOWS",
    "DEFAULT_SEQLEN_CPU",
    "DEFAULT_SEQLEN_GPU",
    "DEFAULT_TEST_FRACTION",
    "DEFAULT_VALIDATION_FRACTION",
    "TextSource",
    "TokenRange",
    "TokenSets",
    "WIKI_RESERVED_FRACTION",
    "build_token_sets",
    "clean_wiki_article",
    "default_seqlen",
    "load_text",
    "ood_source_name",
    "packaged_wiki_text",
    "paragraph_start_at",
    "tokenize_text",
]

DEFAULT_SEQLEN_CPU = 256
DEFAULT_SEQLEN_GPU = 2048

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_FILE = "lee_background.cor"
# The cleaned text is cached under a versioned name: bump the version whenever the cleaning rules change, so a
# stale cache from older code is never read (it would silently change every measured perplexity).
WIKI_CLEANING_VERSION = 2
WIKI_CACHE_NAME = f"enwiki-gensim-v{WIKI_CLEANING_VERSION}.txt"
# hf:c4 reads one shard of each split; this many leading documents are kept (tokenizing the whole
# training shard would take minutes). The evaluation text is the first 1100 validation documents joined
# by a space, as in the SparseGPT/Wanda repos, so their first 256 windows are the published C4 set.
C4_CALIB_DOCS = 10_000
C4_EVAL_DOCS = 1100
C4_TEST_WINDOWS = 256  # the published C4 perplexity set: the first 256 windows of that text
# Single texts: the last DEFAULT_TEST_FRACTION of the usable tokens is the test range, the DEFAULT_VALIDATION_FRACTION
# before it the validation range, the rest (from the start) the calibration range. Sources with a train split
# keep the last DEFAULT_VALIDATION_FRACTION of the train tokens for validation.
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.2
# The packaged Wikipedia text from the first paragraph at or after this fraction of its characters is reserved
# for the harness task pg_wiki_ppl (harness_tasks/sources/wiki.py uses the same rule) and never windowed here.
WIKI_RESERVED_FRACTION = 0.85
WIKI_RESERVED_FOR = "pg_wiki_ppl"
DEFAULT_OOD_WINDOWS = 32  # out-of-domain test windows when none are asked for: as many as fit, at most this
_PACKAGED_OTHER = MappingProxyType({"wiki": "lee", "lee": "wiki"})  # the ood text when it would equal the text

_SOURCE_FORMS = "'wiki' (packaged, default), 'lee' (packaged), 'hf:wikitext2', 'hf:c4' or a path to a UTF-8 text file"

# Trailing sections that hold citation lists rather than prose: an article is cut at the first of these.
_END_SECTIONS = frozenset(
    {"references", "external links", "see also", "further reading", "notes", "bibliography", "footnotes",
     "sources", "citations", "works cited", "notes and references", "references and notes"}
)
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1$")
_LIST_MARK = re.compile(r"^[*#:;]+\s*")
# Image captions and gallery lines that survive filter_wiki: "File:x.jpg|caption", "caption|alt=...",
# "x.jpg|caption", "caption|Other caption"; dropped whole.
_CAPTION = re.compile(r"^(?:File|Image)\s*:|\.(?:jpe?g|png|gif|svg|tiff?|ogg|ogv|webm)\s*\||\w\|(?:alt=|[A-Z])", re.I)
_FILE_LINK = re.compile(r"\[\[\s*(?:File|Image)\s*:", re.I)
_TABLE = re.compile(r"\{\|")
# A caption glued in front of a paragraph: "caption|thumb", "caption|217x217pxText ..."; the prefix is cut.
_CAPTION_PREFIX = re.compile(r"^[^|]*\|\s*(?:thumb|upright|(?:\d+x)?\d+px)\s*", re.I)
# Lines kept as prose: at least this many words, or a sentence end. Shorter ones are table cells.
_MIN_WORDS = 4
_SENTENCE_END = re.compile(r"[.!?:]['\")]?$")
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_SPACES = re.compile(r"[ \t]{2,}")
_BLANK_RUNS = re.compile(r"\n{3,}")
# Chunk boundaries for tokenization: just before a newline that follows a non-space character, where
# byte-level BPE and SentencePiece split anyway, so chunked ids equal whole-text ids.
_CHUNK_BOUNDARY = re.compile(r"(?<=\S)(?=\n)")


def default_seqlen(device: str | torch.device) -> int:
    """Window length when the user gives none: long on GPU, short enough to be quick on CPU."""
    return DEFAULT_SEQLEN_GPU if torch.device(device).type == "cuda" else DEFAULT_SEQLEN_CPU


@dataclass(frozen=True)
class TextSource:
    """Named raw text: either one ``text`` (split later by token position) or ``train_text`` + ``test_text``.

    ``test_windows``: with a test split, the test range is its first ``test_windows`` windows (None: all of
    it). ``reserved_from``: with one text, the character offset from which the text is kept for another
    evaluation (``reserved_for``, e.g. ``pg_wiki_ppl``) and never windowed.
    """

    name: str
    text: str | None = None
    train_text: str | None = None
    test_text: str | None = None
    test_windows: int | None = None
    reserved_from: int | None = None
    reserved_for: str | None = None

    def __post_init__(self) -> None:
        single = self.text is not None
        pair = self.train_text is not None and self.test_text is not None
        partial = (self.train_text is None) != (self.test_text is None)
        if single == pair or partial:
            raise ValueError(f"TextSource {self.name!r} needs either text=... or both train_text=... and "
                             f"test_text=...")
        if self.reserved_from is not None and not (single and 0 < self.reserved_from <= len(self.text or "")):
            raise ValueError(f"TextSource {self.name!r}: reserved_from must be a character offset inside text")
        if self.test_windows is not None and (single or self.test_windows < 1):
            raise ValueError(f"TextSource {self.name!r}: test_windows must be >= 1 and needs a test_text")


def paragraph_start_at(text: str, fraction: float) -> int:
    """Offset of the first paragraph (after a blank line) that starts at or after ``fraction`` of the characters.

    The packaged Wikipedia text is reserved from ``paragraph_start_at(text, WIKI_RESERVED_FRACTION)`` on;
    ``harness_tasks.sources.wiki.heldout_start`` calls this function, so the two can never disagree.
    """
    cut = int(len(text) * fraction)
    if cut == 0 or text[cut - 2 : cut] == "\n\n":
        return cut
    boundary = text.find("\n\n", cut)
    if boundary < 0:
        raise ValueError(f"no paragraph starts after {fraction:.0%} of the text ({len(text)} characters)")
    return boundary + 2


# --------------------------------------------------------------------------------------------- packaged text
def _gensim_test_file(name: str) -> Path:
    """A file of gensim's bundled test data, found through the installed package (without importing it)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the packaged text sources need gensim: pip install gensim")
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data" / name
    if not path.is_file():
        raise FileNotFoundError(f"gensim's test data file {path} is missing (this gensim build ships no "
                                f"test data); reinstall the wheel: pip install --force-reinstall gensim")
    return path


def _strip_blocks(markup: str, opener: re.Pattern[str], open_mark: str, close_mark: str) -> str:
    """Remove every block that starts where ``opener`` matches and ends at its balancing ``close_mark``
    (blocks nest: a caption holds links, a table holds tables). An unclosed block runs to the end."""
    marks = re.compile(f"{re.escape(open_mark)}|{re.escape(close_mark)}")
    out, pos = [], 0
    for start in (m.start() for m in opener.finditer(markup)):
        if start < pos:  # inside a block already removed
            continue
        out.append(markup[pos:start])
        depth, pos = 0, len(markup)
        for mark in marks.finditer(markup, start):
            depth += 1 if mark.group() == open_mark else -1
            if depth == 0:
                pos = mark.end()
                break
    out.append(markup[pos:])
    return "".join(out)


def _strip_files_and_tables(markup: str) -> str:
    """Drop ``[[File:...]]``/``[[Image:...]]`` links with their captions, and ``{| ... |}`` tables:
    filter_wiki keeps captions and table cells as stray lines in the middle of the prose."""
    return _strip_blocks(_strip_blocks(markup, _FILE_LINK, "[[", "]]"), _TABLE, "{|", "|}")


def _clean_line(line: str) -> str:
    """Prose of one non-heading line, or "" for captions, table cells and markup debris."""
    line = _CAPTION_PREFIX.sub("", _LIST_MARK.sub("", line))
    line = _SPACES.sub(" ", _EMPTY_PARENS.sub("", line)).strip()
    if _CAPTION.search(line) or not any(ch.isalpha() for ch in line):  # letterless: scores, numbers
        return ""
    if len(line.split()) < _MIN_WORDS and not _SENTENCE_END.search(line):
        return ""
    return line


def clean_wiki_article(title: str, markup: str) -> str:
    """Plain prose of one article: ``filter_wiki``, then drop bold/italic quotes, heading marks, list
    markers, captions, table cells (short lines that are not sentences) and the trailing reference
    sections. Starts with the title; headings stay as plain lines."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(_strip_files_and_tables(markup)).replace("'''", "").replace("''", "")
    lines: list[tuple[str, bool]] = [(title, True), ("", False)]  # (line, is a heading or the title)
    for raw in text.splitlines():
        heading = _HEADING.match(raw.strip())
        if heading and heading.group(2).lower() in _END_SECTIONS:
            break
        lines.append((heading.group(2), True) if heading else (_clean_line(raw.strip()), False))
    kept = _drop_empty_sections(lines)
    return _BLANK_RUNS.sub("\n\n", "\n".join(kept)).strip()


def _drop_empty_sections(lines: list[tuple[str, bool]]) -> list[str]:
    """Drop headings with no prose before the next heading (their section was a table or a gallery)."""
    kept: list[str] = []
    pending: list[str] = []  # lines from the last heading on, until prose confirms it
    for line, is_heading in lines:
        if is_heading:
            pending = [line]
        elif pending and line:
            kept.extend(pending + [line])
            pending = []
        elif pending:
            pending.append(line)
        else:
            kept.append(line)
    return kept


def _extract_wiki(path: Path) -> str:
    """Clean every main-namespace, non-redirect, non-empty article; join them by a blank line."""
    from gensim.corpora.wikicorpus import extract_pages

    articles = []
    with bz2.open(path, "rb") as f:
        for title, markup, _pageid in extract_pages(f, filter_namespaces=("0",)):
            if not markup.strip() or markup.lstrip().upper().startswith("#REDIRECT"):
                continue
            article = clean_wiki_article(title, markup)
            if article.count("\n") > 0:  # more than the title survived
                articles.append(article)
    return "\n\n".join(articles) + "\n"


def _atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def packaged_wiki_text(cache: Path | str | None = None) -> str:
    """The cleaned Wikipedia articles from gensim's test data (extracted once, then read from the cache)."""
    cached = Path(cache if cache is not None else cache_dir()) / "text" / WIKI_CACHE_NAME
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    text = _extract_wiki(_gensim_test_file(WIKI_FILE))
    _atomic_write_text(cached, text)
    return text


def _lee_text() -> str:
    """gensim's Lee background corpus: 300 ABC news stories, one a line, joined by blank lines."""
    lines = _gensim_test_file(LEE_FILE).read_text(encoding="utf-8").splitlines()
    return "\n\n".join(line.strip() for line in lines if line.strip()) + "\n"


# ------------------------------------------------------------------------------------------------ hub text
def _load_dataset(*args: Any, **kwargs: Any) -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError("hub text sources need the 'datasets' package: pip install 'prune-gym[datasets]'") from e
    return datasets.load_dataset(*args, **kwargs)


def _hf_wikitext2() -> TextSource:
    train = _load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="train")
    test = _load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="test")
    return TextSource("hf:wikitext2", train_text="\n\n".join(train["text"]), test_text="\n\n".join(test["text"]))


def _hf_c4() -> TextSource:
    train = _load_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"},
                          split="train")
    val = _load_dataset("allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
                        split="validation")
    calib = train.select(range(min(C4_CALIB_DOCS, len(train))))["text"]
    evals = val.select(range(min(C4_EVAL_DOCS, len(val))))["text"]
    return TextSource("hf:c4", train_text="\n\n".join(calib), test_text=" ".join(evals),
                      test_windows=C4_TEST_WINDOWS)


_HF_SOURCES: Mapping[str, Callable[[], TextSource]] = MappingProxyType(
    {"hf:wikitext2": _hf_wikitext2, "hf:c4": _hf_c4}
)


def _load_hf(name: str) -> TextSource:
    try:
        return _HF_SOURCES[name]()
    except OSError as e:  # ConnectionError, offline mode, missing dataset files
        raise OSError(f"text source {name!r} needs internet access to the Hugging Face hub, which failed: "
                      f"{e}. Offline, use the packaged source 'wiki' (or 'lee') or a local text file.") from e


def load_text(source: str = "wiki", cache: Path | str | None = None) -> TextSource:
    """Resolve a source name: 'wiki', 'lee', 'hf:wikitext2', 'hf:c4', else a local UTF-8 text file path."""
    if source == "wiki":
        text = packaged_wiki_text(cache)
        return TextSource("wiki", text=text, reserved_from=paragraph_start_at(text, WIKI_RESERVED_FRACTION),
                          reserved_for=WIKI_RESERVED_FOR)
    if source == "lee":
        return TextSource("lee", text=_lee_text())
    if source in _HF_SOURCES:
        return _load_hf(source)
    path = Path(source).expanduser()
    if path.is_file():
        try:
            return TextSource(f"file:{path}", text=path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"text file {path} is not valid UTF-8 ({e}); convert it to UTF-8") from e
    raise ValueError(f"unknown text source {source!r} (no such file either); use {_SOURCE_FORMS}")


# -------------------------------------------------------------------------------------------------- tokens
def tokenize_text(tokenizer: Any, text: str, *, chunk_chars: int = 16_384) -> torch.Tensor:
    """Token ids of ``text`` without special tokens, as a 1-D LongTensor.

    Long texts are cut at line boundaries into chunks of about ``chunk_chars`` and tokenized as one batch:
    fast (parallel) and free of the "sequence longer than max length" warning.
    """
    chunks: list[str] = []
    size = 0
    for piece in _CHUNK_BOUNDARY.split(text):
        if chunks and size + len(piece) <= chunk_chars:
            chunks[-1] += piece
            size += len(piece)
        else:
            chunks.append(piece)
            size = len(piece)
    if not chunks or not text:
        return torch.empty(0, dtype=torch.long)
    ids = tokenizer(chunks, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(list(itertools.chain.from_iterable(ids)), dtype=torch.long)


@dataclass(frozen=True)
class TokenRange:
    """Where one set's windows lie: the token range ``[start, end)`` of a named token stream and the start
    offset of every window in it. Offsets count text tokens; a window holds ``seqlen`` of them, or
    ``seqlen - 1`` after a BOS token (``TokenSets.needs_bos``). ``placement``: ``random`` (seeded offsets),
    ``spread`` (non-overlapping, evenly spaced over the range) or ``reserved`` (no windows: kept for others)."""

    stream: str
    start: int
    end: int
    window_starts: tuple[int, ...] = ()
    placement: str = "spread"

    def describe(self) -> dict[str, Any]:
        return {"stream": self.stream, "start": self.start, "end": self.end, "placement": self.placement,
                "window_starts": list(self.window_starts)}


@dataclass
class TokenSets:
    """Calibration, validation and test windows (each ``[n, seqlen]`` token ids), disjoint by construction,
    plus optional out-of-domain test windows (``ood``) from a second text.

    ``ranges`` says where each set lies (``"calibration"``, ``"validation"``, ``"test"``, and ``"ood"``,
    ``"reserved"`` when present) in the token streams ``streams`` (name -> length in tokens): ``"text"`` for a
    single text, ``"train"`` and ``"test"`` for a source with splits, ``"ood:<name>"`` for the ood text.
    """

    calib: torch.Tensor
    validation: torch.Tensor
    test: torch.Tensor
    seqlen: int
    source: str
    seed: int
    needs_bos: bool
    ranges: dict[str, TokenRange]
    streams: dict[str, int]
    ood: torch.Tensor | None = None
    ood_source: str | None = None
    reserved_for: str | None = None
    validation_fraction: float | None = None
    test_fraction: float | None = None

    @property
    def eval(self) -> torch.Tensor:
        """Deprecated alias of :attr:`test` (the windows that were called "evaluation" before issue 12)."""
        return self.test

    @property
    def window_tokens(self) -> int:
        """Text tokens per window (``seqlen``, or ``seqlen - 1`` after a BOS)."""
        return self.seqlen - 1 if self.needs_bos else self.seqlen

    def describe(self) -> dict[str, Any]:
        """Plain-data summary for reports and run configs: every set's size and token positions."""

        def one(name: str, windows: torch.Tensor | None) -> dict[str, Any] | None:
            if windows is None or name not in self.ranges:
                return None
            return {"windows": int(windows.shape[0]), "tokens": int(windows.numel()), **self.ranges[name].describe()}

        reserved = self.ranges.get("reserved")
        ood = one("ood", self.ood)
        return {
            "source": self.source,
            "seqlen": self.seqlen,
            "seed": self.seed,
            "needs_bos": self.needs_bos,
            "streams": dict(self.streams),
            "validation_fraction": self.validation_fraction,
            "test_fraction": self.test_fraction,
            "n_calib": int(self.calib.shape[0]),
            "n_validation": int(self.validation.shape[0]),
            "n_test": int(self.test.shape[0]),
            "n_ood": int(self.ood.shape[0]) if self.ood is not None else 0,
            "calibration": one("calibration", self.calib),
            "validation": one("validation", self.validation),
            "test": one("test", self.test),
            "ood": None if ood is None else {"source": self.ood_source, **ood},
            "reserved": None if reserved is None else {"for": self.reserved_for, "stream": reserved.stream,
                                                       "start": reserved.start, "end": reserved.end},
        }


def _check_args(seqlen: int, n_calib: int, n_validation: int, n_test: int | None, validation_fraction: float,
                test_fraction: float) -> None:
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2, got {seqlen}")
    if n_calib < 1:
        raise ValueError(f"n_calib must be at least 1, got {n_calib}")
    if n_validation < 0:
        raise ValueError(f"n_validation must be 0 (none) or more, got {n_validation}")
    if n_test is not None and n_test < 0:
        raise ValueError(f"n_test must be 0 (none), a count, or None (the whole test range), got {n_test}")
    for name, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError(f"validation_fraction + test_fraction must be below 1 (the rest is calibration), got "
                         f"{validation_fraction} + {test_fraction}")


@dataclass(frozen=True)
class _Split:
    """Token streams of a source and the calibration / validation / test ranges in them."""

    streams: dict[str, torch.Tensor]
    ranges: dict[str, tuple[str, int, int]]  # set -> (stream, start, end)
    where: dict[str, str]                    # set -> phrase for error messages
    reserved: tuple[str, int, int] | None = None


def _split(tokenizer: Any, source: TextSource, body: int, validation_fraction: float,
           test_fraction: float) -> _Split:
    """Tokenize ``source`` and cut its ranges (see :func:`build_token_sets`)."""
    if source.text is None:
        train = tokenize_text(tokenizer, source.train_text or "")
        test = tokenize_text(tokenizer, source.test_text or "")
        val_start = int(len(train) * (1.0 - validation_fraction))
        test_end = len(test) if source.test_windows is None else min(len(test), source.test_windows * body)
        of_train = f"(validation_fraction={validation_fraction} of {len(train):,} train tokens)"
        return _Split({"train": train, "test": test},
                      {"calibration": ("train", 0, val_start), "validation": ("train", val_start, len(train)),
                       "test": ("test", 0, test_end)},
                      {"calibration": f"part of the train split {of_train}",
                       "validation": f"part of the train split {of_train}",
                       "test": "split" if source.test_windows is None else
                               f"range (its first {source.test_windows} windows)"})
    cut = len(source.text) if source.reserved_from is None else source.reserved_from
    usable = tokenize_text(tokenizer, source.text[:cut])
    stream, reserved = usable, None
    if cut < len(source.text):  # tokenized on its own, so the usable tokens end exactly at the cut
        stream = torch.cat([usable, tokenize_text(tokenizer, source.text[cut:])])
        reserved = ("text", len(usable), len(stream))
    n = len(usable)
    calib_end, val_end = int(n * (1.0 - validation_fraction - test_fraction)), int(n * (1.0 - test_fraction))
    fractions = f"validation_fraction={validation_fraction}, test_fraction={test_fraction} of {n:,} tokens"
    return _Split({"text": stream},
                  {"calibration": ("text", 0, calib_end), "validation": ("text", calib_end, val_end),
                   "test": ("text", val_end, n)},
                  dict.fromkeys(("calibration", "validation", "test"), f"part ({fractions})"), reserved)


def _capacity_error(kind: str, count_name: str, tokens: int, body: int, n: int, seqlen: int, source: str,
                    where: str) -> ValueError:
    capacity = tokens // body
    fraction_hint = ", or change validation_fraction/test_fraction" if "fraction" in where else ""
    return ValueError(
        f"the {kind} {where} of {source!r} has {tokens:,} tokens, enough for {capacity} windows of "
        f"seqlen {seqlen}, but {count_name}={n} were asked for: lower {count_name} to at most {capacity} "
        f"or lower seqlen{fraction_hint}, or use a longer text"
    )


def _random_starts(start: int, end: int, body: int, n: int, seed: int) -> list[int]:
    """``n`` window starts at random offsets in ``[start, end - body]`` (torch generator seeded with ``seed``,
    as Wanda/SparseGPT draw their calibration windows); windows may overlap one another."""
    gen = torch.Generator().manual_seed(seed)
    return (start + torch.randint(0, end - start - body + 1, (n,), generator=gen)).tolist()


def _spread_starts(start: int, end: int, body: int, n: int | None) -> list[int]:
    """``n`` non-overlapping windows evenly spaced over ``[start, end)`` on the grid of whole windows from
    ``start`` (None: every window of the range, consecutive): a few windows still cover the whole range."""
    capacity = (end - start) // body
    n = capacity if n is None else n
    return [start + (i * capacity // n) * body for i in range(n)] if n else []


def _windows(stream: torch.Tensor, starts: list[int], body: int, bos: int | None) -> torch.Tensor:
    windows = torch.stack([stream[s : s + body] for s in starts]) if starts else torch.empty(0, body, dtype=torch.long)
    if bos is None:
        return windows
    return torch.cat([torch.full((windows.shape[0], 1), bos, dtype=torch.long), windows], dim=1)


def ood_source_name(ood_text: str | None, text: str) -> str | None:
    """The out-of-domain text to use beside the main ``text``: None when off (None or ``"none"``); the
    other packaged text when ``ood_text`` names the main text itself (``wiki`` <-> ``lee``)."""
    if ood_text is None or ood_text.strip().lower() == "none":
        return None
    if ood_text == text:
        if text not in _PACKAGED_OTHER:
            raise ValueError(f"ood_text {ood_text!r} is the main text itself: an out-of-domain score needs another "
                             f"text, e.g. ood_text='lee' (or None to turn it off)")
        return _PACKAGED_OTHER[text]
    return ood_text


def _ood_windows(tokenizer: Any, source: TextSource, seqlen: int, body: int, n: int | None,
                 bos: int | None) -> tuple[torch.Tensor, TokenRange, int]:
    """Out-of-domain windows evenly spaced over the ood text (its usable part, or its test range)."""
    split = _split(tokenizer, source, body, DEFAULT_VALIDATION_FRACTION, DEFAULT_TEST_FRACTION)
    if source.text is None:
        stream_name, start, end = split.ranges["test"]
    else:
        stream_name, start, end = "text", 0, split.ranges["test"][2]
    stream = split.streams[stream_name]
    capacity = (end - start) // body
    if n is not None and n < 1:
        raise ValueError(f"n_ood must be at least 1, or None (as many as fit, at most {DEFAULT_OOD_WINDOWS}), got {n}")
    n = min(capacity, DEFAULT_OOD_WINDOWS) if n is None else n
    if n > capacity or n < 1:
        raise _capacity_error("out-of-domain", "n_ood", end - start, body, max(n, 1), seqlen, source.name, "text")
    starts = _spread_starts(start, end, body, n)
    return _windows(stream, starts, body, bos), TokenRange(f"ood:{source.name}", start, end, tuple(starts)), len(stream)


def build_token_sets(
    tokenizer: Any,
    source: TextSource | str,
    *,
    seqlen: int,
    n_calib: int,
    n_validation: int = 0,
    n_test: int | None = 0,
    seed: int = 0,
    needs_bos: bool = False,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    ood: TextSource | str | None = None,
    n_ood: int | None = None,
    n_eval: int | None = None,
) -> TokenSets:
    """Cut disjoint calibration, validation and test windows of ``seqlen`` tokens from a text source.

    Ranges. One text (its part from ``source.reserved_from`` on left out, e.g. ``pg_wiki_ppl``'s documents):
    calibration ``[0, 1 - validation_fraction - test_fraction)``, validation up to ``1 - test_fraction``,
    test the rest, as fractions of its tokens. A source with splits: calibration is the train split but its
    last ``validation_fraction``, validation that last part, test the test split (its first
    ``source.test_windows`` windows when set: C4's published 256).

    Windows. Calibration: ``n_calib`` windows at random offsets in its range, reproducible under ``seed``; they
    may overlap one another, but the range must hold ``n_calib`` non-overlapping windows so the set is not
    mostly repeats. Validation and test: ``n_validation`` / ``n_test`` non-overlapping windows evenly spaced
    over their range (independent of ``seed``); ``n_test=None`` takes every window of the test range (the
    literature's protocol for ``hf:wikitext2``: the whole test split). With ``needs_bos`` each window is the
    tokenizer's BOS followed by ``seqlen - 1`` text tokens. ``ood``: a second text for out-of-domain test
    windows, ``n_ood`` of them (None: as many as fit, at most ``DEFAULT_OOD_WINDOWS``) evenly spaced over it.
    ``n_eval`` is a deprecated alias of ``n_test``.
    """
    if n_eval is not None:
        if n_test not in (0, n_eval):
            raise ValueError("pass n_test (n_eval is its deprecated alias), not both")
        n_test = n_eval
    _check_args(seqlen, n_calib, n_validation, n_test, validation_fraction, test_fraction)
    if isinstance(source, str):
        source = load_text(source)
    bos = None
    if needs_bos:
        bos = tokenizer.bos_token_id
        if bos is None:
            raise ValueError("needs_bos=True but the tokenizer has no bos_token_id; pass needs_bos=False")
    body = seqlen - 1 if needs_bos else seqlen
    split = _split(tokenizer, source, body, validation_fraction, test_fraction)
    ranges: dict[str, TokenRange] = {}
    sets: dict[str, torch.Tensor] = {}
    for name, count_name, n in (("calibration", "n_calib", n_calib), ("validation", "n_validation", n_validation),
                                ("test", "n_test", n_test)):
        stream_name, start, end = split.ranges[name]
        capacity = (end - start) // body
        if (n if n is not None else 1) > capacity:
            raise _capacity_error(name, count_name, end - start, body, n if n is not None else 1, seqlen,
                                  source.name, split.where[name])
        starts = (_random_starts(start, end, body, n, seed) if name == "calibration"
                  else _spread_starts(start, end, body, n))
        ranges[name] = TokenRange(stream_name, start, end, tuple(starts),
                                  "random" if name == "calibration" else "spread")
        sets[name] = _windows(split.streams[stream_name], starts, body, bos)
    if split.reserved is not None:
        ranges["reserved"] = TokenRange(*split.reserved, placement="reserved")
    streams = {name: len(stream) for name, stream in split.streams.items()}
    ood_windows, ood_name = None, None
    if ood is not None:
        ood_source = load_text(ood) if isinstance(ood, str) else ood
        ood_windows, ranges["ood"], streams[f"ood:{ood_source.name}"] = _ood_windows(
            tokenizer, ood_source, seqlen, body, n_ood, bos)
        ood_name = ood_source.name
    single = source.text is not None
    return TokenSets(
        calib=sets["calibration"], validation=sets["validation"], test=sets["test"], seqlen=seqlen,
        source=source.name, seed=seed, needs_bos=needs_bos, ranges=ranges, streams=streams, ood=ood_windows,
        ood_source=ood_name, reserved_for=source.reserved_for if split.reserved is not None else None,
        validation_fraction=validation_fraction, test_fraction=test_fraction if single else None,
    )
