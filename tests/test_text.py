"""Tests for prune_env.text: the packaged Wikipedia text, text sources and calibration/evaluation windows.

Token tests use the real SmolLM2 tokenizer from the cached preset (converted once per machine).
"""

from __future__ import annotations

import bz2
import copy
import itertools
import re
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from prune_env.models import DEFAULT_MODEL, materialize_preset
from prune_env.text import (
    DEFAULT_SEQLEN_CPU,
    DEFAULT_SEQLEN_GPU,
    WIKI_CACHE_NAME,
    WIKI_FILE,
    TextSource,
    _gensim_test_file,
    build_token_sets,
    clean_wiki_article,
    default_seqlen,
    load_text,
    packaged_wiki_text,
    paragraph_start_at,
    tokenize_text,
)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(materialize_preset(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def wiki_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def wiki_text(wiki_cache: Path) -> str:
    return packaged_wiki_text(cache=wiki_cache)  # a fresh extraction (~3 s), not a cached file


@pytest.fixture(scope="module")
def small(wiki_text: str) -> TextSource:
    """The first ~45k tokens of the wiki text: quick to tokenize and to search."""
    return TextSource("wiki-head", text=wiki_text[:200_000])


def _positions(stream: torch.Tensor, window: torch.Tensor) -> list[int]:
    """Every start position where ``window`` occurs in ``stream``."""
    n = len(window)
    candidates = (stream[: len(stream) - n + 1] == window[0]).nonzero().flatten().tolist()
    return [p for p in candidates if torch.equal(stream[p : p + n], window)]


# ----------------------------------------------------------------------------------------- packaged text
def test_wiki_text_holds_the_articles_in_file_order(wiki_text: str) -> None:
    from gensim.corpora.wikicorpus import extract_pages

    with bz2.open(_gensim_test_file(WIKI_FILE)) as f:
        titles = [title for title, markup, _ in extract_pages(f, filter_namespaces=("0",))
                  if markup.strip() and not markup.lstrip().upper().startswith("#REDIRECT")]
    assert len(titles) == 106
    padded, pos, found = "\n\n" + wiki_text, 0, 0
    for title in titles:  # each article opens with its title as a paragraph of its own, in file order
        at = padded.find(f"\n\n{title}\n\n", pos)
        if at >= 0:
            found, pos = found + 1, at + 1
    assert found >= 100  # a pure list of names ("List of anthropologists") may clean away to nothing
    assert wiki_text.startswith("Anarchism\n\nAnarchism is a political philosophy")


def test_wiki_text_is_clean_prose(wiki_text: str) -> None:
    for junk in ("[[", "]]", "{{", "}}", "'''", "''", "thumb|", "Category:", "<ref", "&nbsp;", "#REDIRECT",
                 "File:", "==", "\n\n\n"):
        assert junk not in wiki_text, junk
    words = wiki_text.split()
    assert 400_000 < len(words) < 500_000
    lines = [line for line in wiki_text.splitlines() if line]
    assert not any(re.fullmatch(r"[\W\d_]*", line) for line in lines)  # no bare "|", "}", "1" table cells
    # Short lines left are titles and headings, each followed by prose; table cells would come in runs.
    short_pairs = sum(len(a.split()) < 4 and len(b.split()) < 4 for a, b in itertools.pairwise(lines))
    assert short_pairs < 0.005 * len(lines)
    # Reference sections are cut: their bullet lists of citations would otherwise show up here.
    assert wiki_text.count("ISBN") < 100 and "External links" not in wiki_text


def test_wiki_text_is_cached(wiki_text: str, wiki_cache: Path) -> None:
    cached = wiki_cache / "text" / WIKI_CACHE_NAME
    assert cached.read_text(encoding="utf-8") == wiki_text
    stand_in = "stand-in\n\n" * 20
    cached.write_text(stand_in, encoding="utf-8")  # a later call must read the file, not re-extract
    try:
        assert packaged_wiki_text(cache=wiki_cache) == stand_in
        assert load_text("wiki", cache=wiki_cache) == TextSource(
            "wiki", text=stand_in, reserved_from=paragraph_start_at(stand_in, 0.85), reserved_for="pg_wiki_ppl")
    finally:
        cached.write_text(wiki_text, encoding="utf-8")


def test_clean_wiki_article_removes_markup() -> None:
    markup = """'''Zebra''' is an [[animal]] of [[Africa|southern Africa]].{{cite web|url=x}}

== Description ==
[[File:Zebra.jpg|thumb|A zebra in the grass.]]
* Zebras have black and white stripes, which may confuse biting flies.
{| class="wikitable"
|-
| Height || 1.4 m
|}

== Gallery ==
Plains zebra.jpg|A plains zebra

== References ==
* Smith, J. ''Zebras''. ISBN 978-0-00-000000-0
"""
    text = clean_wiki_article("Zebra", markup)
    assert text == ("Zebra\n\nZebra is an animal of southern Africa.\n\nDescription\n\n"
                    "Zebras have black and white stripes, which may confuse biting flies.")


def test_lee_source() -> None:
    lee = load_text("lee")
    assert lee.name == "lee" and lee.text is not None
    assert len(lee.text.split("\n\n")) == 300  # one paragraph per news story
    assert lee.text.startswith("Hundreds of people have been forced to vacate their homes")


# ------------------------------------------------------------------------------------------ text sources
def test_local_file_source(tmp_path: Path, tokenizer, small: TextSource) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(small.text or "", encoding="utf-8")
    source = load_text(str(path))
    assert source == TextSource(f"file:{path}", text=small.text)
    sets = build_token_sets(tokenizer, str(path), seqlen=32, n_calib=4, n_validation=2, n_test=3)
    assert sets.source == f"file:{path}" and sets.calib.shape == (4, 32) and sets.test.shape == (3, 32)
    assert sets.validation.shape == (2, 32) and sets.eval is sets.test  # eval: the deprecated alias

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        load_text(str(latin1))


@pytest.mark.parametrize("name", ["wikitext", "hf:ptb", "/no/such/file.txt"])
def test_unknown_source_lists_valid_forms(name: str) -> None:
    with pytest.raises(ValueError) as err:
        load_text(name)
    message = str(err.value)
    assert name in message
    assert all(form in message for form in ("'wiki'", "'lee'", "'hf:wikitext2'", "'hf:c4'", "text file"))


def test_text_source_needs_one_text_or_a_pair() -> None:
    for bad in ({}, {"train_text": "a"}, {"test_text": "b"}, {"text": "t", "train_text": "a", "test_text": "b"}):
        with pytest.raises(ValueError, match="either text"):
            TextSource("x", **bad)
    with pytest.raises(ValueError, match="test_windows"):
        TextSource("x", text="t", test_windows=3)
    with pytest.raises(ValueError, match="reserved_from"):
        TextSource("x", text="t", reserved_from=5)


@pytest.mark.parametrize("name", ["hf:wikitext2", "hf:c4"])
def test_hub_sources_without_datasets(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import now fails, installed or not
    with pytest.raises(ImportError, match=r"pip install 'prune-gym\[datasets\]'"):
        load_text(name)


@pytest.mark.parametrize("name", ["hf:wikitext2", "hf:c4"])
def test_hub_sources_offline(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets_config = pytest.importorskip("datasets.config")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network attempt, fast
    monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError) as err:
        load_text(name)
    message = str(err.value)
    assert name in message and "needs internet" in message and "'wiki'" in message


# ------------------------------------------------------------------------------------------------ tokens
def test_default_seqlen() -> None:
    assert default_seqlen("cpu") == DEFAULT_SEQLEN_CPU == 256
    assert default_seqlen("cuda") == default_seqlen(torch.device("cuda:1")) == DEFAULT_SEQLEN_GPU == 2048


def test_chunked_tokenization_equals_whole_text(tokenizer, wiki_text: str) -> None:
    text = wiki_text[:300_000]
    chunked = tokenize_text(tokenizer, text, chunk_chars=2_000)  # ~150 chunks
    whole = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    assert chunked.dtype == torch.long and chunked.tolist() == whole
    assert tokenize_text(tokenizer, "").shape == (0,)


def _split_points(n_tokens: int, validation: float = 0.1, test: float = 0.2) -> tuple[int, int]:
    return int(n_tokens * (1 - validation - test)), int(n_tokens * (1 - test))


def test_shapes_and_description(tokenizer, small: TextSource) -> None:
    sets = build_token_sets(tokenizer, small, seqlen=64, n_calib=8, n_validation=3, n_test=5, seed=3)
    assert sets.calib.shape == (8, 64) and sets.validation.shape == (3, 64) and sets.test.shape == (5, 64)
    assert sets.calib.dtype == sets.validation.dtype == sets.test.dtype == torch.long
    info = sets.describe()
    n_tokens = len(tokenize_text(tokenizer, small.text or ""))
    calib_end, val_end = _split_points(n_tokens)
    assert {k: info[k] for k in ("source", "seqlen", "seed", "needs_bos", "n_calib", "n_validation", "n_test",
                                 "n_ood", "streams", "validation_fraction", "test_fraction", "ood", "reserved")} == {
        "source": "wiki-head", "seqlen": 64, "seed": 3, "needs_bos": False, "n_calib": 8, "n_validation": 3,
        "n_test": 5, "n_ood": 0, "streams": {"text": n_tokens}, "validation_fraction": 0.1, "test_fraction": 0.2,
        "ood": None, "reserved": None,
    }
    assert {k: info["calibration"][k] for k in ("windows", "tokens", "stream", "start", "end", "placement")} == {
        "windows": 8, "tokens": 512, "stream": "text", "start": 0, "end": calib_end, "placement": "random"}
    assert info["validation"]["start"] == calib_end and info["validation"]["end"] == val_end
    assert info["test"]["start"] == val_end and info["test"]["end"] == n_tokens
    assert len(info["calibration"]["window_starts"]) == 8 and info["test"]["placement"] == "spread"


def test_sets_come_from_their_ranges_and_never_overlap(tokenizer, small: TextSource) -> None:
    seqlen = 128
    sets = build_token_sets(tokenizer, small, seqlen=seqlen, n_calib=16, n_validation=4, n_test=10, seed=0)
    stream = tokenize_text(tokenizer, small.text or "")
    calib_end, val_end = _split_points(len(stream))
    for window in sets.calib:
        found = _positions(stream, window)
        assert found and all(p + seqlen <= calib_end for p in found)  # wholly inside the calibration part
    for name, start in (("validation", calib_end), ("test", val_end)):
        windows, starts = getattr(sets, name), sets.ranges[name].window_starts
        capacity = (sets.ranges[name].end - start) // seqlen
        assert list(starts) == [start + (i * capacity // len(windows)) * seqlen for i in range(len(windows))]
        for window, s in zip(windows, starts):  # evenly spaced over the whole range, on its window grid
            assert torch.equal(window, stream[s : s + seqlen])
    rows = {name: {tuple(row.tolist()) for row in getattr(sets, name)} for name in ("calib", "validation", "test")}
    assert not rows["calib"] & rows["validation"] and not rows["calib"] & rows["test"]
    assert not rows["validation"] & rows["test"]


def test_seed_controls_only_calibration(tokenizer, small: TextSource) -> None:
    def build(seed: int, n_calib: int = 8, n_test: int | None = 6):
        return build_token_sets(tokenizer, small, seqlen=64, n_calib=n_calib, n_validation=2, n_test=n_test, seed=seed)

    a, b, c = build(0), build(0), build(1)
    assert torch.equal(a.calib, b.calib) and torch.equal(a.test, b.test)
    assert not torch.equal(a.calib, c.calib)
    assert torch.equal(a.test, c.test) and torch.equal(a.validation, c.validation)
    assert torch.equal(a.test, build(0, n_calib=3).test)  # the test set ignores the calibration request
    calib_only = build(0, n_test=0)
    assert calib_only.test.shape == (0, 64) and torch.equal(calib_only.calib, a.calib)
    whole = build(0, n_test=None)  # every window of the test range, consecutive
    test_range = whole.ranges["test"]
    assert whole.test.shape[0] == (test_range.end - test_range.start) // 64
    assert list(whole.ranges["test"].window_starts) == list(range(test_range.start, test_range.end - 63, 64))


def test_bos_starts_every_window(tokenizer, small: TextSource) -> None:
    seqlen, bos = 64, tokenizer.bos_token_id
    sets = build_token_sets(tokenizer, small, seqlen=seqlen, n_calib=6, n_validation=2, n_test=4, needs_bos=True)
    assert sets.calib.shape == (6, seqlen) and sets.test.shape == (4, seqlen) and sets.needs_bos
    assert (sets.calib[:, 0] == bos).all() and (sets.test[:, 0] == bos).all() and (sets.validation[:, 0] == bos).all()
    stream = tokenize_text(tokenizer, small.text or "")
    calib_end, _ = _split_points(len(stream))
    body = seqlen - 1
    assert sets.window_tokens == body
    for window in sets.calib:
        assert any(p + body <= calib_end for p in _positions(stream, window[1:]))
    for window, s in zip(sets.test, sets.ranges["test"].window_starts):
        assert torch.equal(window[1:], stream[s : s + body])

    no_bos = copy.deepcopy(tokenizer)
    no_bos.bos_token = None
    with pytest.raises(ValueError, match="no bos_token_id"):
        build_token_sets(no_bos, small, seqlen=seqlen, n_calib=1, n_test=1, needs_bos=True)


def test_train_and_test_splits(tokenizer, wiki_text: str) -> None:
    train_text, test_text = wiki_text[:60_000], wiki_text[-60_000:]
    source = TextSource("pair", train_text=train_text, test_text=test_text)
    sets = build_token_sets(tokenizer, source, seqlen=64, n_calib=5, n_validation=3, n_test=None)
    train, test = tokenize_text(tokenizer, train_text), tokenize_text(tokenizer, test_text)
    val_start = int(len(train) * 0.9)
    assert all(any(p + 64 <= val_start for p in _positions(train, window)) for window in sets.calib)
    assert all(_positions(train, window)[0] >= val_start for window in sets.validation)
    n = len(test) // 64
    assert torch.equal(sets.test, test[: n * 64].reshape(n, 64))  # the whole test split, consecutive windows
    info = sets.describe()
    assert info["test_fraction"] is None and info["streams"] == {"train": len(train), "test": len(test)}
    assert info["validation"]["stream"] == "train" and info["test"]["stream"] == "test"
    first = build_token_sets(tokenizer, TextSource("c4-like", train_text=train_text, test_text=test_text,
                                                   test_windows=4), seqlen=64, n_calib=1, n_test=None)
    assert torch.equal(first.test, test[: 4 * 64].reshape(4, 64))  # C4's protocol: the first k windows


def test_too_little_text_says_what_fits(tokenizer, wiki_text: str) -> None:
    text = wiki_text[:8_000]
    source = TextSource("tiny", text=text)
    n = len(tokenize_text(tokenizer, text))
    calib_end, val_end = _split_points(n)
    calib_fit, test_fit = calib_end // 256, (n - val_end) // 256
    with pytest.raises(ValueError) as err:
        build_token_sets(tokenizer, source, seqlen=256, n_calib=calib_fit + 1, n_test=0)
    message = str(err.value)
    assert f"enough for {calib_fit} windows of seqlen 256" in message and f"n_calib={calib_fit + 1}" in message
    assert "lower n_calib" in message and "seqlen" in message and "test_fraction" in message
    with pytest.raises(ValueError) as err:
        build_token_sets(tokenizer, source, seqlen=256, n_calib=1, n_test=test_fit + 1)
    assert f"enough for {test_fit} windows" in str(err.value) and "lower n_test" in str(err.value)
    with pytest.raises(ValueError, match="lower n_validation"):
        build_token_sets(tokenizer, source, seqlen=256, n_calib=1, n_validation=50)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"seqlen": 1}, "seqlen"), ({"n_calib": 0}, "n_calib"), ({"n_test": -1}, "n_test"),
     ({"n_validation": -1}, "n_validation"), ({"test_fraction": 0.0}, "test_fraction"),
     ({"validation_fraction": 1.0}, "validation_fraction"),
     ({"validation_fraction": 0.5, "test_fraction": 0.5}, "below 1"), ({"n_ood": 0, "ood": "lee"}, "n_ood")],
)
def test_bad_arguments(tokenizer, small: TextSource, kwargs: dict, match: str) -> None:
    args = {"seqlen": 32, "n_calib": 2, "n_test": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        build_token_sets(tokenizer, small, **args)


def test_n_eval_is_a_deprecated_alias_of_n_test(tokenizer, small: TextSource) -> None:
    old = build_token_sets(tokenizer, small, seqlen=32, n_calib=2, n_eval=3)
    assert torch.equal(old.test, build_token_sets(tokenizer, small, seqlen=32, n_calib=2, n_test=3).test)
    with pytest.raises(ValueError, match="not both"):
        build_token_sets(tokenizer, small, seqlen=32, n_calib=2, n_eval=3, n_test=4)
