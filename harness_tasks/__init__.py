"""lm-eval tasks that score pruned models (factual knowledge, MMLU, perplexity), offline and online.

Quick use::

    import harness_tasks
    dense = harness_tasks.evaluate(model, tokenizer, ["pg_knowledge", "pg_wiki_ppl"], limit=50)
    ...prune...
    pruned = harness_tasks.evaluate(model, tokenizer, ["pg_knowledge", "pg_wiki_ppl"], limit=50)
    harness_tasks.retention(pruned, dense)   # {task: {metric: ratio}}, 1.0 = unchanged

From lm-eval's command line: ``lm-eval run --include_path "$(python -m harness_tasks path)" --tasks
pg_knowledge --model hf --model_args pretrained=<dir>``. The data and YAMLs are built from installed
packages into ``<prune-gym cache>/harness/`` at first use.
"""

from .build import ensure_built, tasks_dir
from .evaluate import evaluate, evaluate_raw, summarize
from .freebaseqa import OnlineDataUnavailable
from .normalize import exact_match_any, normalize_answer
from .retention import lower_is_better, retention
from .tasks import LM_EVAL_ONLINE_TASKS, OFFLINE_TASKS, ONLINE_TASKS, UnknownTaskError, task_manager

__all__ = [
    "LM_EVAL_ONLINE_TASKS",
    "OFFLINE_TASKS",
    "ONLINE_TASKS",
    "OnlineDataUnavailable",
    "UnknownTaskError",
    "ensure_built",
    "evaluate",
    "evaluate_raw",
    "exact_match_any",
    "lower_is_better",
    "normalize_answer",
    "retention",
    "summarize",
    "task_manager",
    "tasks_dir",
]
