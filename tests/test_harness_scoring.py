"""Exact-match normalisation, retention ratios and result flattening of harness_tasks (no model runs)."""

from __future__ import annotations

import math

import pytest

from harness_tasks import exact_match_any, normalize_answer, retention, summarize
from harness_tasks.hooks import process_qa_results, process_wiki_results


@pytest.mark.parametrize(
    ("prediction", "answers"),
    [
        ("paris", ["Paris"]),  # case
        (" Paris", ["Paris"]),  # the leading space a generation starts with
        ("Paris.", ["Paris"]),  # trailing punctuation
        ("The Hague", ["Hague"]),  # article in the prediction
        ("Hague", ["The Hague"]),  # article in the answer
        ("a cat", ["cat"]),
        ("Washington DC", ["Washington, D.C."]),  # punctuation inside
        ("washington d.c.", ["Washington, D.C."]),
        ("WashingtonDC", ["Washington, D.C."]),  # spacing differs
        ("Porto Novo", ["Porto-Novo"]),  # hyphen
        ("St Johns", ["Saint John's", "st johns"]),  # any of several accepted answers
        ("Sucre", ["La Paz", "Sucre"]),
        ("Brasília", ["Brasilia"]),  # accents
        ("Sao Tome", ["São Tomé"]),
        ("12", ["Twelve", 12]),  # numeric answers from YAML
        ("Trinidad & Tobago", ["Trinidad and Tobago"]),
        ("Canberra\nQuestion: What is the capital of Peru?", ["Canberra"]),  # only the first line counts
        ("  \n Ottawa", ["Ottawa"]),  # leading blank lines are stripped before taking the first line
    ],
)
def test_exact_match_accepts_equivalent_answers(prediction, answers):
    assert exact_match_any(prediction, answers) == 1.0


@pytest.mark.parametrize(
    ("prediction", "answers"),
    [
        ("Parisian", ["Paris"]),  # no substring matching
        ("York", ["New York"]),
        ("Paris is the capital", ["Paris"]),  # extra words are wrong, as in SQuAD EM
        ("", ["Paris"]),
        ("   ", ["Paris"]),
        ("The", ["The"]),  # an answer that normalises to nothing never matches
        ("Lyon\nParis", ["Paris"]),  # the answer on a later line does not count
        ("Sucre", ["La Paz"]),
    ],
)
def test_exact_match_rejects_wrong_answers(prediction, answers):
    assert exact_match_any(prediction, answers) == 0.0


def test_normalize_answer_form():
    assert normalize_answer("  The  Quick, Brown-Fox! ") == "quick brownfox"
    assert normalize_answer("Ångström") == "angstrom"
    assert normalize_answer(1024) == "1024"


def test_qa_hook_scores_against_all_accepted_answers():
    doc = {"answers": ["Saint John's", "st johns"], "answer": "Saint John's"}
    assert process_qa_results(doc, [" St. John's"]) == {"exact_match": 1.0}
    assert process_qa_results(doc, [" Kingston"]) == {"exact_match": 0.0}


def test_wiki_hook_counts_words_and_bytes():
    out = process_wiki_results({"text": "Zürich is a city.\n\nIt is big."}, [-12.5])
    assert out["word_perplexity"] == (-12.5, 7)
    assert out["byte_perplexity"] == (-12.5, len("Zürich is a city.\n\nIt is big.".encode()))


def test_retention_is_pruned_over_dense_for_scores_and_inverse_for_perplexity():
    dense = {"pg_factual_mc": {"acc": 0.8, "acc_norm": 0.5}, "pg_wiki_ppl": {"word_perplexity": 40.0,
             "bits_per_byte": 1.0}, "only_dense": {"acc": 1.0}}
    pruned = {"pg_factual_mc": {"acc": 0.4, "acc_norm": 0.5, "acc_stderr": 0.1},
              "pg_wiki_ppl": {"word_perplexity": 160.0, "bits_per_byte": 2.0}, "only_pruned": {"acc": 1.0}}
    ratios = retention(pruned, dense)
    assert ratios == {"pg_factual_mc": {"acc": 0.5, "acc_norm": 1.0},
                      "pg_wiki_ppl": {"word_perplexity": 0.25, "bits_per_byte": 0.5}}


def test_retention_with_a_zero_dense_score():
    ratios = retention({"t": {"exact_match": 0.0, "acc": 0.2}}, {"t": {"exact_match": 0.0, "acc": 0.0}})
    assert math.isnan(ratios["t"]["exact_match"]) and ratios["t"]["acc"] == math.inf


def test_summarize_flattens_lm_eval_results():
    raw = {"results": {
        "pg_factual_mc": {"alias": "pg_factual_mc", "name": "pg_factual_mc", "sample_len": 8, "acc,none": 0.25,
                          "acc_stderr,none": "N/A", "acc_norm,none": 0.5, "acc_norm_stderr,none": 0.1,
                          "sample_count": {"acc,none": 8}},
        "triviaqa": {"alias": "triviaqa", "exact_match,remove_whitespace": 0.3,
                     "exact_match_stderr,remove_whitespace": "N/A"},
        "two_filters": {"exact_match,strict": 0.1, "exact_match,flexible": 0.2},
    }}
    assert summarize(raw) == {
        "pg_factual_mc": {"acc": 0.25, "acc_norm": 0.5, "acc_norm_stderr": 0.1},
        "triviaqa": {"exact_match": 0.3},
        "two_filters": {"exact_match,strict": 0.1, "exact_match,flexible": 0.2},
    }
