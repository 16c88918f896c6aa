"""The names of prune-gym's lm-eval tasks, and a TaskManager that knows them."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .build import tasks_dir
from .sources.mmlu import CATEGORIES

__all__ = [
    "LM_EVAL_ONLINE_TASKS",
    "OFFLINE_TASKS",
    "ONLINE_TASKS",
    "UnknownTaskError",
    "check_task_names",
    "is_offline",
    "task_manager",
]

# Top-level offline tasks and groups (their subtasks, e.g. pg_factual_mc_worldcapitals, are valid names too).
OFFLINE_TASKS = ("pg_knowledge", "pg_factual_qa", "pg_factual_mc", "pg_mmlu_dev", "pg_wiki_ppl")
# Need the internet (once): not part of the offline test suite.
ONLINE_TASKS = ("pg_freebaseqa",)
# lm-eval's own tasks that pair with ours for real (online) use.
LM_EVAL_ONLINE_TASKS = ("mmlu", "triviaqa", "nq_open")
_OURS = "pg_"


class UnknownTaskError(ValueError):
    """A task name that neither prune-gym nor lm-eval knows."""


def is_offline(name: str) -> bool:
    """True for prune-gym task names that need no download (everything ``pg_*`` except the online ones)."""
    return name.startswith(_OURS) and not any(name.startswith(o) for o in ONLINE_TASKS)


@functools.lru_cache(maxsize=4)
def _manager(include_path: str, include_defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def task_manager(include_defaults: bool = True) -> Any:
    """An lm-eval ``TaskManager`` with prune-gym's tasks (built into the cache at first use).

    ``include_defaults=False`` leaves out lm-eval's own ~15k task configs: indexing them takes seconds,
    and prune-gym's tasks alone need none of them. The manager is cached per process.
    """
    return _manager(str(tasks_dir()), include_defaults)


def _ours_listing(manager: Any) -> str:
    ours = sorted(n for n in manager.all_tasks if n.startswith(_OURS) and not n.endswith("_tasks"))
    families = []
    for parent in ("pg_factual_qa", "pg_factual_mc"):
        members = [n.removeprefix(f"{parent}_") for n in ours if n.startswith(f"{parent}_")]
        families.append(f"{parent}_<{'|'.join(members)}>")
    subjects = [n for n in ours if n.startswith("pg_mmlu_dev_") and n.removeprefix("pg_mmlu_dev_") not in CATEGORIES]
    families.append(f"pg_mmlu_dev_<{'|'.join(CATEGORIES)}>; pg_mmlu_dev_<subject> ({len(subjects)} subjects, "
                    f"e.g. {subjects[0] if subjects else 'pg_mmlu_dev_anatomy'})")
    return (f"prune-gym's tasks are {', '.join(OFFLINE_TASKS)} (offline) and {', '.join(ONLINE_TASKS)} "
            f"(online); subtasks: {'; '.join(families)} (all names: python -m harness_tasks list)")


def check_task_names(names: Sequence[str], manager: Any) -> None:
    """Raise :class:`UnknownTaskError` naming prune-gym's tasks when a name (or glob) matches nothing."""
    unknown = [n for n in names if n not in manager.all_tasks and not manager.match_tasks([n])]
    if unknown:
        others = ("" if any(not n.startswith(_OURS) for n in manager.all_tasks)
                  else " (lm-eval's own tasks were not searched: they are only looked up for names "
                       "without the pg_ prefix)")
        raise UnknownTaskError(
            f"unknown task name(s) {unknown}{others}. {_ours_listing(manager)}. lm-eval's own tasks (e.g. "
            f"{', '.join(LM_EVAL_ONLINE_TASKS)}; they need the internet) are listed by `lm-eval ls tasks`."
        )


def task_list(tasks: str | Iterable[str]) -> list[str]:
    """A task argument as a list: one name, a comma-separated string, or an iterable of names."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t) for t in tasks]
    names = [n for n in names if n]
    if not names:
        raise ValueError("no task names given; e.g. tasks=['pg_knowledge', 'pg_wiki_ppl']")
    return names


def manager_for(names: Sequence[str]) -> Any:
    """The cheapest manager that can know ``names``: ours only, unless a name lacks the pg_ prefix."""
    return task_manager(include_defaults=not all(n.startswith(_OURS) for n in names))


def include_path() -> Path:
    """The directory to pass to lm-eval's ``--include_path``."""
    return tasks_dir()
