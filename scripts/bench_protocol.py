"""Size the default test set: paired bootstrap of uniform-wanda against greedy-sensitivity per test window.

    OMP_NUM_THREADS=1 python scripts/bench_protocol.py             # default preset and sizes, writes docs/BENCHMARKS.md
    python scripts/bench_protocol.py --no-write --max-steps 40

Both policies run one episode at the target (default 50%) on one ``PruningEnv`` built with the default
settings except ``final_eval_samples`` (``--test-windows``: N windows evenly spaced over the packaged text's
held-out test range; default: every window of it). After each episode the per-window NLLs of those test
windows are measured (``Perplexity.window_nll``). For each candidate size n whose own n-window test set
(the windows ``build_token_sets`` picks for ``final_eval_samples=n``) lies inside the measured set (always
when N is the whole range; for n dividing N otherwise), the paired per-window difference of log perplexity,
greedy minus uniform, has a mean that is exactly the difference of the two log perplexities on that set. A
percentile bootstrap (resampling windows with replacement, paired) gives its 95% interval. The chosen size
is the smallest candidate whose interval excludes 0, as do the intervals of every larger candidate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.app.benchdoc import machine_description, write_section  # noqa: E402
from policies.registry import make_policy  # noqa: E402
from policies.runner import run_episode  # noqa: E402
from prune_env.env import PruningEnv  # noqa: E402
from prune_env.text import _spread_starts  # noqa: E402

CANDIDATES = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
POLICIES = ("uniform-wanda", "greedy-sensitivity")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--max-steps", type=int, default=None, help="env max_steps (default: the env's)")
    p.add_argument("--resamples", type=int, default=10_000)
    p.add_argument("--test-windows", type=int, default=None,
                   help="test windows to measure (default: all of the held-out range); candidates must nest in them")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench_protocol"))
    p.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--write-from", default=None, metavar="RESULTS_JSON",
                   help="write the docs section from an earlier run's results.json (nothing is run)")
    p.add_argument("--env-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra PruningEnv setting (JSON value), repeatable; e.g. model=/path seqlen=64 (smoke runs)")
    return p.parse_args(argv)


def spread_indices(capacity: int, n: int) -> np.ndarray:
    """Indices (into all windows of the range) of the n windows ``build_token_sets`` picks."""
    return np.array(_spread_starts(0, capacity, 1, n), dtype=np.int64)


def positions_in(measured: np.ndarray, wanted: np.ndarray) -> np.ndarray | None:
    """Where the windows ``wanted`` sit in the measured set (both as range indices), or None if some are missing."""
    where = {int(w): i for i, w in enumerate(measured)}
    if not all(int(w) in where for w in wanted):
        return None
    return np.array([where[int(w)] for w in wanted], dtype=np.int64)


def paired_bootstrap(diff: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``diff`` and its percentile-bootstrap 95% interval (windows resampled with replacement)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[idx].mean(axis=1)
    return float(diff.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def choose(rows: list[dict[str, Any]]) -> int | None:
    """The smallest n whose interval, and every larger n's, excludes 0."""
    chosen = None
    for row in reversed(rows):
        if not row["excludes_0"]:
            break
        chosen = row["n"]
    return chosen


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.write_from:
        record = json.loads(Path(args.write_from).read_text())
        write_section(Path(args.out), "bench_protocol", "Evaluation protocol (`scripts/bench_protocol.py`)",
                      render(record, record.get("argv", [])))
        return 0
    runs = Path(args.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    options = {}
    for pair in args.env_option:
        key, _, value = pair.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    settings: dict[str, Any] = {"target_sparsity": args.target, "final_eval_samples": args.test_windows, **options}
    if args.max_steps is not None:
        settings["max_steps"] = args.max_steps
    t_bench = time.perf_counter()
    env = PruningEnv(**settings)
    setup_seconds = time.perf_counter() - t_bench
    cfg = env.config
    print(f"env ready in {setup_seconds:.0f} s: {len(env.tokens.test)} test windows", flush=True)
    per_window: dict[str, np.ndarray] = {}
    episodes: dict[str, dict[str, Any]] = {}
    for name in POLICIES:
        t0 = time.perf_counter()
        result = run_episode(env, make_policy(name), final_eval=False, progress=False, seed=cfg.seed)
        t1 = time.perf_counter()
        test = env.evaluate_full()
        ood = env.evaluate_ood()
        t2 = time.perf_counter()
        per_window[name] = np.asarray(test.window_nll) / (test.tokens / len(test.window_nll))
        episodes[name] = {"test_ppl": test.ppl, "ood_ppl": None if ood is None else ood.ppl,
                          "validation_ppl": env.ppl, "global_sparsity": env.measured_sparsity(),
                          "steps": result.steps, "episode_seconds": t1 - t0, "test_seconds": t2 - t1}
        print(f"{name}: {episodes[name]}", flush=True)
        env.reset()
    test_range = env.tokens.ranges["test"]
    body = env.tokens.window_tokens
    capacity = (test_range.end - test_range.start) // body
    measured = np.array([(s - test_range.start) // body for s in test_range.window_starts], dtype=np.int64)
    diff_all = per_window[POLICIES[1]] - per_window[POLICIES[0]]
    rows = []
    for n in sorted({c for c in CANDIDATES if c < len(measured)} | {len(measured)}):
        at = positions_in(measured, spread_indices(capacity, n))
        if at is None:
            continue
        diff = diff_all[at]
        mean, lo, hi = paired_bootstrap(diff, args.resamples)
        rows.append({"n": n, "mean": mean, "lo": lo, "hi": hi, "excludes_0": lo > 0 or hi < 0})
        print(f"n={n:4d}: log-ppl difference {mean:+.4f} [{lo:+.4f}, {hi:+.4f}]", flush=True)
    chosen = choose(rows)
    elapsed = time.perf_counter() - t_bench
    record = {"settings": cfg.as_dict(), "tokens": env.tokens.describe(), "episodes": episodes, "rows": rows,
              "chosen": chosen, "per_window_log_ppl": {k: v.tolist() for k, v in per_window.items()},
              "elapsed_seconds": elapsed, "setup_seconds": setup_seconds, "machine": machine_description(),
              "resamples": args.resamples, "argv": [a for a in (argv if argv is not None else sys.argv[1:])
                                                    if a != "--no-write"], "date": time.strftime("%Y-%m-%d")}
    (runs / "results.json").write_text(json.dumps(record, indent=1, default=str))
    print(f"chosen test size: {chosen}", flush=True)
    if not args.no_write:
        write_section(Path(args.out), "bench_protocol", "Evaluation protocol (`scripts/bench_protocol.py`)",
                      render(record, record["argv"]))
    return 0


def render(record: dict[str, Any], argv) -> str:
    cfg, tokens, ep = record["settings"], record["tokens"], record["episodes"]
    test = tokens["test"]
    a, b = POLICIES
    lines = [
        f"Command: `{' '.join(['OMP_NUM_THREADS=1 python scripts/bench_protocol.py', *argv])}`  ",
        f"Machine: {record['machine']}  ",
        f"Date: {record.get('date', time.strftime('%Y-%m-%d'))}; whole bench {record['elapsed_seconds'] / 60:.1f} min "
        f"(env set-up {record['setup_seconds']:.0f} s)",
        "",
        f"Settings: `{cfg['model']}`, {cfg['method']}, target {cfg['target_sparsity']}, step {cfg['step_size']} x "
        f"levels 0..{cfg['n_levels'] - 1}, max {cfg['max_steps']} steps, windows of {tokens['seqlen']} tokens from "
        f"`{tokens['source']}`: {tokens['n_calib']} calibration, {tokens['n_validation']} validation; test: "
        f"{test['windows']} windows evenly spaced over the held-out test range (tokens {test['start']:,}-"
        f"{test['end']:,}, {(test['end'] - test['start']) // tokens['seqlen']} windows).",
        "",
        "| policy | test ppl (measured windows) | ood ppl | validation ppl | sparsity | steps | episode (s) | test eval (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in POLICIES:
        e = ep[name]
        ood = "-" if e["ood_ppl"] is None else f"{e['ood_ppl']:.2f}"
        lines.append(f"| {name} | {e['test_ppl']:.2f} | {ood} | {e['validation_ppl']:.2f} | {e['global_sparsity']:.4f} "
                     f"| {e['steps']} | {e['episode_seconds']:.0f} | {e['test_seconds']:.0f} |")
    lines += ["", f"Paired bootstrap ({b} minus {a}, per-window log perplexity, {record.get('resamples', 10_000):,} "
              "resamples, 95% percentile interval) on the n test windows the env would use:", "",
              "| test windows n | log-ppl difference | 95% interval | excludes 0 |", "|---|---|---|---|"]
    for row in record["rows"]:
        lines.append(f"| {row['n']} | {row['mean']:+.4f} | [{row['lo']:+.4f}, {row['hi']:+.4f}] | "
                     f"{'yes' if row['excludes_0'] else 'no'} |")
    chosen = record["chosen"]
    lines += ["", f"Chosen default `final_eval_samples`: **{chosen}** (the smallest n whose interval, and every "
              "larger n's, excludes 0)." if chosen is not None else
              "No candidate size separates the two policies: the interval includes 0 even on the whole range."]
    notes = record.get("notes", [])  # added by hand to results.json before --write-from
    return "\n".join(lines + ([""] + [f"- {note}" for note in notes] if notes else []))


if __name__ == "__main__":
    raise SystemExit(main())
