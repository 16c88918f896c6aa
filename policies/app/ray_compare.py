"""``compare --ray``: each policy runs in its own Ray actor that owns its env (and a GPU when there are GPUs).

The driver only schedules: actor ``i`` builds its env, scores the dense model (the first actor only, so it
is done once), runs its policy into ``OUT/<policy>/`` and scores the result, exactly as the local path does
(:func:`policies.app.compare_job.run_and_score`). The searches wait for the agent: they are started once the
agent's row is in, with its budget (:func:`policies.app.compare_job.search_budget`); the other policies run
alongside the agent. With ``address`` the actors spread over a cluster; the run directories must then be on a
shared filesystem (or each node keeps its own). Ray is optional: ``pip install 'prune-gym[ray]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from policies.registry import is_search

from .compare_job import (
    CompareConfig,
    _write_results,
    dense_scores,
    failed_row,
    policy_extras,
    run_and_score,
    with_budget_source,
)
from .run_job import build_env, is_agent


class PolicyWorker:
    """The body of a Ray actor: one env, one policy."""

    def __init__(self, config: dict[str, Any], policy: str) -> None:
        self.config = CompareConfig(**config)
        self.policy = policy
        self.env = build_env(self.config.run_config(policy), progress=False)

    def dense(self) -> dict[str, Any]:
        """Scores of the dense model (before any step): test and ood perplexity, harness tasks."""
        self.env.reset(seed=self.config.seed)
        return dense_scores(self.env, self.config)

    def run(self, out_dir: str, dense: dict[str, Any], wandb: Any = None,
            extra_options: dict[str, Any] | None = None) -> dict[str, Any]:
        return run_and_score(self.config.run_config(self.policy, extra_options), Path(out_dir) / self.policy,
                             self.env, self.config, dense, progress=False, log=lambda _m: None, wandb=wandb)


def _ray():
    try:
        import ray
    except ImportError as err:
        raise ValueError("--ray needs Ray: pip install 'prune-gym[ray]'") from err
    return ray


def run_compare_ray(config: CompareConfig, out: Path, results: dict[str, Any], *, address: str | None = None,
                    log: Callable[[str], None] = print, wandb: Any = None, num_cpus: int | None = None) -> None:
    """Fill ``results`` (dense + one row per policy) by running every policy in its own actor; the searches
    start when the agent has finished."""
    import torch

    ray = _ray()
    results.setdefault("budgets", {})
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False, **kwargs)
    try:
        gpus = ray.cluster_resources().get("GPU", 0) if address else torch.cuda.device_count()
        actor_cls = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1)(PolicyWorker)
        plain = asdict(config)
        has_agent = any(is_agent(name) for name in config.policies)
        waiting = [name for name in config.policies if has_agent and is_search(name)]
        # A search's actor is made only when it starts (it must not hold a CPU or GPU while it waits for the
        # agent), and every actor is released once its row is in, so more policies than slots still all run.
        workers = {name: actor_cls.remote(plain, name) for name in config.policies if name not in waiting}
        log(f"ray: {len(config.policies)} actors ({'1 GPU each' if gpus else 'CPU only'}); "
            f"{len(waiting)} wait for the agent")
        first = workers[next(name for name in config.policies if name not in waiting)]
        results["dense"] = ray.get(first.dense.remote())
        _write_results(results, out)

        def start(name: str) -> Any:
            if name not in workers:
                workers[name] = actor_cls.remote(plain, name)
            extras = policy_extras(name, config, results)
            return workers[name].run.remote(str(out), results["dense"], wandb, extras)

        pending = {start(name): name for name in config.policies if name not in waiting}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(done[0])
            try:
                row = ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - an actor crash is recorded, the others go on
                row = failed_row(name, err, out / name)
            ray.kill(workers.pop(name))  # its slot goes to a queued actor
            results["policies"][name] = with_budget_source(row, name, results)
            log(f"ray: {name} {row.get('status', 'failed')}")
            _write_results(results, out)
            if is_agent(name) and waiting:  # the searches get the agent's budget now
                pending.update({start(search): search for search in waiting})
                waiting = []
        results["policies"] = {name: results["policies"][name] for name in config.policies}
    finally:
        if started_here:
            ray.shutdown()
