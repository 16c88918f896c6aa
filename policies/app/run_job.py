"""The ``run`` job: one policy, one episode, one run directory written as it goes; ``--resume`` continues it.

Run directory::

    config.json        the resolved run config (env settings, policy, options), versions, machine, command
    steps.jsonl        one line per step, flushed as it goes (policies.runner)
    transcript.jsonl   the agent's requests and responses (agent only)
    masks.safetensors  the final masks, bit-packed per prunable linear (uint8, numel/8 bytes each)
    sparsity_map.json  {unit: sparsity} of the final model
    final.json         final metrics (written last: its absence marks an unfinished run)

After the episode the chosen allocation is finalized (``finalize="sequential"``, the default): re-pruned from
the dense weights block by block with sequential calibration, as the Wanda / SparseGPT references and
``prune-gym prune --mode sequential`` do (:func:`prune_env.finalize.finalize_allocation`). The test and
out-of-domain perplexities, the measured sparsity, the masks and the harness scores are of that model; the
validation perplexity the policy saw (the env's one-shot weights) is kept as ``validation_ppl``.
``finalize="none"`` scores the env's own weights.

A resumed run reads ``config.json`` and ``steps.jsonl``, keeps the old files as ``*.resumed-N.jsonl``, and
replays the recorded steps through a fresh env (deterministic: the same perplexity, checked), then the policy
goes on. The agent is not asked again for replayed steps.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.registry import make_policy, required_method, spec
from policies.runner import EpisodeResult, load_steps, run_episode
from prune_env.env import make_pruning_env
from prune_env.env_config import PruningEnvConfig
from prune_env.finalize import check_finalize_mode, finalize_allocation
from prune_env.models import DEFAULT_MODEL

from .benchdoc import machine_description

FINAL = "final.json"
CONFIG = "config.json"
STEPS = "steps.jsonl"
TRANSCRIPT = "transcript.jsonl"
MASKS = "masks.safetensors"
SPARSITY_MAP = "sparsity_map.json"
DEFAULT_FINALIZE = "sequential"
# The agent's accounting, lifted from its summary onto its results row (issue 11).
AGENT_FIELDS = ("own_share", "topped_up_share", "fallback_share", "requests", "tokens", "llm_wait_s")


@dataclass
class RunConfig:
    """One policy on one env. ``env`` holds any further :class:`PruningEnvConfig` fields."""

    policy: str
    model: str = DEFAULT_MODEL
    target: float = 0.5
    method: str | None = None          # None: the policy's own kernel, else wanda
    max_steps: int = 40
    rollback_threshold: float | None = 0.1  # AutoRollback, for policies whose loop uses it (the agent)
    seed: int = 0
    env: dict[str, Any] = field(default_factory=dict)
    policy_options: dict[str, Any] = field(default_factory=dict)
    finalize: str = DEFAULT_FINALIZE   # sequential: re-prune the final allocation as the references do; none

    def env_config(self) -> PruningEnvConfig:
        """The validated env config; the policy's kernel wins over ``method`` when it has one."""
        needed = required_method(self.policy)
        if needed and self.method and self.method != needed:
            raise ValueError(f"policy {self.policy} prunes with {needed}; drop --method {self.method} or pick "
                             f"another policy")
        known = {f.name for f in fields(PruningEnvConfig)}
        unknown = sorted(set(self.env) - known)
        if unknown:
            raise ValueError(f"unknown env setting(s) {unknown}; known: {', '.join(sorted(known))}")
        rollback = self.rollback_threshold if spec(self.policy).uses_rollback else None
        settings = {**self.env, "model": self.model, "target_sparsity": self.target,
                    "method": needed or self.method or "wanda", "max_steps": self.max_steps,
                    "rollback_threshold": rollback, "seed": self.seed}
        return PruningEnvConfig(**settings).validate()

    def validate(self) -> RunConfig:
        spec(self.policy)  # unknown names fail here, listing the known ones
        check_finalize_mode(self.finalize)
        self.env_config()
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """A recorded config; one written before finalization existed scored the env's own weights."""
        names = {f.name for f in fields(cls)}
        return cls(**{"finalize": "none", **{k: v for k, v in data.items() if k in names}})


def versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    out = {"python": sys.version.split()[0]}
    for dist in ("prune-gym", "torch", "transformers", "lm_eval", "gymnasium", "openai"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def command_line() -> str:
    return " ".join(["prune-gym", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("prune-gym") else " ".join(sys.argv)


def build_env(config: RunConfig, *, progress: bool = True) -> Any:
    """A (possibly AutoRollback-wrapped) PruningEnv for ``config``."""
    env_config = config.env_config()
    settings = {**env_config.as_dict(), "progress": progress}
    return make_pruning_env(**settings)


def _set_aside(path: Path) -> Path | None:
    """Move ``path`` to ``<stem>.resumed-N<suffix>`` (the first free N); None when it does not exist."""
    if not path.exists():
        return None
    n = 1
    while (target := path.with_name(f"{path.stem}.resumed-{n}{path.suffix}")).exists():
        n += 1
    path.rename(target)
    return target


def packed_mask(lin: Any) -> np.ndarray:
    """``np.packbits`` of ``weight != 0`` over a prunable linear's ``(out, in)`` matrix (1 = kept)."""
    return np.packbits((lin.weight_matrix() != 0).reshape(-1).cpu().numpy())


def save_masks(env: Any, path: Path) -> Path:
    """The final masks, bit-packed (1 = kept) per prunable linear, in safetensors."""
    from safetensors.torch import save_file

    tensors = {lin.name: torch.from_numpy(packed_mask(lin)) for lin in env.unwrapped.structure.linears}
    save_file(tensors, str(path), metadata={"format": "np.packbits of (weight != 0) over the (out, in) matrix"})
    return path


def make_run_policy(config: RunConfig, out: Path) -> Any:
    """The policy; the agent gets its transcript in the run directory."""
    options = dict(config.policy_options)
    if spec(config.policy).factory.startswith("policies.agent"):
        options.setdefault("transcript_path", str(out / TRANSCRIPT))
    return make_policy(config.policy, **options)


def run_policy(
    config: RunConfig | None,
    out_dir: str | Path,
    *,
    env: Any = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    wandb: Any = None,
    dense_ppl: float | None = None,
    dense_ood_ppl: float | None = None,
) -> dict[str, Any]:
    """Run one episode into ``out_dir`` and return the final metrics (also in ``final.json``).

    ``config`` is None with ``resume=True``: the run's own ``config.json`` is used.

    ``env``: an already built env with the same config (``compare`` shares one per kernel); it is reset here.
    ``wandb``: a :class:`policies.app.wandb_log.WandbSettings` to log the run, or None.
    ``dense_ppl`` / ``dense_ood_ppl``: the dense test / ood perplexities when known (``compare``).

    A failing policy raises :class:`policies.runner.EpisodeError` (the env at its last checkpoint); the run
    directory then has no ``final.json`` and ``--resume`` continues it.
    """
    out = Path(out_dir)
    start_from: list[dict[str, Any]] = []
    if resume:
        if not (out / CONFIG).is_file():
            raise FileNotFoundError(f"--resume {out}: no {CONFIG} there; is it a prune-gym run directory?")
        if (out / FINAL).is_file():
            log(f"{out} is already finished ({FINAL} exists); nothing to resume")
            return json.loads((out / FINAL).read_text())
        config = RunConfig.from_dict(json.loads((out / CONFIG).read_text())["run"])
        old_steps = _set_aside(out / STEPS)
        start_from = load_steps(old_steps) if old_steps else []
        _set_aside(out / TRANSCRIPT)
        log(f"resuming {out}: replaying {sum(1 for s in start_from if s.get('kind') == 'step')} recorded steps")
    if config is None:
        raise ValueError("run_policy needs a RunConfig, or resume=True with the directory of an earlier run")
    config.validate()
    out.mkdir(parents=True, exist_ok=True)
    env_config = config.env_config()
    owns_env = env is None
    env = env if env is not None else build_env(config, progress=progress)
    if not resume:
        (out / CONFIG).write_text(json.dumps({
            "run": asdict(config), "env": env_config.as_dict(), "tokens": env.unwrapped.tokens.describe(),
            "command": command_line(), "versions": versions(), "machine": machine_description(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, indent=2, default=str))
    policy = make_run_policy(config, out)
    with ExitStack() as stack:
        run = stack.enter_context(_wandb_run(wandb, config, env_config, out)) if wandb is not None else None
        try:
            result: EpisodeResult = run_episode(
                env, policy, steps_path=out / STEPS, seed=config.seed, progress=progress, log=log,
                start_from=start_from, dense_ppl=dense_ppl, dense_ood_ppl=dense_ood_ppl,
                on_record=run.log_record if run else None, finalize=finalizer(config.finalize))
        finally:
            close = getattr(policy, "close", None)
            if callable(close):
                close()
        save_masks(env, out / MASKS)
        (out / SPARSITY_MAP).write_text(json.dumps(result.sparsity_map, indent=2))
        metrics = final_metrics(result, out, agent=is_agent(config.policy))
        if run is not None:
            _log_wandb_final(run, config, metrics, out)
    (out / FINAL).write_text(json.dumps(metrics, indent=2, default=str))
    log(f"{config.policy}: test perplexity {metrics['ppl']:.3f} (dense {metrics['dense_ppl']:.3f}, "
        f"x{metrics['ppl_ratio']:.3f}; finalize {metrics['finalize']}; validation {metrics['validation_ppl']:.3f}), "
        f"sparsity {metrics['sparsity']:.4f}, {metrics['steps']} steps, {metrics['rollbacks']} rollbacks, "
        f"{metrics['evaluations']} evaluations, {metrics['wall_seconds']:.0f} s -> {out}")
    if owns_env:
        env.close()
    return metrics


def is_agent(policy: str) -> bool:
    """Whether ``policy`` is an LLM agent (its row carries the agent's accounting)."""
    return spec(policy).factory.startswith("policies.agent")


def finalizer(mode: str) -> Callable[[Any], dict[str, Any]] | None:
    """The ``run_episode(finalize=...)`` callable of a finalization mode (None: keep the env's weights)."""
    check_finalize_mode(mode)
    if mode == "none":
        return None
    return lambda env: finalize_allocation(env, mode)


def agent_accounting(result: EpisodeResult, tokens: int) -> dict[str, Any]:
    """The agent's six accounting fields: from its ``summary()``, else (an agent without them) what the per-step
    totals give (``tokens``: their prompt + completion tokens), shares unknown (None)."""
    summary, totals = result.summary, result.totals
    fallback = {"own_share": None, "topped_up_share": None, "fallback_share": None,
                "requests": int(totals.get("requests", 0)), "tokens": tokens,
                "llm_wait_s": float(totals.get("latency_s", 0.0))}
    return {key: summary.get(key, fallback[key]) if isinstance(summary, Mapping) else fallback[key]
            for key in AGENT_FIELDS}


def final_metrics(result: EpisodeResult, out: Path, *, agent: bool = False) -> dict[str, Any]:
    """The run's results row: headline numbers (the fields of ``results.json``), its per-step trace (for
    plots), the agent's accounting (agent runs) and a search's budget (searches)."""
    trace = [{"step": r["step"], "ppl": r["ppl"], "global_sparsity": r.get("global_sparsity"),
              "rolled_back": bool(r.get("rolled_back")), **({"rejected_ppl": r["rejected_ppl"]} if r.get("rejected_ppl") else {})}
             for r in result.records if r.get("kind") in ("step", "direct")]
    tokens = int(result.totals.get("prompt_tokens", 0) + result.totals.get("completion_tokens", 0))
    metrics: dict[str, Any] = {
        "policy": result.policy, "status": "ok", "error": None,
        "ppl": result.final_ppl, "ood_ppl": result.ood_ppl, "dense_ppl": result.dense_ppl,
        "dense_ood_ppl": result.dense_ood_ppl, "ppl_ratio": result.ppl_ratio,
        "validation_ppl": result.reward_ppl, "finalize": result.finalize,
        "finalize_seconds": result.finalize_seconds, "sparsity": result.global_sparsity,
        "target": result.target_sparsity, "evaluations": result.evaluations,
        "tokens_evaluated": result.tokens_evaluated, "steps": result.steps, "rollbacks": result.rollbacks,
        "restores": result.restores, "wall_seconds": result.wall_seconds, "tokens": tokens, "totals": result.totals,
        "terminated": result.terminated, "truncated": result.truncated, "sparsity_map": result.sparsity_map,
        "trace": trace, "run_dir": str(out),
    }
    if agent:
        metrics.update(agent_accounting(result, tokens))
    for key in ("budget", "budget_tokens", "generations"):  # a search's budget, as it ran
        if key in result.summary:
            metrics[key] = result.summary[key]
    if result.summary.get("history"):  # an evolutionary search's path (validation fitness per generation)
        metrics["search_curve"] = [{k: v for k, v in h.items() if k != "levels"} for h in result.summary["history"]]
    return metrics


def _wandb_run(settings: Any, config: RunConfig, env_config: PruningEnvConfig, out: Path) -> Any:
    """The W&B run of one policy episode (opened before the first step, so steps stream live)."""
    from dataclasses import replace

    from .wandb_log import WandbRun

    settings = replace(settings, name=settings.name or f"{config.policy}-{out.name}", dir=settings.dir or str(out))
    return WandbRun(settings, {"run": asdict(config), "env": env_config.as_dict()})


def _log_wandb_final(run: Any, config: RunConfig, metrics: dict[str, Any], out: Path) -> None:
    """Final metrics, the step table, the two plots and the masks artifact."""
    from .report import plot_ppl_over_steps, plot_unit_sparsity

    single = {"model": config.model, "target": config.target, "policies": {config.policy: metrics}}
    plots = {"unit_sparsity": plot_unit_sparsity(single, out / "unit_sparsity.png"),
             "ppl_over_steps": plot_ppl_over_steps(single, out / "ppl_over_steps.png")}
    run.log_final({k: v for k, v in metrics.items() if k not in ("trace", "sparsity_map", "totals")},
                  plots=plots, masks=out / MASKS)


def rebuild_run_env(run_dir: str | Path, *, progress: bool = True) -> Any:
    """A fresh env holding a finished run's final model: its sparsity map re-applied from the dense weights
    and finalized as the run was (deterministic), checked mask for mask against the run's
    ``masks.safetensors``."""
    from safetensors.torch import load_file

    out = Path(run_dir)
    for name in (CONFIG, SPARSITY_MAP, MASKS):
        if not (out / name).is_file():
            raise FileNotFoundError(f"{out / name} is missing; is {out} a finished prune-gym run directory?")
    config = RunConfig.from_dict(json.loads((out / CONFIG).read_text())["run"])
    env = build_env(config, progress=progress)
    env.reset(seed=config.seed)
    env.unwrapped.apply_allocation(json.loads((out / SPARSITY_MAP).read_text()))
    finalize_allocation(env, config.finalize)
    saved = load_file(str(out / MASKS))
    for lin in env.unwrapped.structure.linears:
        if not np.array_equal(packed_mask(lin), saved[lin.name].numpy()):
            raise RuntimeError(f"rebuilding {out} gave a different mask for {lin.name}; the run's config or the "
                               f"environment (library versions, device) changed since it was made")
    return env
