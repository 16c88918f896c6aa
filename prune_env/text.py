"""Token sets for calibration and evaluation, from packaged offline text or (online) hub datasets.

Offline default: the real Wikipedia articles (CC BY-SA) shipped in gensim's test data (106 non-redirect
pages; 105 keep some prose), cleaned of wiki markup once and cached as ``<cache>/text/enwiki-gensim-v<N>.txt``. A single text is split by token position:
calibration windows come only from the first ``1 - eval_fraction`` of its tokens and evaluation windows
only from the rest, so the two never overlap. Sequence length is always explicit, never the model's
``max_position_embeddings``.
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
    "DEFAULT_SEQLEN_CPU",
    "DEFAULT_SEQLEN_GPU",
    "TextSource",
    "TokenSets",
    "build_token_sets",
    "clean_wiki_article",
    "default_seqlen",
    "load_text",
    "packaged_wiki_text",
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
    """Named raw text: either one ``text`` (split later by token position) or ``calib_text`` + ``eval_text``."""

    name: str
    text: str | None = None
    calib_text: str | None = None
    eval_text: str | None = None

    def __post_init__(self) -> None:
        single = self.text is not None
        pair = self.calib_text is not None and self.eval_text is not None
        partial = (self.calib_text is None) != (self.eval_text is None)
        if single == pair or partial:
            raise ValueError(f"TextSource {self.name!r} needs either text=... or both calib_text=... and "
                             f"eval_text=...")


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
    return TextSource("hf:wikitext2", calib_text="\n\n".join(train["text"]), eval_text="\n\n".join(test["text"]))


def _hf_c4() -> TextSource:
    train = _load_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"},
                          split="train")
    val = _load_dataset("allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
                        split="validation")
    calib = train.select(range(min(C4_CALIB_DOCS, len(train))))["text"]
    evals = val.select(range(min(C4_EVAL_DOCS, len(val))))["text"]
    return TextSource("hf:c4", calib_text="\n\n".join(calib), eval_text=" ".join(evals))


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
        return TextSource("wiki", text=packaged_wiki_text(cache))
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


@dataclass
class TokenSets:
    """Calibration and evaluation windows, each ``[n, seqlen]`` token ids.

    ``calib_stream_tokens``/``eval_stream_tokens``: sizes of the token streams the windows came from;
    ``eval_fraction`` is None when the source had separate calibration and evaluation texts.
    """

    calib: torch.Tensor
    eval: torch.Tensor
    seqlen: int
    source: str
    seed: int
    needs_bos: bool = False
    eval_fraction: float | None = None
    calib_stream_tokens: int = 0
    eval_stream_tokens: int = 0

    def describe(self) -> dict[str, Any]:
        """Plain-data summary for reports."""
        return {
            "source": self.source,
            "seqlen": self.seqlen,
            "n_calib": int(self.calib.shape[0]),
            "n_eval": int(self.eval.shape[0]),
            "calib_tokens": int(self.calib.numel()),
            "eval_tokens": int(self.eval.numel()),
            "seed": self.seed,
            "needs_bos": self.needs_bos,
            "eval_fraction": self.eval_fraction,
            "calib_stream_tokens": self.calib_stream_tokens,
            "eval_stream_tokens": self.eval_stream_tokens,
        }


def _check_args(seqlen: int, n_calib: int, n_eval: int, eval_fraction: float) -> None:
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2, got {seqlen}")
    if n_calib < 1:
        raise ValueError(f"n_calib must be at least 1, got {n_calib}")
    if n_eval < 0:
        raise ValueError(f"n_eval must be 0 (calibration only) or more, got {n_eval}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be strictly between 0 and 1, got {eval_fraction}")


def _streams(tokenizer: Any, source: TextSource, eval_fraction: float) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Calibration and evaluation token streams, plus a phrase naming them for error messages."""
    if source.text is None:
        calib = tokenize_text(tokenizer, source.calib_text or "")
        return calib, tokenize_text(tokenizer, source.eval_text or ""), "text"
    ids = tokenize_text(tokenizer, source.text)
    split = int(len(ids) * (1.0 - eval_fraction))
    where = f"part (eval_fraction={eval_fraction} of {len(ids):,} tokens)"
    return ids[:split], ids[split:], where


def _check_capacity(kind: str, count_name: str, stream: torch.Tensor, body: int, n: int,
                    seqlen: int, source: str, where: str) -> None:
    """Demand room for ``n`` non-overlapping windows of ``body`` text tokens in ``stream``."""
    capacity = len(stream) // body
    if n > capacity:
        raise ValueError(
            f"the {kind} {where} of {source!r} has {len(stream):,} tokens, enough for {capacity} windows of "
            f"seqlen {seqlen}, but {count_name}={n} were asked for: lower {count_name} to at most {capacity} "
            f"or lower seqlen{', or change eval_fraction' if where != 'text' else ''}, or use a longer text"
        )


def _random_windows(stream: torch.Tensor, body: int, n: int, seed: int) -> torch.Tensor:
    """``n`` windows at random start offsets (torch generator seeded with ``seed``, as Wanda/SparseGPT)."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - body + 1, (n,), generator=gen)
    return torch.stack([stream[s : s + body] for s in starts.tolist()])


def _with_bos(windows: torch.Tensor, bos: int | None) -> torch.Tensor:
    if bos is None:
        return windows
    return torch.cat([torch.full((windows.shape[0], 1), bos, dtype=torch.long), windows], dim=1)


def build_token_sets(
    tokenizer: Any,
    source: TextSource | str,
    *,
    seqlen: int,
    n_calib: int,
    n_eval: int,
    seed: int = 0,
    needs_bos: bool = False,
    eval_fraction: float = 0.2,
) -> TokenSets:
    """Cut calibration and evaluation windows of ``seqlen`` tokens from a text source.

    Evaluation: the first ``n_eval`` consecutive non-overlapping windows of the evaluation stream (fixed,
    independent of ``seed``). ``n_eval=0`` is allowed for calibration-only use and gives a ``[0, seqlen]``
    tensor; the calibration windows do not depend on ``n_eval``. Calibration: ``n_calib`` windows at random
    offsets, reproducible under ``seed``; they may overlap one another, but the stream must hold at least
    ``n_calib`` non-overlapping windows so the set is not mostly repeats. With ``needs_bos`` each window is
    the tokenizer's BOS followed by ``seqlen - 1`` text tokens.
    """
    _check_args(seqlen, n_calib, n_eval, eval_fraction)
    if isinstance(source, str):
        source = load_text(source)
    bos = None
    if needs_bos:
        bos = tokenizer.bos_token_id
        if bos is None:
            raise ValueError("needs_bos=True but the tokenizer has no bos_token_id; pass needs_bos=False")
    body = seqlen - 1 if needs_bos else seqlen
    calib_stream, eval_stream, where = _streams(tokenizer, source, eval_fraction)
    _check_capacity("calibration", "n_calib", calib_stream, body, n_calib, seqlen, source.name, where)
    _check_capacity("evaluation", "n_eval", eval_stream, body, n_eval, seqlen, source.name, where)
    calib = _random_windows(calib_stream, body, n_calib, seed)
    evals = eval_stream[: n_eval * body].reshape(n_eval, body)
    return TokenSets(
        calib=_with_bos(calib, bos),
        eval=_with_bos(evals, bos),
        seqlen=seqlen,
        source=source.name,
        seed=seed,
        needs_bos=needs_bos,
        eval_fraction=eval_fraction if source.text is not None else None,
        calib_stream_tokens=len(calib_stream),
        eval_stream_tokens=len(eval_stream),
    )
