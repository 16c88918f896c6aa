"""The ``compare`` job: run several policies on one model and target, score each, write a report.

For every policy: one episode (:func:`policies.app.run_job.run_policy`, into ``OUT/<policy>/``), then, while
the env still holds the pruned model, the harness tasks (``pg_wiki_ppl`` word perplexity on held-out packaged
Wikipedia, ``pg_knowledge``) through :func:`harness_tasks.evaluate` on the model object. The dense model is
scored the same way once, so every task gets a retention ratio. Policies that prune with the same kernel share
one env (the model and its calibration statistics are built once; ``reset()`` returns to the dense weights).
``results.json`` is rewritten after every policy, so a crash keeps what finished; a failing policy is
recorded as a failed row (``status: failed``, its error, no perplexity) and the others go on; the command then
exits non-zero. ``--ray`` runs each policy in its own Ray actor instead (:mod:`policies.app.ray_compare`).

**The protocol** (issue 12): every number is on the test windows and the out-of-domain text (``ood_ppl``),
never on the validation windows the policies were scored by during the episode (kept as ``validation_ppl``);
final models are finalized with sequential calibration by default (``finalize``). **Equal budgets**: the
agent runs first; every search (``spec.is_search``) then gets the agent's budget in validation tokens
(``tokens_evaluated``, rejected steps included). Without an agent ``--budget`` sets it; without either, or
when the agent failed, a search runs on its default budget and the row and report say so.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from policies.registry import inline_options, is_search
from prune_env.models import DEFAULT_MODEL

from .benchdoc import machine_description
from .report import write_report
from .run_job import DEFAULT_FINALIZE, RunConfig, command_line, is_agent, run_policy, versions

DEFAULT_TASKS = ("pg_wiki_ppl", "pg_knowledge")
# The score a task's retention is computed on, by preference (lm-eval metric names without filters).
PRIMARY_METRICS = ("acc", "exact_match", "word_perplexity", "acc_norm", "bits_per_byte")


@dataclass
class CompareConfig:
    """Policies to compare on one model and target, and how to score them."""

    policies: list[str]
    model: str = DEFAULT_MODEL
    target: float = 0.5
    max_steps: int = 40
    rollback_threshold: float | None = 0.1
    seed: int = 0
    env: dict[str, Any] = field(default_factory=dict)                   # further PruningEnvConfig fields
    policy_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per policy name
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))  # [] skips the harness
    eval_limit: int | None = 50       # examples (documents for pg_wiki_ppl) per task; None = all
    finalize: str = DEFAULT_FINALIZE  # how every final model is made before it is scored (sequential, none)
    budget_tokens: int | None = None  # the searches' budget (validation tokens) when no agent runs

    def run_config(self, policy: str, extra_options: Mapping[str, Any] | None = None) -> RunConfig:
        return RunConfig(policy=policy, model=self.model, target=self.target, max_steps=self.max_steps,
                         rollback_threshold=self.rollback_threshold, seed=self.seed, env=dict(self.env),
                         policy_options={**self.policy_options.get(policy, {}), **(extra_options or {})},
                         finalize=self.finalize)

    def validate(self) -> CompareConfig:
        if not self.policies:
            raise ValueError("give at least one policy, e.g. --policies agent,uniform-wanda,owl,greedy-sensitivity")
        if len(set(self.policies)) != len(self.policies):
            raise ValueError(f"--policies names a policy twice: {self.policies}")
        for name in self.policies:
            self.run_config(name).validate()
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"--eval-limit must be >= 1 (or omitted for all examples), got {self.eval_limit}")
        if self.budget_tokens is not None and self.budget_tokens < 1:
            raise ValueError(f"--budget must be >= 1 (validation tokens), got {self.budget_tokens}")
        if self.tasks:
            from harness_tasks.tasks import check_task_names, manager_for

            check_task_names(list(self.tasks), manager_for(list(self.tasks)))
        return self


def primary_scores(summary: Mapping[str, Mapping[str, float]]) -> dict[str, tuple[str, float]]:
    """``{task: (metric, value)}``: each task's headline metric (groups without their own score skipped)."""
    out: dict[str, tuple[str, float]] = {}
    for task, metrics in summary.items():
        for metric in PRIMARY_METRICS:
            if metric in metrics:
                out[task] = (metric, float(metrics[metric]))
                break
    return out


# Tasks that get a column in the report (their subtasks' scores stay in each run's scores.json).
HEADLINE_TASKS = ("pg_factual_qa", "pg_factual_mc", "pg_mmlu_dev", "pg_wiki_ppl")


def retention_row(pruned: Mapping[str, Mapping[str, float]], dense: Mapping[str, Mapping[str, float]],
                  tasks: Sequence[str] = ()) -> dict[str, float]:
    """``{task: retention of its headline metric}`` (pruned / dense; dense / pruned for perplexities), for
    the requested ``tasks`` and the headline tasks (per-subtask ratios are left out)."""
    from harness_tasks import retention

    keep = set(tasks) | set(HEADLINE_TASKS)
    ratios = retention(pruned, dense)
    return {task: ratios[task][metric] for task, (metric, _) in primary_scores(pruned).items()
            if task in keep and metric in ratios.get(task, {})}


def score_model(env: Any, tasks: Sequence[str], limit: int | None) -> dict[str, dict[str, float]]:
    """The harness tasks on the env's current model (the object itself, not a copy)."""
    if not tasks:
        return {}
    from harness_tasks import evaluate

    raw = env.unwrapped
    return evaluate(raw.model, raw.loaded.tokenizer, list(tasks), limit=limit,
                    batch_size=raw.config.batch_size, add_bos_token=raw.loaded.needs_bos or None)


def execution_order(policies: Sequence[str]) -> list[str]:
    """Agents first (the searches take their budget from the agent's run), then the rest as given."""
    return [p for p in policies if is_agent(p)] + [p for p in policies if not is_agent(p)]


def search_budget(config: CompareConfig, rows: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], str]:
    """The options a search gets (``{"budget_tokens": n}`` or ``{}`` for its default) and where they come from.

    With an agent in the comparison (it ran first): its ``tokens_evaluated``; an agent that failed leaves the
    searches on their default budget. Without one: ``--budget`` when given, else the default."""
    agents = [p for p in config.policies if is_agent(p)]
    if agents:
        row = rows.get(agents[0]) or {}
        if row.get("status") == "ok" and int(row.get("tokens_evaluated") or 0) > 0:
            return ({"budget_tokens": int(row["tokens_evaluated"])},
                    f"the {agents[0]}'s: {int(row['tokens_evaluated'])} validation tokens in "
                    f"{row.get('evaluations')} evaluations")
        if row.get("status") == "ok":
            return {}, f"default: the {agents[0]} evaluated nothing, so there was no budget to match"
        return {}, f"default: the {agents[0]} failed, so there was no budget to match"
    if config.budget_tokens is not None:
        return {"budget_tokens": int(config.budget_tokens)}, f"--budget {config.budget_tokens} validation tokens"
    return {}, "default (no agent in the comparison, no --budget)"


def failed_row(policy: str, err: BaseException | str, run_dir: Path | str | None = None) -> dict[str, Any]:
    """The results row of a policy that failed: no perplexity, its error (the cause's, e.g. the agent's
    EndpointError naming the endpoint, is inside the message)."""
    message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return {"policy": policy, "status": "failed", "error": message, "ppl": None,
            "run_dir": None if run_dir is None else str(run_dir)}


def failed_policies(results: Mapping[str, Any]) -> list[str]:
    """Names of the policies whose row is failed (a row without a status but with an error counts too)."""
    return [name for name, row in results.get("policies", {}).items()
            if row.get("status") == "failed" or (row.get("status") is None and row.get("error"))]


def _write_results(results: Mapping[str, Any], out: Path) -> None:
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(out / "results.json")


def new_results(config: CompareConfig) -> dict[str, Any]:
    return {"command": command_line(), "versions": versions(), "machine": machine_description(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "model": config.model, "target": config.target,
            "config": asdict(config), "dense": {}, "policies": {},
            "knowledge_description": f"{', '.join(config.tasks) or 'none'}, "
                                     f"{config.eval_limit or 'all'} examples per task",
            "eval_description": "perplexity on the env's test windows of held-out text (disjoint from the "
                                "calibration and validation windows)",
            "ood_description": f"perplexity on the out-of-domain text ({config.env.get('ood_text', 'lee')})",
            "finalize": config.finalize, "budgets": {}}


def run_compare(
    config: CompareConfig,
    out_dir: str | Path,
    *,
    use_ray: bool = False,
    ray_address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    wandb: Any = None,
) -> dict[str, Any]:
    """Run, score and report every policy; returns the results dict (also ``results.json``, ``report.md``)."""
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = new_results(config)
    if use_ray:
        from .ray_compare import run_compare_ray

        run_compare_ray(config, out, results, address=ray_address, log=log, wandb=wandb)
    else:
        _run_local(config, out, results, progress=progress, log=log, wandb=wandb)
    results["policies"] = {name: results["policies"][name] for name in config.policies if name in results["policies"]}
    _write_results(results, out)
    report = write_report(results, out)
    log(f"report: {report}")
    return results


def with_budget_source(row: dict[str, Any], name: str, results: Mapping[str, Any]) -> dict[str, Any]:
    """A search's row says where its budget came from (``budget_source``)."""
    if name in results.get("budgets", {}):
        row["budget_source"] = results["budgets"][name]["source"]
    return row


def dense_scores(env: Any, config: CompareConfig) -> dict[str, Any]:
    """The dense model's test and ood perplexity and harness scores (``env`` right after a plain reset)."""
    from policies.runner import evaluate_ood

    knowledge = score_model(env, config.tasks, config.eval_limit)
    raw = env.unwrapped
    return {"ppl": raw.evaluate_full().ppl, "ood_ppl": evaluate_ood(raw), "knowledge": knowledge}


def policy_extras(name: str, config: CompareConfig, results: dict[str, Any]) -> dict[str, Any]:
    """The options ``compare`` adds to a policy: a search's budget (recorded in ``results["budgets"]``)."""
    if not is_search(name):
        return {}
    own = inline_options(name).get("budget_tokens")
    if own is not None:
        options, source = {}, f"its own option budget_tokens={own}"
    else:
        options, source = search_budget(config, results["policies"])
    results["budgets"][name] = {"options": options, "source": source}
    return options


def shared_env(run_config: RunConfig, envs: dict[str, Any], *, progress: bool, log: Callable[[str], None]) -> Any:
    """The env of ``run_config``'s kernel, built once per kernel without a wrapper, and wrapped in
    :class:`AutoRollback` for a policy that runs under it (the agent), so policies share model and statistics."""
    from prune_env.env import PruningEnv
    from prune_env.wrappers import AutoRollback

    cfg = run_config.env_config()
    if cfg.method not in envs:
        log(f"building the env for {cfg.method} on {cfg.model}")
        envs[cfg.method] = PruningEnv(**{**cfg.as_dict(), "rollback_threshold": None, "progress": progress})
    raw = envs[cfg.method]
    if cfg.rollback_threshold is None:
        return raw
    return AutoRollback(raw, max_ppl_increase=cfg.rollback_threshold, penalty=cfg.rollback_penalty,
                        keep_final_step=cfg.rollback_keep_final_step)


def _run_local(config: CompareConfig, out: Path, results: dict[str, Any], *, progress: bool,
               log: Callable[[str], None], wandb: Any) -> None:
    envs: dict[str, Any] = {}
    try:
        for name in execution_order(config.policies):
            run_config = config.run_config(name, policy_extras(name, config, results))
            try:
                env = shared_env(run_config, envs, progress=progress, log=log)
            except Exception as err:  # noqa: BLE001 - an env that cannot be built fails its policies only
                log(f"{name} failed: the env could not be built: {type(err).__name__}: {err}")
                results["policies"][name] = failed_row(name, err, out / name)
                _write_results(results, out)
                continue
            if not results["dense"]:
                env.reset(seed=config.seed)
                log("scoring the dense model")
                results["dense"] = dense_scores(env, config)
                _write_results(results, out)
            row = run_and_score(run_config, out / name, env, config, results["dense"], progress=progress, log=log,
                                wandb=wandb)
            results["policies"][name] = with_budget_source(row, name, results)
            _write_results(results, out)
    finally:
        for env in envs.values():
            env.close()


def run_and_score(run_config: RunConfig, run_dir: Path, env: Any, config: CompareConfig,
                  dense: Mapping[str, Any], *, progress: bool, log: Callable[[str], None],
                  wandb: Any) -> dict[str, Any]:
    """One policy's episode and scores; a failure becomes a failed row (:func:`failed_row`) instead of stopping
    the comparison. ``dense``: the dense scores (``ppl``, ``ood_ppl``, ``knowledge``)."""
    dense_knowledge = dense.get("knowledge", {})
    try:
        metrics = run_policy(run_config, run_dir, env=env, progress=progress, log=log, wandb=wandb,
                             dense_ppl=dense.get("ppl"), dense_ood_ppl=dense.get("ood_ppl"))
        log(f"scoring {run_config.policy}")
        knowledge = score_model(env, config.tasks, config.eval_limit)
    except Exception as err:  # noqa: BLE001 - one policy's failure must not lose the others' results
        log(f"{run_config.policy} failed: {type(err).__name__}: {err}")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc())
        return failed_row(run_config.policy, err, run_dir)
    metrics["knowledge"] = knowledge
    metrics["retention"] = retention_row(knowledge, dense_knowledge, config.tasks)
    (run_dir / "scores.json").write_text(json.dumps({"knowledge": knowledge, "retention": metrics["retention"]},
                                                    indent=2))
    return metrics
