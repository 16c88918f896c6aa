"""Benchmark every policy on one target through the same PruningEnv settings and write the table.

    python scripts/bench_policies.py                          # default preset, 50%, writes docs/BENCHMARKS.md
    python scripts/bench_policies.py --policies uniform-wanda owl-wanda --no-write
    python scripts/bench_policies.py --agent --agent-option base_url=http://127.0.0.1:8000/v1   # adds the agent row

Each policy runs one episode with ``policies.runner.run_episode`` on an env built with the kernel it needs
(one env per kernel, reused across its policies: a plain reset restores the dense model bit for bit) and
without AutoRollback (the baselines are open-loop plans; the agent row may set ``--rollback-threshold``).
Reported: perplexity on the full evaluation set and its ratio to dense, measured global sparsity, capital-
city knowledge retention (``pg_factual_mc_worldcapitals`` accuracy pruned / dense, via ``harness_tasks``),
env steps, reward-perplexity evaluations, rollbacks, wall time (episode + final evaluation, harness
excluded) and LLM tokens. ``random-search`` gets the evaluation budget of the agent row when it ran, else
that of ``greedy-sensitivity`` (a stand-in reference run, said so in the table).

Default sizes keep the whole bench near 20-30 minutes on 2 shared CPU cores: windows of 128 tokens (16
calibration, 2 reward, 16 final), gradient profile on 2 windows, and levels 0..6 of step 0.05 (at most
+0.30 a step): a step's cost is dominated by re-pruning every unit it touches (the kernels sort each
matrix), not by the reward windows, so fewer, larger steps are what makes it fit. Step logs (JSONL) and a
results JSON go to ``--runs-dir``; ``--keep`` reruns only the policies missing there (times add up).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.app.benchdoc import machine_description, write_section  # noqa: E402
from policies.registry import make_policy, required_method  # noqa: E402
from policies.runner import EpisodeError, dense_full_ppl, run_episode  # noqa: E402
from prune_env.env import PruningEnv  # noqa: E402
from prune_env.models import DEFAULT_MODEL  # noqa: E402

BASELINES = ["uniform-magnitude", "uniform-wanda", "uniform-sparsegpt", "owl-wanda", "owl-sparsegpt",
             "greedy-sensitivity", "random-search", "structured"]
HARNESS_TASK = "pg_factual_mc_worldcapitals"
DEFAULT_METHOD = "wanda"  # env kernel for policies that work with any (greedy, random-search, structured, agent)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--policies", nargs="+", default=BASELINES, help="policy names (default: every baseline)")
    p.add_argument("--agent", action="store_true", help="add the LLM agent row (policies.agent, needs its server)")
    p.add_argument("--agent-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option for make_policy('agent', ...), repeatable")
    p.add_argument("--rollback-threshold", type=float, default=None, help="AutoRollback for the agent row only")
    p.add_argument("--budget", type=int, default=None, help="random-search evaluations (default: the reference run's)")
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--reward-eval-samples", type=int, default=2)
    p.add_argument("--final-eval-samples", type=int, default=16)
    p.add_argument("--gradient-samples", type=int, default=2)
    p.add_argument("--gradient-every", type=int, default=5)
    p.add_argument("--step-size", type=float, default=0.05)
    p.add_argument("--n-levels", type=int, default=7)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default=None)
    p.add_argument("--harness-limit", type=int, default=20,
                   help=f"documents of {HARNESS_TASK} for the retention column (0: skip the column)")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_policies"))
    p.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--keep", action="store_true",
                   help="reuse the rows already in <runs-dir>/results.json and run only the missing policies")
    return p.parse_args(argv)


def env_settings(args: argparse.Namespace) -> dict[str, Any]:
    return dict(model=args.model, target_sparsity=args.target, step_size=args.step_size, n_levels=args.n_levels,
                max_steps=args.max_steps, seqlen=args.seqlen, calib_samples=args.calib_samples,
                reward_eval_samples=args.reward_eval_samples, final_eval_samples=args.final_eval_samples,
                gradient_samples=args.gradient_samples, gradient_every=args.gradient_every,
                batch_size=args.batch_size, device=args.device)


def harness_scorer(limit: int) -> Callable[[Any, Any], float] | None:
    """``score(model, tokenizer) -> accuracy`` on the capital-city task, or None when unavailable/skipped."""
    if limit <= 0:
        return None
    try:
        import harness_tasks
    except ImportError as err:
        print(f"harness_tasks unavailable ({err}): the retention column stays empty", file=sys.stderr)
        return None

    def score(model: Any, tokenizer: Any) -> float:
        return harness_tasks.evaluate(model, tokenizer, [HARNESS_TASK], limit=limit)[HARNESS_TASK]["acc"]

    return score


def parse_options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--agent-option needs KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def run_order(names: list[str], with_agent: bool) -> list[str]:
    """Group by env kernel (one env alive at a time); the agent runs before random-search (its budget)."""
    names = list(dict.fromkeys(names + (["agent"] if with_agent else [])))
    kernel = {"magnitude": 0, "sparsegpt": 1, None: 2, "wanda": 2}
    last = {"random-search": 1, "structured": 2}
    return sorted(names, key=lambda n: (kernel[required_method(n)], last.get(n, 0)))


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = Path(args.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    score = harness_scorer(args.harness_limit)
    saved = json.loads((runs / "results.json").read_text()) if args.keep and (runs / "results.json").is_file() else {}
    results: dict[str, dict[str, Any]] = saved.get("rows", {})
    dense_acc: float | None = saved.get("dense_capital_acc")
    env: PruningEnv | None = None
    env_method: str | None = None
    dense_ppl = float("nan")
    budget_source = saved.get("budget_source", "--budget")
    t_bench = time.perf_counter() - saved.get("elapsed_seconds", 0.0)
    setup_seconds: dict[str, float] = saved.get("setup_seconds", {})

    failed: dict[str, str] = {}

    def save() -> None:
        (runs / "results.json").write_text(json.dumps({
            "rows": results, "dense_capital_acc": dense_acc, "budget_source": budget_source,
            "setup_seconds": setup_seconds, "elapsed_seconds": time.perf_counter() - t_bench}, indent=1, default=str))

    for name in [n for n in run_order(args.policies, args.agent) if n not in results]:
        method = required_method(name) or DEFAULT_METHOD
        if method != env_method:
            if env is not None:
                env.close()
            t0 = time.perf_counter()
            env = PruningEnv(method=method, **env_settings(args))
            env.reset(seed=0)
            dense_ppl = dense_full_ppl(env)
            setup_seconds[method] = setup_seconds.get(method, 0.0) + time.perf_counter() - t0
            env_method = method
            print(f"env {method}: set up in {setup_seconds[method]:.0f} s, dense ppl {dense_ppl:.2f}", file=sys.stderr)
            if score is not None and dense_acc is None:
                dense_acc = score(env.model, env.loaded.tokenizer)
                print(f"dense {HARNESS_TASK} acc {dense_acc:.3f}", file=sys.stderr)
                save()
        options: dict[str, Any] = {}
        if name == "agent":
            options = parse_options(args.agent_option)
        if name == "random-search":
            reference = "agent" if "agent" in results else "greedy-sensitivity"
            if args.budget is None:
                if reference not in results:
                    raise SystemExit("random-search needs --budget or a reference run (agent or greedy-sensitivity)")
                options["budget"], budget_source = results[reference]["evaluations"], reference
            else:
                options["budget"] = args.budget
        run_env = env
        if name == "agent" and args.rollback_threshold is not None:
            from prune_env.wrappers import AutoRollback

            run_env = AutoRollback(env, max_ppl_increase=args.rollback_threshold)
        try:
            result = run_episode(run_env, make_policy(name, **options), steps_path=runs / f"{name}.jsonl",
                                 progress=True, log=lambda m: print(m, file=sys.stderr), dense_ppl=dense_ppl)
        except EpisodeError as err:  # one failing policy does not lose the other rows (not saved: --keep retries)
            print(f"{name} failed: {err}", file=sys.stderr)
            failed[name] = str(err)
            continue
        row = result.as_dict()
        row["method"] = method if name != "structured" else "block removal"
        if score is not None:
            acc = score(env.model, env.loaded.tokenizer)
            row["capital_acc"], row["capital_retention"] = acc, acc / dense_acc if dense_acc else float("nan")
        results[name] = row
        save()
    total = time.perf_counter() - t_bench
    if env is not None:
        env.close()
    body = render(results, args, dense_acc, budget_source, setup_seconds, total)
    if failed:
        body += "\n\nFailed: " + "; ".join(f"{n}: {e}" for n, e in failed.items())
    print(body)
    if not args.no_write:
        write_section(Path(args.out), "bench_policies", "Policies (`scripts/bench_policies.py`)", body)
    return 1 if failed else 0


def _tokens(row: dict[str, Any]) -> str:
    tokens = sum(v for k, v in row.get("totals", {}).items() if "tokens" in k)
    return f"{tokens:.0f}" if tokens else "0"


def render(results: dict[str, dict[str, Any]], args: argparse.Namespace, dense_acc: float | None,
           budget_source: str, setup_seconds: dict[str, float], total: float) -> str:
    dense = next(iter(results.values()))["dense_ppl"] if results else float("nan")
    settings = (f"`{args.model}`, target {args.target}, step {args.step_size} x levels 0..{args.n_levels - 1}, "
                f"max {args.max_steps} steps; windows of {args.seqlen} tokens from the packaged Wikipedia text: "
                f"{args.calib_samples} calibration, {args.reward_eval_samples} reward, {args.final_eval_samples} "
                f"final evaluation; gradient profile {args.gradient_samples} windows every {args.gradient_every} "
                f"steps; no AutoRollback for the baselines")
    lines = [
        f"Settings: {settings}. Perplexity is on the {args.final_eval_samples} final windows (dense {dense:.2f}).",
        "",
        "Command: `OMP_NUM_THREADS=1 python scripts/bench_policies.py`  ",
        f"Machine: {machine_description()}  ",
        f"Date: {time.strftime('%Y-%m-%d')}; whole bench {total / 60:.1f} min (env set-up "
        + ", ".join(f"{m} {s:.0f} s" for m, s in setup_seconds.items()) + ")",
        "",
        "| policy | kernel | perplexity | ratio to dense | global sparsity | capital retention | steps | "
        "ppl evaluations | rollbacks | wall time (s) | LLM tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in sorted(results.items(), key=lambda item: item[1]["final_ppl"]):
        retention = f"{row['capital_retention']:.2f} ({row['capital_acc']:.2f})" if "capital_retention" in row else ""
        lines.append(f"| {name} | {row['method']} | {row['final_ppl']:.2f} | {row['ppl_ratio']:.2f} | "
                     f"{row['global_sparsity']:.4f} | {retention} | {row['steps']} | {row['evaluations']} | "
                     f"{row['rollbacks']} | {row['wall_seconds']:.0f} | {_tokens(row)} |")
    notes = [""]
    if dense_acc is not None:
        notes.append(f"Capital retention: `{HARNESS_TASK}` accuracy pruned / dense on its first {args.harness_limit} "
                     f"questions (dense accuracy {dense_acc:.2f}; 4 choices, chance 0.25), accuracy in brackets.")
    else:
        notes.append("Capital retention: not measured in this run (`--harness-limit 0` or harness_tasks missing).")
    if "random-search" in results:
        notes.append(f"random-search budget: {results['random-search']['evaluations']} evaluations, "
                     f"from {budget_source}" + (" (stand-in until the agent row is run)" if budget_source ==
                                                "greedy-sensitivity" else "") + ".")
    if "agent" not in results:
        notes.append("The LLM agent row is added with `--agent` (a local OpenAI-compatible server).")
    return "\n".join(lines + notes)


if __name__ == "__main__":
    sys.exit(main())
