"""Score a model on prune-gym's (or lm-eval's) tasks from Python, with results as plain dicts.

An in-memory model is wrapped by lm-eval's ``HFLM`` as the object itself: nothing is copied or moved, so
the env can score its model mid-episode. A directory written by ``save_pretrained`` (a pruned model saved
by prune-gym) loads through the same ``hf`` model type that lm-eval's command line uses. Bootstrap
standard errors and per-sample logs are off unless asked for: they cost time in loops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .freebaseqa import OnlineDataUnavailable
from .offline import offline_mode
from .tasks import OFFLINE_TASKS, check_task_names, is_offline, manager_for, task_list

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_MAX_LENGTH", "evaluate", "evaluate_raw", "summarize"]

DEFAULT_BATCH_SIZE = 8
# Context cap: a model's max_position_embeddings can be 32k+, far more than the tasks need.
DEFAULT_MAX_LENGTH = 2048
_CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "n_ctx")


def _context_length(config: Any, cap: int) -> int:
    """The model's own context length, capped (the same rule for a model object and a directory)."""
    lengths = [getattr(config, a) for a in _CONTEXT_ATTRS if isinstance(getattr(config, a, None), int)]
    return min([cap, *lengths])


def _make_lm(model: Any, tokenizer: Any, *, batch_size: int, max_length: int, device: str | None,
             add_bos_token: bool | None) -> Any:
    """lm-eval's HFLM around a model object (as is) or a model directory (loaded by lm-eval)."""
    from lm_eval.models.huggingface import HFLM

    extra: dict[str, Any] = {} if add_bos_token is None else {"add_bos_token": add_bos_token}
    if isinstance(model, (str, Path)):
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: pass a model object or a directory written by "
                                    f"save_pretrained (e.g. a pruned model saved by prune-gym)")
        import torch

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tok = str(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer
        from transformers import AutoConfig

        return HFLM(pretrained=str(path), tokenizer=tok, device=dev, dtype="float32" if dev == "cpu" else "auto",
                    batch_size=batch_size, max_length=_context_length(AutoConfig.from_pretrained(path), max_length),
                    **extra)
    if tokenizer is None:
        raise ValueError("an in-memory model needs its tokenizer: evaluate(model, tokenizer, tasks) "
                         "(e.g. the LoadedModel's .tokenizer)")
    model_device = next(model.parameters()).device
    if device is not None and str(model_device) != str(device) and not str(model_device).startswith(f"{device}:"):
        raise ValueError(f"the model is on {model_device} but device={device!r} was asked for; evaluate never "
                         f"moves or copies an in-memory model: move it first, or leave device=None")
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                max_length=_context_length(getattr(model, "config", None), max_length), **extra)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No per-split progress bars from ``datasets`` while the (many small) task datasets load."""
    try:
        from datasets.utils import logging as ds_logging
    except ImportError:
        yield
        return
    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


@contextlib.contextmanager
def _training_mode_kept(model: Any) -> Iterator[None]:
    """HFLM switches a model object to eval mode; give it back in the mode it came in."""
    training = getattr(model, "training", None)
    try:
        yield
    finally:
        if isinstance(training, bool):
            model.train(training)


def evaluate_raw(
    model: Any,
    tokenizer: Any = None,
    tasks: str | Iterable[str] = ("pg_knowledge",),
    *,
    limit: int | float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_fewshot: int | None = None,
    device: str | None = None,
    log_samples: bool = False,
    bootstrap_iters: int = 0,
    max_length: int = DEFAULT_MAX_LENGTH,
    add_bos_token: bool | None = None,
) -> dict[str, Any]:
    """Run ``lm_eval.simple_evaluate`` and return its whole result (``results``, ``groups``, ``samples``...).

    Offline tasks run in Hugging Face offline mode. When an online task cannot fetch its data, the error
    says which task needed what and which offline tasks exist.
    """
    from lm_eval import simple_evaluate

    names = task_list(tasks)
    manager = manager_for(names)
    check_task_names(names, manager)
    online = [n for n in names if not is_offline(n)]
    mode = contextlib.nullcontext() if online else offline_mode()
    with _training_mode_kept(model):
        lm = _make_lm(model, tokenizer, batch_size=batch_size, max_length=max_length, device=device,
                      add_bos_token=add_bos_token)
        try:
            with mode, _quiet_datasets():
                raw = simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit,
                                      bootstrap_iters=bootstrap_iters, log_samples=log_samples,
                                      task_manager=manager)
        except OSError as e:  # ConnectionError, OfflineModeIsEnabled, missing dataset files...
            if not online or isinstance(e, OnlineDataUnavailable):
                raise
            raise OnlineDataUnavailable(
                f"task(s) {online} download their data (from the Hugging Face hub or GitHub) and that failed: "
                f"{type(e).__name__}: {e}. Offline, use prune-gym's packaged tasks: {', '.join(OFFLINE_TASKS)}."
            ) from e
    if raw is None:  # non-zero ranks of a distributed run get nothing
        return {}
    return raw


def _metric_name(key: str, filters_of: Mapping[str, set[str]]) -> str:
    """``"acc,none"`` -> ``"acc"``; a filter name is kept only when one metric has several filters."""
    metric, _, filt = key.partition(",")
    return metric if len(filters_of.get(metric, ())) <= 1 else f"{metric},{filt}"


def summarize(raw: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{task or group: {metric: value}}`` as plain floats from ``evaluate_raw``'s result.

    Standard errors appear as ``<metric>_stderr`` only when they were computed (``bootstrap_iters`` > 0
    for the metrics that bootstrap); ``alias`` and sample counts are dropped.
    """
    summary: dict[str, dict[str, float]] = {}
    for task, values in raw.get("results", {}).items():
        filters_of: dict[str, set[str]] = {}
        for key in values:
            if "," in key:
                metric, _, filt = key.partition(",")
                filters_of.setdefault(metric.removesuffix("_stderr"), set()).add(filt)
        metrics = {}
        for key, value in values.items():
            if "," not in key or isinstance(value, str) or value is None:
                continue
            metrics[_metric_name(key, filters_of)] = float(value)
        summary[task] = metrics
    return summary


def evaluate(
    model: Any,
    tokenizer: Any = None,
    tasks: str | Iterable[str] = ("pg_knowledge",),
    *,
    limit: int | float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_fewshot: int | None = None,
    device: str | None = None,
    log_samples: bool = False,
    bootstrap_iters: int = 0,
    max_length: int = DEFAULT_MAX_LENGTH,
    add_bos_token: bool | None = None,
) -> dict[str, dict[str, float]]:
    """Score ``model`` (an in-memory causal LM, or a model directory) on ``tasks``.

    Returns ``{task: {metric: value}}`` for every task and group run, e.g.
    ``{"pg_factual_mc": {"acc": 0.71, "acc_norm": 0.69}, "pg_wiki_ppl": {"word_perplexity": 61.2, ...}}``.
    ``limit`` caps the documents per (sub)task (an int, or a fraction below 1). ``num_fewshot`` overrides
    every task's default. For per-sample logs, call :func:`evaluate_raw` with ``log_samples=True``.
    """
    raw = evaluate_raw(model, tokenizer, tasks, limit=limit, batch_size=batch_size, num_fewshot=num_fewshot,
                       device=device, log_samples=log_samples, bootstrap_iters=bootstrap_iters,
                       max_length=max_length, add_bos_token=add_bos_token)
    return summarize(raw)
