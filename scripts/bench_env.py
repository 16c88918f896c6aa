"""Benchmark PruningEnv on a real model: step time with and without the block cache, rollback time,
checkpoint bytes, and peak memory against the model's size.

    python scripts/bench_env.py                       # default preset, writes docs/BENCHMARKS.md
    python scripts/bench_env.py --every 6 --no-write
    python scripts/bench_env.py --shape qwen3-4b --no-write --json-out out/env.json   # GPU: random Qwen3-4B

``--shape NAME`` benchmarks ``random:NAME`` (:data:`prune_env.models.RANDOM_SHAPES`: random weights built on the
device, byte-level tokens of the packaged text, no download); shapes other than ``*-tiny`` need CUDA.

Steps are single-unit actions (one unit raised by one level) on every unit (or every k-th, centred), the same
units for both modes, so their mean is the average over uniformly random single-unit actions; the gradient profile is off
so that steps measure pruning + cached evaluation. The tail (final norm + LM head + loss over the reward
windows) and one block are also timed alone, which gives the ratio an exact cache would reach if a step were
nothing but blocks and tail: ``(tail + mean re-run blocks) / (tail + all blocks)``. ``--repeats`` passes each
time every action with the cache off, then on; step times are medians over the passes of each pass's mean,
and the ratio is the median of the passes' ratios (the machine's drift hits both modes of a pass alike).

Times are taken in this process with the default allocator. Peak CPU memory is measured in a child process
(``--memory-only``) run with MALLOC_MMAP_THRESHOLD_=65536, so that freed large buffers go back to the OS and
the resident set shows live memory; that setting makes every large allocation fault its pages in afresh
(~40% slower steps here), which is why it is kept away from the timings. The child samples the resident set
every 5 ms above what it held once its libraries (torch, transformers and the model's modeling code) were
imported and before the model loaded, during set-up and then during full-re-run steps (cache off and on) and
rollbacks. On a GPU the peak is ``torch.cuda.max_memory_allocated`` while stepping, in this process.
The memory SparseGPT's in-env Hessians would take (fp32 ``in x in`` per prunable linear) is computed from the
shapes and reported apart: with Wanda the env holds none.
Targets (issue #3): cached step <= 0.6x uncached; rollback < 5% of a step; peak memory < 1.5x (dense model
+ cached evaluation activations).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.app.benchdoc import machine_description, write_section  # noqa: E402
from prune_env.env import PruningEnv  # noqa: E402
from prune_env.models import (  # noqa: E402
    DEFAULT_MODEL,
    PRESETS,
    RANDOM_PREFIX,
    materialize_preset,
    random_model_config,
    resolve_device,
)


class RssSampler:
    """Peak resident set size of this process, sampled in a background thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--method", default="wanda")
    p.add_argument("--every", type=int, default=1, help="time single-unit steps on every k-th unit (default 1: all units)")
    p.add_argument("--rollbacks", type=int, default=5, help="rollbacks timed (median reported)")
    p.add_argument("--repeats", type=int, default=3,
                   help="passes over the actions, each timing both modes (medians over passes reported)")
    p.add_argument("--batch-size", type=int, default=4, help="reward windows per forward (bounds the logits' memory)")
    p.add_argument("--reward-eval-samples", type=int, default=8)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--shape", default=None,
                   help="benchmark random:SHAPE instead of --model (qwen3-4b needs CUDA; qwen3-tiny runs anywhere)")
    p.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--json-out", default=None, help="also write the measured rows as JSON to this file")
    p.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # the memory child, see above
    return p.parse_args(argv)


def model_name(args) -> str:
    """``random:SHAPE`` for ``--shape`` (refused without CUDA unless the shape is tiny), else ``--model``."""
    if not args.shape:
        return args.model
    if not args.shape.endswith("-tiny") and resolve_device(args.device).type != "cuda":
        raise SystemExit(f"--shape {args.shape} needs a CUDA GPU (its bf16 weights and steps are GPU-sized); "
                         f"on CPU use --shape qwen3-tiny")
    return RANDOM_PREFIX + args.shape


def import_model_code(model: str) -> None:
    """Import the model's transformers modeling code, so the memory baseline holds the libraries, not the env."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model.startswith(RANDOM_PREFIX):
        config = random_model_config(model[len(RANDOM_PREFIX):])
    else:
        config = AutoConfig.from_pretrained(materialize_preset(model) if model in PRESETS else model)
    AutoModelForCausalLM._model_mapping[type(config)]  # noqa: B018 - the lookup imports the module


def time_parts(env: PruningEnv, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of the tail alone (norm, LM head, loss) and of one re-run block, on the reward windows."""
    cache, L = env.cache, len(env.structure.blocks)
    tails, blocks = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        cache.perplexity(dirty_from=L)
        tails.append(time.perf_counter() - t)
        t = time.perf_counter()
        cache.perplexity(dirty_from=L - 1)
        blocks.append(time.perf_counter() - t - tails[-1])
    return statistics.median(tails), statistics.median(blocks)


def env_settings(args) -> dict:
    """PruningEnv keyword arguments shared by the timing run and the memory child."""
    return dict(method=args.method, target_sparsity=0.9, step_size=0.05, n_levels=2, max_steps=10_000,
                gradient_samples=0, calib_samples=args.calib_samples, reward_eval_samples=args.reward_eval_samples,
                final_eval_samples=args.reward_eval_samples, seqlen=args.seqlen, device=args.device,
                batch_size=args.batch_size, info_timings=True)


def make_env(args) -> PruningEnv:
    env = PruningEnv(model=model_name(args), **env_settings(args))
    env.reset(seed=0)
    return env


def run_steps(env: PruningEnv, actions: list[np.ndarray], use_cache: bool) -> list[float]:
    """Seconds of each step (from the initial checkpoint, actions applied in turn) with the cache on or off."""
    env.config.use_block_cache = use_cache
    env.reset()
    return [env.step(action)[4]["timings"]["step"] for action in actions]


def run_rollbacks(env: PruningEnv, actions: list[np.ndarray]) -> tuple[list[float], list[int]]:
    """Seconds of each rollback to the checkpoint before a step, and the bytes each step's checkpoint holds."""
    env.config.use_block_cache = True
    env.reset()
    rollbacks, ckpt_bytes = [], []
    for action in actions:
        before = env._last_checkpoint
        info = env.step(action)[4]
        ckpt_bytes.append(env.store.nbytes(info["checkpoint"]))
        t = time.perf_counter()
        env.reset(options={"checkpoint": before})
        if env.loaded.device.type == "cuda":
            torch.cuda.synchronize()  # the restored weights are written by queued kernels
        rollbacks.append(time.perf_counter() - t)
        env.step(action)  # go on from the restored state (re-runs the stale blocks)
    return rollbacks, ckpt_bytes


def single_unit_actions(env: PruningEnv, every: int) -> list[np.ndarray]:
    """One action per k-th unit, centred (for 30 units and k = 3: units 1, 4, ..., 28), so the mean re-run
    depth equals that of a uniformly random unit; k = 1 takes every unit (the exact average)."""
    L = len(env.unit_names)
    offset = ((L - 1) % every) // 2
    return [np.eye(L, dtype=np.int64)[i] for i in range(offset, L, every)]


def model_and_cache_bytes(env: PruningEnv) -> tuple[int, int]:
    return sum(p.numel() * p.element_size() for p in env.model.parameters()), env.cache.nbytes


def hessian_bytes(env: PruningEnv) -> int:
    """Bytes SparseGPT's statistics would hold in this env: one fp32 ``in x in`` Hessian per prunable linear."""
    return sum(lin.shape[1] ** 2 * 4 for lin in env.structure.linears)


def memory_main(args) -> dict:
    """Child process: peak resident set above the imported libraries, during set-up and while stepping."""
    import_model_code(model_name(args))
    rss0 = RssSampler.rss()
    with RssSampler() as sampler:
        env = make_env(args)
        setup_peak, sampler.peak = sampler.peak, 0
        every_unit = single_unit_actions(env, 1)
        full = [every_unit[0], every_unit[-1]]  # unit 0 re-runs every block: the largest transient of a step
        run_steps(env, full, use_cache=False)
        run_steps(env, full, use_cache=True)
        run_rollbacks(env, full)
    model_bytes, cache_bytes = model_and_cache_bytes(env)
    return {"setup_peak_bytes": setup_peak - rss0, "peak_bytes": sampler.peak - rss0,
            "model_bytes": model_bytes, "cache_bytes": cache_bytes}


def measure_memory_in_child(argv: list[str]) -> dict:
    """Run this script with ``--memory-only`` under MALLOC_MMAP_THRESHOLD_=65536; its last stdout line is JSON."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, __file__, *argv, "--memory-only"], env=env, stdout=subprocess.PIPE,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def timing_main(args) -> dict:
    """Step, rollback and part timings in this process (default allocator); GPU peak memory on CUDA."""
    t0 = time.perf_counter()
    env = make_env(args)
    setup_seconds = time.perf_counter() - t0
    cuda = env.loaded.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    actions = single_unit_actions(env, args.every)
    passes = []  # (mean uncached step, mean cached step) per pass; the modes alternate within each pass
    for _ in range(args.repeats):
        uncached = statistics.mean(run_steps(env, actions, use_cache=False))
        passes.append((uncached, statistics.mean(run_steps(env, actions, use_cache=True))))
    tail_s, block_s = time_parts(env)
    rollbacks, ckpt_bytes = run_rollbacks(env, actions[: args.rollbacks])
    model_bytes, cache_bytes = model_and_cache_bytes(env)
    blocks = len(env.structure.blocks)
    rows = {"steps": len(actions), "model": env.loaded.source, "units": len(env.unit_names), "method": args.method,
            "setup_s": setup_seconds, "step_cached_s": statistics.median(c for _, c in passes),
            "step_uncached_s": statistics.median(u for u, _ in passes),
            "ratios": [c / u for u, c in passes], "rollback_s": statistics.median(rollbacks),
            "checkpoint_bytes_median": statistics.median(ckpt_bytes), "checkpoint_bytes_max": max(ckpt_bytes),
            "checkpoints_total_bytes": env.store.nbytes(), "model_bytes": model_bytes, "cache_bytes": cache_bytes,
            "dense_source": type(env.dense).__name__, "seqlen": env.tokens.seqlen, "tail_s": tail_s,
            "block_s": block_s, "blocks": blocks, "hessian_bytes": hessian_bytes(env),
            "reward_windows": args.reward_eval_samples,
            "mean_rerun_blocks": statistics.mean(blocks - int(np.argmax(a)) for a in actions),
            "memory_kind": "cuda" if cuda else "rss",
            "units_timed": ", ".join(str(int(np.argmax(a))) for a in actions[:3]) + f", ... every {args.every}"}
    if cuda:
        rows["peak_bytes"] = torch.cuda.max_memory_allocated()
        rows["setup_peak_bytes"] = None
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.memory_only:
        print(json.dumps(memory_main(args)))
        return 0
    rows = timing_main(args)
    if rows["memory_kind"] == "rss":
        rows.update({k: v for k, v in measure_memory_in_child(argv).items() if k.endswith("peak_bytes")})
    text = render(rows, args)
    print(text)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps({"rows": rows, "table": text}, indent=2, default=str))
    if not args.no_write:
        write_section(Path(args.out), "bench_env", "PruningEnv (`scripts/bench_env.py`)", text)
    return 0


def render(r: dict, args) -> str:
    mib = 2**20
    ratio = statistics.median(r["ratios"])
    spread = ", ".join(f"{x:.3f}" for x in r["ratios"])
    rb = r["rollback_s"] / r["step_cached_s"]
    mem = r["peak_bytes"] / (r["model_bytes"] + r["cache_bytes"])
    blocks_total = r["blocks"]
    tail_blocks = r["tail_s"] / r["block_s"]
    bound = (tail_blocks + r["mean_rerun_blocks"]) / (tail_blocks + blocks_total)
    cmd = "python scripts/bench_env.py " + " ".join(sys.argv[1:])
    peak_label = ("peak GPU memory allocated while stepping" if r["memory_kind"] == "cuda"
                  else "peak RSS above start while stepping (memory child)")
    return "\n".join([
        f"Model: `{r['model']}` ({r['units']} block units, {args.method}); {args.reward_eval_samples} reward windows of "
        f"{r['seqlen']} tokens, {args.batch_size} per forward; {r['steps']} single-unit steps per mode (units "
        f"{r['units_timed']}), {len(r['ratios'])} passes; dense weights: {r['dense_source']}.",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {machine_description()}  ",
        f"Date: {time.strftime('%Y-%m-%d')}",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| step, block cache on (mean over the actions; median of {len(r['ratios'])} passes) | {r['step_cached_s']:.2f} s | |",
        f"| step, block cache off (same) | {r['step_uncached_s']:.2f} s | |",
        f"| cached / uncached (median of the passes' ratios: {spread}) | {ratio:.3f}x | <= 0.6x {'(met)' if ratio <= 0.6 else '(NOT met)'} |",
        f"| rollback (median) | {r['rollback_s'] * 1000:.0f} ms = {rb:.1%} of a cached step | < 5% {'(met)' if rb < 0.05 else '(NOT met)'} |",
        f"| checkpoint bytes per step (median / max) | {r['checkpoint_bytes_median'] / mib:.2f} / {r['checkpoint_bytes_max'] / mib:.2f} MiB | |",
        f"| all checkpoints held at the end | {r['checkpoints_total_bytes'] / mib:.2f} MiB | |",
        f"| dense model / cached activations | {r['model_bytes'] / mib:.0f} / {r['cache_bytes'] / mib:.0f} MiB | |",
        f"| SparseGPT in-env Hessians (fp32 in x in per linear, from the shapes; "
        f"{'held: in the peak above' if args.method == 'sparsegpt' else f'not held with {args.method}'}) | "
        f"{r['hessian_bytes'] / mib:.0f} MiB | |",
        f"| {peak_label} | {r['peak_bytes'] / mib:.0f} MiB = {mem:.2f}x (model + activations) | < 1.5x {'(met)' if mem < 1.5 else '(NOT met)'} |",
        *([f"| peak RSS above start during set-up (memory child) | {r['setup_peak_bytes'] / mib:.0f} MiB | |"]
          if r.get("setup_peak_bytes") is not None else []),
        f"| env set-up (load, statistics, cache, profiles) | {r['setup_s']:.1f} s | |",
        f"| tail alone (final norm, LM head, loss) / one block | {r['tail_s']:.2f} s / {r['block_s']:.2f} s "
        f"= {r['tail_s'] / r['block_s']:.1f} blocks | |",
        f"| cached / uncached if a step were only blocks + tail (exact-cache bound) | {bound:.2f}x | |",
    ])


if __name__ == "__main__":
    sys.exit(main())
