"""Agent episodes for the agent benchmark (issue 14): the LLM agent at a target on the default preset, with the
packaged SmolLM2-135M-Instruct behind the local llama.cpp server, pacing and the outcome memory on or off.

    python scripts/bench_agent.py                                  # pace on, memory on, default sizes
    python scripts/bench_agent.py --pace off                       # the ablations, one run each
    python scripts/bench_agent.py --memory off
    python scripts/bench_agent.py --bar off                        # without the bar on rolled-back choices
    python scripts/bench_agent.py --write                          # the table of every row so far -> docs/BENCHMARKS.md
    python scripts/bench_agent.py --seqlen 64 --calib-samples 4 --reward-eval-samples 2 --max-steps 6   # smoke

Each run is one ``prune-gym run`` (:func:`policies.app.run_job.run_policy`: AutoRollback, finalization, the
run directory with steps, transcript and final metrics) into ``<runs-dir>/<label>``; its row (target reached,
rollbacks, steps, own / topped-up / fallback shares, validation, test and out-of-domain perplexity, LLM cost)
is written into ``--out`` under its label, next to the rows of earlier runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.app.run_job import RunConfig, run_policy  # noqa: E402
from prune_env.models import DEFAULT_MODEL  # noqa: E402

ROW_FIELDS = ("target", "sparsity", "terminated", "rollbacks", "steps", "own_share", "topped_up_share",
              "fallback_share", "validation_ppl", "ppl", "ood_ppl", "dense_ppl", "dense_ood_ppl", "requests",
              "tokens", "llm_wait_s", "wall_seconds", "run_dir")
TARGET_TOLERANCE = 0.001


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--pace", choices=("on", "off"), default="on")
    p.add_argument("--memory", choices=("on", "off"), default="on")
    p.add_argument("--bar", choices=("on", "off"), default="on", help="bar_rejected: bar rolled-back choices")
    p.add_argument("--label", default=None, help="row name (default: pace-<on|off>_memory-<on|off>[_bar-off])")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--rollback-threshold", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finalize", choices=("sequential", "none"), default="sequential")
    env = p.add_argument_group("env sizes (PruningEnvConfig fields; unset: the env's defaults)")
    for name in ("seqlen", "calib_samples", "reward_eval_samples", "final_eval_samples", "gradient_samples",
                 "gradient_every", "n_levels"):
        env.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    env.add_argument("--step-size", type=float, default=None)
    p.add_argument("--n-threads", type=int, default=None, help="llama.cpp server threads (default min(4, cpus))")
    p.add_argument("--agent-option", action="append", default=[], metavar="KEY=VALUE",
                   help="further agent setting, repeatable (e.g. history_size=6)")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_agent"))
    p.add_argument("--out", default=None, help="results JSON (default: <runs-dir>/results.json)")
    p.add_argument("--write", action="store_true", help="write the table of every row in --out into --doc and stop "
                   "(runs nothing)")
    p.add_argument("--doc", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    return p.parse_args(argv)


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run: the agent with its local server, pace and memory as asked, the env sizes given."""
    sizes = {k: getattr(args, k) for k in ("seqlen", "calib_samples", "reward_eval_samples", "final_eval_samples",
                                           "gradient_samples", "gradient_every", "n_levels", "step_size")}
    options: dict[str, Any] = {"local": True, "pace": args.pace == "on", "memory": args.memory == "on",
                               "bar_rejected": args.bar == "on"}
    if args.n_threads is not None:
        options["n_threads"] = args.n_threads
    for item in args.agent_option:
        key, _, value = item.partition("=")
        options[key] = value
    return RunConfig(policy="agent", model=args.model, target=args.target, max_steps=args.max_steps,
                     rollback_threshold=args.rollback_threshold, seed=args.seed, finalize=args.finalize,
                     env={k: v for k, v in sizes.items() if v is not None}, policy_options=options)


def result_row(metrics: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    """The benchmark's row of one run's final metrics."""
    row = {k: metrics.get(k) for k in ROW_FIELDS}
    row["target_reached"] = bool(abs(metrics["sparsity"] - metrics["target"]) <= TARGET_TOLERANCE)
    row["pace"], row["memory"] = config.policy_options["pace"], config.policy_options["memory"]
    row["bar_rejected"] = config.policy_options["bar_rejected"]
    row["env"] = dict(config.env)
    row["fallbacks"] = int(metrics.get("totals", {}).get("fallbacks", 0))
    row["topped_up_levels"] = int(metrics.get("totals", {}).get("topped_up_levels", 0))
    return row


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(results: dict[str, dict[str, Any]]) -> str:
    """The table of every benchmark row (one run each), with what reaching the goals of issue 14 needs."""
    lines = ["| run | pace | memory | bar | sizes | sparsity | target reached | rollbacks | steps | own | topped up | "
             "fallback | validation ppl | test ppl | ood ppl | dense test / ood | requests | tokens | LLM wait (s) | "
             "wall (s) |",
             "|" + "---|" * 20]
    for label, r in results.items():
        sizes = ", ".join(f"{k}={v}" for k, v in (r.get("env") or {}).items()) or "default"
        lines.append(
            f"| {label} | {'on' if r['pace'] else 'off'} | {'on' if r['memory'] else 'off'} | "
            f"{'on' if r.get('bar_rejected', True) else 'off'} | {sizes} | {r['sparsity']:.4f} | "
            f"{'yes' if r['target_reached'] else 'no'} | {r['rollbacks']} | {r['steps']} | {share(r['own_share'])} | "
            f"{share(r['topped_up_share'])} | {share(r['fallback_share'])} | {r['validation_ppl']:.2f} | "
            f"{r['ppl']:.2f} | {r['ood_ppl']:.2f} | {r['dense_ppl']:.2f} / {r['dense_ood_ppl']:.2f} | "
            f"{r['requests']} | {r['tokens']:,} | {r['llm_wait_s']:.0f} | {r['wall_seconds']:.0f} |")
    lines += ["", "Dense: the dense model's test and out-of-domain perplexity at the row's sizes. "
              f"Target reached: measured sparsity within {TARGET_TOLERANCE} of the target. Goals (issue 14): the "
              "target reached with at most 4 rollbacks in at most 40 steps, own share >= 0.5."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out or Path(args.runs_dir) / "results.json")
    if args.write:
        from policies.app.benchdoc import write_section

        write_section(Path(args.doc), "bench_agent", "The LLM agent (`scripts/bench_agent.py`)",
                      render(json.loads(out.read_text())))
        return 0
    label = args.label or f"pace-{args.pace}_memory-{args.memory}" + ("" if args.bar == "on" else "_bar-off")
    config = run_config(args)
    metrics = run_policy(config, Path(args.runs_dir) / label)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results[label] = result_row(metrics, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps({label: results[label]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
