"""lm-eval task and group configs (as dicts) for every prune-gym task.

Data paths are absolute: lm-eval resolves relative ``data_files`` against the working directory, not the
YAML. Scoring hooks are referenced as ``!function pg_functions.<name>``; ``pg_functions.py`` is a one-line
shim written next to the YAMLs that re-exports :mod:`harness_tasks.hooks` (older lm-eval versions only
look for a module file beside the YAML).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .sources.facts import FACT_SOURCES, MC_SOURCES
from .sources.mmlu import CATEGORIES

__all__ = [
    "FunctionRef",
    "QA_FEWSHOT",
    "factual_mc_task",
    "factual_qa_task",
    "freebaseqa_task",
    "group",
    "mmlu_subject_task",
    "wiki_ppl_task",
]

Config = dict[str, Any]
QA_FEWSHOT = 3
MC_FEWSHOT = 3
MAX_GEN_TOKS = 24
_VERSION = {"version": 1.0}
_SOURCE_ALIASES = {"worldcapitals": "world capitals", "uscapitals": "US capitals", "geography": "geography",
                   "elements": "element symbols", "general": "general trivia"}


class FunctionRef(str):
    """A YAML ``!function pg_functions.<name>`` reference (see :mod:`harness_tasks.hooks`)."""


def _json_dataset(files: Mapping[str, Path]) -> Config:
    return {"dataset_path": "json", "dataset_kwargs": {"data_files": {k: str(v) for k, v in files.items()}}}


def _question_prompt() -> Config:
    return {"doc_to_text": "Question: {{question}}\nAnswer:", "target_delimiter": " ", "fewshot_delimiter": "\n\n"}


def _open_qa() -> Config:
    """Open QA scoring: greedy generation to the end of the line, exact match against any accepted answer."""
    return {
        "test_split": "test",
        "fewshot_split": "fewshot",
        "num_fewshot": QA_FEWSHOT,
        "output_type": "generate_until",
        **_question_prompt(),
        "doc_to_target": "answer",
        "generation_kwargs": {"until": ["\n", "Question:"], "max_gen_toks": MAX_GEN_TOKS, "do_sample": False},
        "process_results": FunctionRef("pg_functions.process_qa_results"),
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": _VERSION,
    }


def factual_qa_task(source: str, files: Mapping[str, Path]) -> Config:
    """One fact source as open QA."""
    return {"task": f"pg_factual_qa_{source}", "task_alias": f"{_SOURCE_ALIASES[source]} (open QA)",
            **_json_dataset(files), **_open_qa()}


def factual_mc_task(source: str, files: Mapping[str, Path]) -> Config:
    """The same facts as multiple choice: log-likelihood of each answer after the question."""
    return {
        "task": f"pg_factual_mc_{source}",
        "task_alias": f"{_SOURCE_ALIASES[source]} (multiple choice)",
        **_json_dataset(files),
        "test_split": "test",
        "fewshot_split": "fewshot",
        "num_fewshot": MC_FEWSHOT,
        "output_type": "multiple_choice",
        **_question_prompt(),
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": _VERSION,
    }


def mmlu_subject_task(subject: str, category: str, data_file: Path) -> Config:
    """lm-eval's standard MMLU prompt (lettered choices, answer letter by log-likelihood), zero-shot.

    With ``num_fewshot=k`` the examples are the subject's other questions (same split: lm-eval leaves the
    question being asked out of its own context).
    """
    name = subject.replace("_", " ")
    return {
        "task": f"pg_mmlu_dev_{subject}",
        "task_alias": name,
        "tag": f"pg_mmlu_dev_{category}_tasks",
        **_json_dataset({"test": data_file}),
        "test_split": "test",
        "fewshot_split": "test",
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": 0,
        "output_type": "multiple_choice",
        "description": f"The following are multiple choice questions (with answers) about {name}.\n\n",
        "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
                       "D. {{choices[3]}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": _VERSION,
    }


def wiki_ppl_task(data_file: Path) -> Config:
    """Rolling log-likelihood of each held-out document (lm-eval's wikitext recipe)."""
    return {
        "task": "pg_wiki_ppl",
        "task_alias": "held-out packaged Wikipedia (perplexity)",
        **_json_dataset({"test": data_file}),
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "text",
        "process_results": FunctionRef("pg_functions.process_wiki_results"),
        "metric_list": [{"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
                        {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
                        {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False}],
        "metadata": _VERSION,
    }


def freebaseqa_task() -> Config:
    """Online: FreebaseQA eval split (3,996 questions) from its public GitHub release, few-shot from dev."""
    return {"task": "pg_freebaseqa", "task_alias": "FreebaseQA (open QA, online)",
            "custom_dataset": FunctionRef("pg_functions.load_freebaseqa"), **_open_qa()}


def group(name: str, members: Sequence[str], metrics: Sequence[str] = ()) -> Config:
    """A group; with ``metrics``, each is also reported for the group (mean weighted by size)."""
    config: Config = {"group": name, "task": list(members), "metadata": _VERSION}
    if metrics:
        config["aggregate_metric_list"] = [{"metric": m, "aggregation": "mean", "weight_by_size": True}
                                           for m in metrics]
    return config


def all_configs(data: Mapping[str, Mapping[str, Path]], mmlu_subjects: Mapping[str, str]) -> dict[str, Config]:
    """File stem -> config for every task and group. ``data``: file key -> split -> path."""
    configs: dict[str, Config] = {}
    for source in FACT_SOURCES:
        configs[f"pg_factual_qa_{source}"] = factual_qa_task(source, data[f"factual_qa_{source}"])
    for source in MC_SOURCES:
        configs[f"pg_factual_mc_{source}"] = factual_mc_task(source, data[f"factual_mc_{source}"])
    for subject, category in sorted(mmlu_subjects.items()):
        configs[f"pg_mmlu_dev_{subject}"] = mmlu_subject_task(subject, category, data[f"mmlu_{subject}"]["test"])
    for category in CATEGORIES:
        configs[f"pg_mmlu_dev_{category}"] = group(f"pg_mmlu_dev_{category}", [f"pg_mmlu_dev_{category}_tasks"],
                                                   ["acc"])
    configs["pg_wiki_ppl"] = wiki_ppl_task(data["wiki_ppl"]["test"])
    configs["pg_factual_qa"] = group("pg_factual_qa", [f"pg_factual_qa_{s}" for s in FACT_SOURCES],
                                     ["exact_match"])
    configs["pg_factual_mc"] = group("pg_factual_mc", [f"pg_factual_mc_{s}" for s in MC_SOURCES],
                                     ["acc", "acc_norm"])
    configs["pg_mmlu_dev"] = group("pg_mmlu_dev", [f"pg_mmlu_dev_{c}" for c in CATEGORIES], ["acc"])
    configs["pg_knowledge"] = group("pg_knowledge", ["pg_factual_qa", "pg_factual_mc", "pg_mmlu_dev"])
    configs["pg_freebaseqa"] = freebaseqa_task()
    return configs
