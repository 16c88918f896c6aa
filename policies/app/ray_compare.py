"""``compare --ray``: each policy runs in its own Ray actor that owns its env (and a GPU when there are GPUs).

The driver only schedules: actor ``i`` builds its env, scores the dense model (the first actor only, so it
is done once), runs its policy into ``OUT/<policy>/`` and scores the result, exactly as the local path does
(:func:`policies.app.compare_job.run_and_score`). With ``address`` the actors spread over a cluster; the run
directories must then be on a shared filesystem (or each node keeps its own). Ray is optional:
``pip install 'prune-gym[ray]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .compare_job import CompareConfig, _write_results, run_and_score, score_model
from .run_job import build_env


class PolicyWorker:
    """The body of a Ray actor: one env, one policy."""

    def __init__(self, config: dict[str, Any], policy: str) -> None:
        self.config = CompareConfig(**config)
        self.policy = policy
        self.env = build_env(self.config.run_config(policy), progress=False)

    def dense(self) -> dict[str, Any]:
        """Scores of the dense model (before any step)."""
        self.env.reset(seed=self.config.seed)
        knowledge = score_model(self.env, self.config.tasks, self.config.eval_limit)
        return {"ppl": self.env.unwrapped.evaluate_full().ppl, "knowledge": knowledge}

    def run(self, out_dir: str, dense_knowledge: dict[str, Any], wandb: Any = None) -> dict[str, Any]:
        return run_and_score(self.config.run_config(self.policy), Path(out_dir) / self.policy, self.env, self.config,
                             dense_knowledge, progress=False, log=lambda _m: None, wandb=wandb)


def _ray():
    try:
        import ray
    except ImportError as err:
        raise ValueError("--ray needs Ray: pip install 'prune-gym[ray]'") from err
    return ray


def run_compare_ray(config: CompareConfig, out: Path, results: dict[str, Any], *, address: str | None = None,
                    log: Callable[[str], None] = print, wandb: Any = None, num_cpus: int | None = None) -> None:
    """Fill ``results`` (dense + one entry per policy) by running every policy in its own actor."""
    import torch

    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False, **kwargs)
    try:
        gpus = ray.cluster_resources().get("GPU", 0) if address else torch.cuda.device_count()
        actor_cls = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1)(PolicyWorker)
        plain = asdict(config)
        workers = {name: actor_cls.remote(plain, name) for name in config.policies}
        log(f"ray: {len(workers)} actors ({'1 GPU each' if gpus else 'CPU only'})")
        first = workers[config.policies[0]]
        results["dense"] = ray.get(first.dense.remote())
        _write_results(results, out)
        pending = {workers[name].run.remote(str(out), results["dense"]["knowledge"], wandb): name
                   for name in config.policies}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(done[0])
            try:
                results["policies"][name] = ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - an actor crash is recorded, the others go on
                results["policies"][name] = {"error": f"{type(err).__name__}: {err}"}
            log(f"ray: {name} finished")
            _write_results(results, out)
        results["policies"] = {name: results["policies"][name] for name in config.policies}
    finally:
        if started_here:
            ray.shutdown()
