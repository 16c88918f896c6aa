"""Benchmark PruningEnv on a real model: step time with and without the block cache, rollback time,
checkpoint bytes, and peak memory against the model's size.

    python scripts/bench_env.py                       # default preset, writes docs/BENCHMARKS.md
    python scripts/bench_env.py --steps 4 --no-write
    python scripts/bench_env.py --shape qwen3-4b      # GPU only: random Qwen3-4B-shaped model

Steps are single-unit actions (one unit raised by one level) on every k-th unit, the same units for both
modes, so their mean is the average over uniformly random single-unit actions; the gradient profile is off
so that steps measure pruning + cached evaluation. The tail (final norm + LM head + loss over the reward
windows) and one block are also timed alone, which gives the ratio an exact cache would reach if a step were
nothing but blocks and tail: ``(tail + mean re-run blocks) / (tail + all blocks)``. Peak memory is the resident set
(sampled every 5 ms) above what the process held once its libraries (torch, transformers and the model's
modeling code) were imported and before the model loaded, for set-up and for stepping separately; run it with
MALLOC_MMAP_THRESHOLD_=65536 so that freed large buffers go back to the OS and the RSS shows live memory.
Targets (issue #3): cached step <= 0.6x uncached; rollback < 5% of a step; peak memory < 1.5x (dense model
+ cached evaluation activations).
"""

from __future__ import annotations

import argparse
import statistics
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
from prune_env.models import DEFAULT_MODEL, PRESETS, LoadedModel, load_model, materialize_preset  # noqa: E402


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
    p.add_argument("--every", type=int, default=3, help="time single-unit steps on every k-th unit (k=1: all units)")
    p.add_argument("--rollbacks", type=int, default=5, help="rollbacks timed (median reported)")
    p.add_argument("--batch-size", type=int, default=4, help="reward windows per forward (bounds the logits' memory)")
    p.add_argument("--reward-eval-samples", type=int, default=8)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--shape", default=None, help="qwen3-4b: random Qwen3-4B-shaped model (needs CUDA)")
    p.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def qwen3_4b_factory(device: str):
    """A random Qwen3-4B-shaped model in bf16 on ``device`` with the SmolLM2 tokenizer (ids fit its vocab)."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    def factory() -> LoadedModel:
        tokenizer = load_model(DEFAULT_MODEL, device="cpu").tokenizer
        config = Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
        model.config.use_cache = False
        return LoadedModel(model, tokenizer, "random:qwen3-4b-shape", torch.device(device), torch.bfloat16, False)

    return factory


def import_model_code(model: str) -> None:
    """Import the model's transformers modeling code, so the memory baseline holds the libraries, not the env."""
    from transformers import AutoConfig, AutoModelForCausalLM

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


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.shape:
        import_model_code(args.model)
    rss0 = RssSampler.rss()
    settings = dict(method=args.method, target_sparsity=0.9, step_size=0.05, n_levels=2, max_steps=10_000,
                    gradient_samples=0, calib_samples=args.calib_samples, reward_eval_samples=args.reward_eval_samples,
                    final_eval_samples=args.reward_eval_samples, seqlen=args.seqlen, device=args.device,
                    batch_size=args.batch_size)
    factory = None
    if args.shape:
        if args.shape != "qwen3-4b" or not torch.cuda.is_available():
            raise SystemExit("--shape qwen3-4b needs a CUDA GPU")
        factory = qwen3_4b_factory("cuda")
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        env = PruningEnv(model=args.model if factory is None else "random", model_factory=factory, **settings)
        env.reset(seed=0)
        setup_seconds = time.perf_counter() - t0
        setup_peak, sampler.peak = sampler.peak, 0
        L = len(env.unit_names)
        actions = [np.eye(L, dtype=np.int64)[i] for i in range(0, L, args.every)]

        def run_steps(use_cache: bool) -> list[float]:
            env.config.use_block_cache = use_cache
            env.reset()
            times = []
            for action in actions:
                times.append(env.step(action)[4]["timings"]["step"])
            return times

        uncached = run_steps(False)
        cached = run_steps(True)
        tail_s, block_s = time_parts(env)
        env.config.use_block_cache = True
        env.reset()
        rollbacks, ckpt_bytes = [], []
        for action in actions[: args.rollbacks]:
            before = env._last_checkpoint
            info = env.step(action)[4]
            ckpt_bytes.append(env.store.nbytes(info["checkpoint"]))
            t = time.perf_counter()
            env.reset(options={"checkpoint": before})
            rollbacks.append(time.perf_counter() - t)
            env.step(action)  # go on from the restored state (re-runs the stale blocks)
        model_bytes = sum(p.numel() * p.element_size() for p in env.model.parameters())
        cache_bytes = env.cache.nbytes
    peak = sampler.peak - rss0
    rows = {"setup_peak_bytes": setup_peak - rss0, "steps": len(actions),
        "model": env.loaded.source, "units": L, "method": args.method, "setup_s": setup_seconds,
        "step_cached_s": statistics.mean(cached), "step_uncached_s": statistics.mean(uncached),
        "rollback_s": statistics.median(rollbacks), "checkpoint_bytes_median": statistics.median(ckpt_bytes),
        "checkpoint_bytes_max": max(ckpt_bytes), "checkpoints_total_bytes": env.store.nbytes(),
        "model_bytes": model_bytes, "cache_bytes": cache_bytes, "peak_bytes": peak,
        "dense_source": type(env.dense).__name__, "seqlen": env.tokens.seqlen,
        "tail_s": tail_s, "block_s": block_s, "blocks": len(env.structure.blocks),
        "mean_rerun_blocks": statistics.mean(len(env.structure.blocks) - i for i in range(0, L, args.every)),
    }
    text = render(rows, args)
    print(text)
    if not args.no_write:
        write_section(Path(args.out), "bench_env", "PruningEnv (`scripts/bench_env.py`)", text)
    return 0


def render(r: dict, args) -> str:
    mib = 2**20
    ratio = r["step_cached_s"] / r["step_uncached_s"]
    rb = r["rollback_s"] / r["step_cached_s"]
    mem = r["peak_bytes"] / (r["model_bytes"] + r["cache_bytes"])
    blocks_total = r["blocks"]
    tail_blocks = r["tail_s"] / r["block_s"]
    bound = (tail_blocks + r["mean_rerun_blocks"]) / (tail_blocks + blocks_total)
    cmd = "python scripts/bench_env.py " + " ".join(sys.argv[1:])
    return "\n".join([
        f"Model: `{r['model']}` ({r['units']} block units, {args.method}); {args.reward_eval_samples} reward windows of "
        f"{r['seqlen']} tokens, {args.batch_size} per forward; {r['steps']} single-unit steps per mode (every "
        f"{args.every}th unit); dense weights: {r['dense_source']}.",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {machine_description()}  ",
        f"Date: {time.strftime('%Y-%m-%d')}",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| step, block cache on (mean) | {r['step_cached_s']:.2f} s | |",
        f"| step, block cache off (mean) | {r['step_uncached_s']:.2f} s | |",
        f"| cached / uncached | {ratio:.2f}x | <= 0.6x {'(met)' if ratio <= 0.6 else '(NOT met)'} |",
        f"| rollback (median) | {r['rollback_s'] * 1000:.0f} ms = {rb:.1%} of a cached step | < 5% {'(met)' if rb < 0.05 else '(NOT met)'} |",
        f"| checkpoint bytes per step (median / max) | {r['checkpoint_bytes_median'] / mib:.2f} / {r['checkpoint_bytes_max'] / mib:.2f} MiB | |",
        f"| all checkpoints held at the end | {r['checkpoints_total_bytes'] / mib:.2f} MiB | |",
        f"| dense model / cached activations | {r['model_bytes'] / mib:.0f} / {r['cache_bytes'] / mib:.0f} MiB | |",
        f"| peak RSS above start while stepping | {r['peak_bytes'] / mib:.0f} MiB = {mem:.2f}x (model + activations) | < 1.5x {'(met)' if mem < 1.5 else '(NOT met)'} |",
        f"| peak RSS above start during set-up | {r['setup_peak_bytes'] / mib:.0f} MiB | |",
        f"| env set-up (load, statistics, cache, profiles) | {r['setup_s']:.1f} s | |",
        f"| tail alone (final norm, LM head, loss) / one block | {r['tail_s']:.2f} s / {r['block_s']:.2f} s "
        f"= {r['tail_s'] / r['block_s']:.1f} blocks | |",
        f"| cached / uncached if a step were only blocks + tail (exact-cache bound) | {bound:.2f}x | |",
    ])


if __name__ == "__main__":
    sys.exit(main())
