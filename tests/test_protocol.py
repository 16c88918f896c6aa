"""The evaluation protocol (issue 12): three disjoint token sets for every text source, pg_wiki_ppl's
documents outside all of them, the literature's test sets for the hub sources (built offline from
stand-in splits), and an out-of-domain text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import prune_env.text as text_mod
from harness_tasks.sources.wiki import HELDOUT_START_FRACTION, heldout_start, heldout_wiki_docs
from prune_env.models import DEFAULT_MODEL, materialize_preset
from prune_env.text import (
    WIKI_RESERVED_FRACTION,
    TextSource,
    TokenSets,
    build_token_sets,
    load_text,
    ood_source_name,
    packaged_wiki_text,
    tokenize_text,
)

SETS = ("calibration", "validation", "test")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(materialize_preset(DEFAULT_MODEL))


def _stream(tokenizer, source: TextSource, name: str) -> torch.Tensor:
    """The token stream ``name`` of ``source``, rebuilt independently of build_token_sets."""
    if name == "train":
        return tokenize_text(tokenizer, source.train_text or "")
    if name == "test":
        return tokenize_text(tokenizer, source.test_text or "")
    assert source.text is not None
    cut = source.reserved_from or len(source.text)
    return torch.cat([tokenize_text(tokenizer, source.text[:cut]), tokenize_text(tokenizer, source.text[cut:])])


def assert_disjoint(tokenizer, source: TextSource, sets: TokenSets) -> None:
    """Every window is the stream's tokens at its recorded start, inside its set's range; no window of one set
    shares a token position with a window of another; nothing lies in the reserved range."""
    body = sets.window_tokens
    covered: dict[str, list[tuple[int, int, str]]] = {}
    streams = {name: _stream(tokenizer, source, name) for name in {sets.ranges[s].stream for s in SETS}}
    for name in SETS:
        r = sets.ranges[name]
        windows = {"calibration": sets.calib, "validation": sets.validation, "test": sets.test}[name]
        assert len(r.window_starts) == len(windows) > 0
        for window, start in zip(windows, r.window_starts):
            assert r.start <= start and start + body <= r.end, name
            text_part = window[1:] if sets.needs_bos else window
            assert torch.equal(text_part, streams[r.stream][start : start + body]), name
            covered.setdefault(r.stream, []).append((start, start + body, name))
    for stream, spans in covered.items():
        spans.sort()
        for (a0, a1, a), (b0, b1, b) in zip(spans, spans[1:]):
            assert a == b or a1 <= b0, f"{a} window [{a0}, {a1}) overlaps {b} window [{b0}, {b1}) in {stream}"
    if "reserved" in sets.ranges:
        reserved = sets.ranges["reserved"]
        assert all(end <= reserved.start for spans in covered.values() for _, end, _ in spans)
        assert reserved.end == len(streams["text"])


def test_packaged_wiki_sets_are_disjoint_and_leave_pg_wiki_ppl_out(tokenizer) -> None:
    source = load_text("wiki")
    text = packaged_wiki_text()
    assert WIKI_RESERVED_FRACTION == HELDOUT_START_FRACTION
    assert source.reserved_from == heldout_start(text) and source.reserved_for == "pg_wiki_ppl"
    sets = build_token_sets(tokenizer, source, seqlen=256, n_calib=32, n_validation=8, n_test=None, seed=0)
    assert_disjoint(tokenizer, source, sets)
    # the reserved token range is exactly the text from pg_wiki_ppl's first document on
    docs = heldout_wiki_docs(text)
    assert docs[0].start == source.reserved_from
    reserved = sets.ranges["reserved"]
    assert reserved.start == len(tokenize_text(tokenizer, text[: docs[0].start]))
    # the last test window decodes to text that ends before the first document
    last = tokenizer.decode(sets.test[-1])
    assert text.find(last) + len(last) <= docs[0].start
    info = sets.describe()
    assert info["reserved"] == {"for": "pg_wiki_ppl", "stream": "text", "start": reserved.start, "end": reserved.end}
    assert info["test"]["end"] == info["reserved"]["start"]


def test_other_single_texts_are_split_disjointly(tokenizer, tmp_path: Path) -> None:
    lee = load_text("lee")
    assert_disjoint(tokenizer, lee, build_token_sets(tokenizer, lee, seqlen=128, n_calib=16, n_validation=8,
                                                     n_test=16, seed=1))
    path = tmp_path / "corpus.txt"
    path.write_text(packaged_wiki_text()[:150_000], encoding="utf-8")
    local = load_text(str(path))
    assert local.reserved_from is None
    sets = build_token_sets(tokenizer, local, seqlen=64, n_calib=64, n_validation=16, n_test=None, needs_bos=True)
    assert_disjoint(tokenizer, local, sets)
    assert "reserved" not in sets.ranges


def test_a_source_with_splits_is_disjoint(tokenizer) -> None:
    text = packaged_wiki_text()
    source = TextSource("hf-like", train_text=text[:120_000], test_text=text[200_000:260_000])
    sets = build_token_sets(tokenizer, source, seqlen=128, n_calib=16, n_validation=8, n_test=None)
    assert_disjoint(tokenizer, source, sets)
    assert sets.ranges["calibration"].end == sets.ranges["validation"].start  # validation: the end of train


class _Split:
    """A stand-in for a ``datasets`` split: ``["text"]``, ``len`` and ``select``."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def __getitem__(self, key: str) -> list[str]:
        assert key == "text"
        return self.texts

    def __len__(self) -> int:
        return len(self.texts)

    def select(self, indices) -> _Split:
        return _Split([self.texts[i] for i in indices])


def test_hub_sources_follow_the_literature(tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline: the hub loaders get stand-in splits; what is checked is the construction of the sets."""
    text = packaged_wiki_text()
    paragraphs = [p for p in text[:400_000].split("\n\n") if p.strip()]
    train, test = paragraphs[: len(paragraphs) // 2], paragraphs[len(paragraphs) // 2 :]

    def fake_load(*args, split, **kwargs):
        return _Split(train if split == "train" else test)

    monkeypatch.setattr(text_mod, "_load_dataset", fake_load)
    wikitext = load_text("hf:wikitext2")
    assert wikitext.test_text == "\n\n".join(test) and wikitext.test_windows is None
    sets = build_token_sets(tokenizer, wikitext, seqlen=256, n_calib=8, n_validation=4, n_test=None)
    assert_disjoint(tokenizer, wikitext, sets)
    stream = tokenize_text(tokenizer, wikitext.test_text)
    n = len(stream) // 256
    assert torch.equal(sets.test, stream[: n * 256].reshape(n, 256))  # the whole split, non-overlapping windows

    c4 = load_text("hf:c4")
    assert c4.test_text == " ".join(test[: text_mod.C4_EVAL_DOCS]) and c4.test_windows == 256
    sets = build_token_sets(tokenizer, c4, seqlen=32, n_calib=8, n_validation=4, n_test=None)
    stream = tokenize_text(tokenizer, c4.test_text)
    assert torch.equal(sets.test, stream[: 256 * 32].reshape(256, 32))  # the first 256 windows
    assert_disjoint(tokenizer, c4, sets)


def test_out_of_domain_windows(tokenizer) -> None:
    sets = build_token_sets(tokenizer, "wiki", seqlen=256, n_calib=4, n_validation=2, n_test=4, ood="lee")
    lee = tokenize_text(tokenizer, load_text("lee").text or "")
    assert sets.ood is not None and sets.ood.shape == (32, 256) and sets.ood_source == "lee"
    for window, start in zip(sets.ood, sets.ranges["ood"].window_starts):
        assert torch.equal(window, lee[start : start + 256])
    info = sets.describe()["ood"]
    assert info["source"] == "lee" and info["windows"] == 32 and info["stream"] == "ood:lee"
    few = build_token_sets(tokenizer, "lee", seqlen=2048, n_calib=1, n_test=1, ood="wiki", n_ood=3)
    assert few.ood is not None and few.ood.shape == (3, 2048)
    with pytest.raises(ValueError, match="n_ood"):
        build_token_sets(tokenizer, "lee", seqlen=2048, n_calib=1, n_test=1, ood="lee", n_ood=100)


def test_ood_source_name() -> None:
    assert ood_source_name("lee", "wiki") == "lee"
    assert ood_source_name("lee", "lee") == "wiki" and ood_source_name("wiki", "wiki") == "lee"
    assert ood_source_name(None, "wiki") is None and ood_source_name("none", "wiki") is None
    with pytest.raises(ValueError, match="main text itself"):
        ood_source_name("/data/x.txt", "/data/x.txt")
