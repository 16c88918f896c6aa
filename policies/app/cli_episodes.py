"""``prune-gym run``, ``compare`` and ``eval``: the episode commands (argument parsing only; the work is in
:mod:`policies.app.run_job` and :mod:`policies.app.compare_job`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from policies.runner import EpisodeError
from prune_env.finalize import FINALIZE_MODES
from prune_env.models import DEFAULT_MODEL, PRESETS
from prune_env.sparsify import METHODS

from .compare_job import DEFAULT_TASKS, CompareConfig, failed_policies, run_compare, score_model
from .run_job import DEFAULT_FINALIZE, RunConfig, rebuild_run_env, run_policy

DEMO_POLICIES = "agent,uniform-wanda,owl,greedy-sensitivity,random-search"


def _policy_names() -> str:
    from policies.registry import ALIASES, POLICIES

    return ", ".join([*POLICIES, *ALIASES])


def _option(text: str) -> tuple[str, Any]:
    """``key=value`` with a JSON value when it parses (numbers, true/false, lists), else the string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def _add_episode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"a preset ({', '.join(PRESETS)}), a hub id or a local directory (default {DEFAULT_MODEL})")
    p.add_argument("--target", type=float, default=0.5, help="global sparsity to reach, in (0, 1) (default 0.5)")
    p.add_argument("--max-steps", type=int, default=40, help="episode truncation (default 40)")
    p.add_argument("--rollback-threshold", type=float, default=0.1,
                   help="roll back a step that raises perplexity by more than this fraction (default 0.1; 0 = never)")
    p.add_argument("--rollback-final-step", choices=("keep", "check"), default=None,
                   help="the last allowed step, when it reaches the target: keep it past the threshold so the "
                        "episode ends at the target (default), or check it as any other step")
    p.add_argument("--seed", type=int, default=0, help="seed of calibration sampling and the env (default 0)")
    p.add_argument("--step-size", type=float, default=None, help="sparsity added per action level (default 0.05)")
    p.add_argument("--n-levels", type=int, default=None, help="action levels per unit (default 4)")
    p.add_argument("--granularity", choices=("block", "linear"), default=None, help="units: blocks or linears")
    p.add_argument("--calib-samples", type=int, default=None, help="calibration windows (default 32)")
    p.add_argument("--reward-eval-samples", type=int, default=None, help="reward perplexity windows (default 8)")
    p.add_argument("--final-eval-samples", type=int, default=None, help="final perplexity windows (default 32)")
    p.add_argument("--gradient-every", type=int, default=None, help="gradient profile every k steps (default 5)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (default 256 on CPU, 2048 on GPU)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward (default 8)")
    p.add_argument("--text", default=None, help="calibration/evaluation text (default wiki)")
    p.add_argument("--ood-text", default=None, help="second, out-of-domain test text (default lee, the packaged "
                   "news prose; none turns the ood score off)")
    p.add_argument("--ood-eval-samples", type=int, default=None, help="out-of-domain windows (default: as many as "
                   "fit, at most 32)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--agent-base-url", default=None, help="OpenAI-compatible endpoint for the agent (default: "
                   "OPENAI_BASE_URL, else the local llama.cpp server)")
    p.add_argument("--agent-model", default=None, help="the endpoint's model name (default: OPENAI_MODEL)")
    p.add_argument("--agent-api-key", default=None, help="API key (default: OPENAI_API_KEY)")
    p.add_argument("--agent-temperature", type=float, default=None, help="sampling temperature (default 0)")
    p.add_argument("--agent-max-endpoint-failures", type=int, default=None, metavar="N",
                   help="consecutive steps without a reply before the agent stops with EndpointError (default 2; "
                        "env PRUNE_GYM_AGENT_MAX_ENDPOINT_FAILURES)")
    p.add_argument("--agent-step-time-limit", type=float, default=None, metavar="SECONDS",
                   help="all tries of one agent step together; past it the step counts as failed (default 300; "
                        "env PRUNE_GYM_AGENT_STEP_TIME_LIMIT)")
    p.add_argument("--agent-pace", choices=("on", "off"), default=None,
                   help="pacing top-ups that keep the agent on course for the target (default on)")
    p.add_argument("--agent-memory", choices=("on", "off"), default=None,
                   help="the outcome memory in the agent's prompt: per-unit cost, rolled-back steps (default on)")
    p.add_argument("--agent-bar-rejected", choices=("on", "off"), default=None,
                   help="bar the model's own choices of a step rolled back from the current state until a step is "
                        "kept (default on)")
    p.add_argument("--wandb", action="store_true", help="log to Weights & Biases (pip install 'prune-gym[wandb]')")
    p.add_argument("--wandb-project", default="prune-gym")
    p.add_argument("--wandb-entity", default=None)
    p.add_argument("--wandb-mode", choices=("online", "offline", "disabled"), default=None,
                   help="default: online with WANDB_API_KEY, else offline (sync later with `wandb sync`)")
    p.add_argument("--finalize", choices=FINALIZE_MODES, default=DEFAULT_FINALIZE,
                   help="how the final model is made before it is scored: sequential (default) re-prunes the chosen "
                        "allocation from dense block by block with sequential calibration, as the Wanda/SparseGPT "
                        "references do; none keeps the env's one-shot weights (what the policy saw)")
    p.add_argument("--budget", type=int, default=None, metavar="TOKENS",
                   help="validation tokens a search (random-search, evo-search) may evaluate; in compare the agent's own "
                        "count wins when the agent runs, and a name's own option (evo-search:budget_tokens=N) wins "
                        "over both (default: each search's own: 20 evaluations, 140,000 tokens)")
    p.add_argument("--json", action="store_true", help="print one JSON object with the results on stdout")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


ENV_FLAGS = ("step_size", "n_levels", "granularity", "calib_samples", "reward_eval_samples", "final_eval_samples",
             "gradient_every", "seqlen", "batch_size", "text", "ood_text", "ood_eval_samples", "device", "dtype")


def _env_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = {name: getattr(args, name) for name in ENV_FLAGS if getattr(args, name) is not None}
    if getattr(args, "rollback_final_step", None) is not None:
        settings["rollback_keep_final_step"] = args.rollback_final_step == "keep"
    return settings


def _agent_options(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {"base_url": args.agent_base_url, "model": args.agent_model, "api_key": args.agent_api_key,
             "temperature": args.agent_temperature, "max_endpoint_failures": args.agent_max_endpoint_failures,
             "step_time_limit_s": args.agent_step_time_limit,
             "pace": None if args.agent_pace is None else args.agent_pace == "on",
             "memory": None if args.agent_memory is None else args.agent_memory == "on",
             "bar_rejected": None if args.agent_bar_rejected is None else args.agent_bar_rejected == "on"}
    return {k: v for k, v in pairs.items() if v is not None}


def _wandb(args: argparse.Namespace, group: str | None = None) -> Any:
    if not args.wandb:
        return None
    from .wandb_log import WandbSettings, _wandb

    _wandb()  # fail now, not after the episode, when wandb is missing
    return WandbSettings(project=args.wandb_project, entity=args.wandb_entity, mode=args.wandb_mode, group=group)


def _rollback(args: argparse.Namespace) -> float | None:
    if args.rollback_threshold is not None and args.rollback_threshold < 0:
        raise ValueError(f"--rollback-threshold must be >= 0 (0 = never roll back), got {args.rollback_threshold}")
    return args.rollback_threshold or None


def _log(args: argparse.Namespace):
    return (lambda msg: print(msg, file=sys.stderr)) if args.json else print


def add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="run one policy for one episode and save the run directory",
                       description="Run a policy (an LLM agent or a baseline) through PruningEnv until the target "
                                   "sparsity is reached; the run directory is written as it goes.")
    p.add_argument("--policy", default=None, help=f"one of: {_policy_names()}")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="pruning kernel (default: the policy's own, else wanda)")
    p.add_argument("--policy-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the policy, e.g. budget=21 for random-search (repeatable)")
    p.add_argument("--out", default=None, help="run directory (default runs/<policy>-<target>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the interrupted run in DIR")
    _add_episode_args(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if not args.resume and not args.policy:
        raise ValueError(f"give --policy (one of: {_policy_names()}) or --resume DIR")
    out = args.resume or args.out or f"runs/{args.policy}-{args.target:g}"
    config = None if args.resume else _run_config(args)
    try:
        metrics = run_policy(config, out, resume=bool(args.resume), progress=not args.no_progress, log=_log(args),
                             wandb=_wandb(args))
    except EpisodeError as err:
        print(episode_failure_message(err, out), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "trace"}, default=str))
    return 0


def _run_config(args: argparse.Namespace) -> RunConfig:
    options = dict(args.policy_option)
    if args.policy == "agent":
        options = {**_agent_options(args), **options}
    if args.budget is not None:
        from policies.registry import is_search

        if not is_search(args.policy):
            raise ValueError(f"--budget is the budget of a search (random-search); {args.policy} takes none")
        options["budget_tokens"] = args.budget
    return RunConfig(policy=args.policy, model=args.model, target=args.target, method=args.method,
                     max_steps=args.max_steps, rollback_threshold=_rollback(args), seed=args.seed,
                     env=_env_settings(args), policy_options=options, finalize=args.finalize).validate()


def episode_failure_message(err: EpisodeError, out: str) -> str:
    """What ``run`` prints when the episode failed: the error (the agent's endpoint named when it is the cause)
    and how to continue."""
    lines = [f"prune-gym run: error: {err}"]
    cause = err.__cause__
    endpoint = getattr(cause, "endpoint", None)
    if endpoint is not None:
        lines.append(f"prune-gym run: the agent's endpoint {endpoint} failed: {getattr(cause, 'reason', cause)}")
    lines.append(f"prune-gym run: {out} keeps every finished step; continue with: prune-gym run --resume {out}")
    return "\n".join(lines)


def add_compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="run several policies, score each, write report.md and results.json",
                       description="Run each policy on the same model and target, score the pruned models with "
                                   "perplexity and the pg_knowledge tasks, and write a report with plots.")
    p.add_argument("--policies", default=DEMO_POLICIES, help=f"comma-separated (default {DEMO_POLICIES}); "
                   f"known: {_policy_names()}")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                   help=f"harness tasks to score with (default {','.join(DEFAULT_TASKS)}; 'none' skips them)")
    p.add_argument("--eval-limit", type=int, default=50, help="examples per task (default 50; 0 = all)")
    p.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    p.add_argument("--ray", action="store_true", help="one Ray actor per policy (pip install 'prune-gym[ray]')")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    _add_episode_args(p)
    p.set_defaults(handler=_compare)


def _compare(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    tasks = [] if args.tasks.strip().lower() == "none" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    options = {"agent": _agent_options(args)} if "agent" in policies else {}
    config = CompareConfig(policies=policies, model=args.model, target=args.target, max_steps=args.max_steps,
                           rollback_threshold=_rollback(args), seed=args.seed, env=_env_settings(args),
                           policy_options=options, tasks=tasks, eval_limit=args.eval_limit or None,
                           finalize=args.finalize, budget_tokens=args.budget)
    results = run_compare(config, args.out, use_ray=args.ray, ray_address=args.address,
                          progress=not args.no_progress, log=_log(args), wandb=_wandb(args, group=args.out))
    if args.json:
        slim = {name: {k: v for k, v in row.items() if k not in ("trace", "sparsity_map")}
                for name, row in results["policies"].items()}
        print(json.dumps({"dense": results["dense"], "policies": slim, "report": f"{args.out}/report.md"}, default=str))
    failed = failed_policies(results)
    if failed:
        for name in failed:
            print(f"prune-gym compare: {name} failed: {results['policies'][name].get('error')}", file=sys.stderr)
        print(f"prune-gym compare: {len(failed)} of {len(policies)} policies failed; the others' results are in "
              f"{args.out}/results.json and {args.out}/report.md", file=sys.stderr)
        return 1
    return 0


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a run's final model, or any model, on the harness tasks",
                       description="Score a finished run (its model rebuilt from the dense weights and its sparsity "
                                   "map, checked against its masks) or a model on prune-gym's lm-eval tasks.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", default=None, metavar="DIR", help="a run directory written by prune-gym run")
    src.add_argument("--model", default=None, help="a preset, hub id or model directory (e.g. prune-gym prune --out)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"default {','.join(DEFAULT_TASKS)}")
    p.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from harness_tasks import evaluate

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.run:
        env = rebuild_run_env(args.run, progress=not args.no_progress)
        scores = score_model(env, tasks, args.limit)
        source = f"run {args.run}"
    else:
        from prune_env.models import load_model

        loaded = load_model(args.model, device=args.device)
        scores = evaluate(loaded.model, loaded.tokenizer, tasks, limit=args.limit,
                          add_bos_token=loaded.needs_bos or None)
        source = loaded.source
    if args.json:
        print(json.dumps({"source": source, "scores": scores}))
    else:
        for task, metrics in scores.items():
            print(f"{task}: " + ", ".join(f"{m} {v:.4f}" for m, v in metrics.items()))
    return 0
