"""Benchmark the pruning kernels on a real model: perplexity and prune time per method and sparsity.

    python scripts/bench_kernels.py                      # default preset, writes docs/BENCHMARKS.md
    python scripts/bench_kernels.py --repeats 3 --targets 0.5,2:4 --no-write

Every configuration starts from the same dense weights (restored bitwise between runs). Prune time is the
median of ``--repeats`` runs; perplexity is deterministic, so it is measured once. Ratios are against the
dense model and against Wanda, both measured in the same run. With CUDA, ``--shape qwen3-4b`` also times the
kernels on a Qwen3-4B-shaped model with random weights (no download needed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.app.benchdoc import machine_description, write_section  # noqa: E402
from prune_env.models import DEFAULT_MODEL, load_model  # noqa: E402
from prune_env.perplexity import perplexity  # noqa: E402
from prune_env.pruner import make_spec, prune  # noqa: E402
from prune_env.sparsity import sparsity_report  # noqa: E402
from prune_env.structure import discover  # noqa: E402
from prune_env.text import build_token_sets, load_text  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    p.add_argument("--targets", default="0.5,2:4,0.6,0.7", help="comma list of sparsities and N:M patterns")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--eval-samples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="prune-time repeats (median reported)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--shape", default=None, help="qwen3-4b: time kernels on a random Qwen3-4B-shaped model (GPU)")
    p.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def snapshot(structure) -> dict[str, torch.Tensor]:
    return {lin.name: lin.weight_matrix().detach().clone() for lin in structure.linears}


def restore(structure, weights: dict[str, torch.Tensor]) -> None:
    for lin in structure.linears:
        lin.set_weight_matrix(weights[lin.name])


def random_qwen3_4b(device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval(), "random Qwen3-4B-shaped (36 blocks, hidden 2560)"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.shape:
        if args.shape != "qwen3-4b" or not torch.cuda.is_available():
            raise SystemExit("--shape qwen3-4b needs a CUDA GPU")
        model, source = random_qwen3_4b("cuda", torch.bfloat16)
        calib = torch.randint(0, 151936, (args.calib_samples, args.seqlen))
        evalset = None
    else:
        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        model, source = loaded.model, loaded.source
        tokens = build_token_sets(loaded.tokenizer, load_text("wiki"), seqlen=args.seqlen, n_calib=args.calib_samples,
                                  n_eval=args.eval_samples, seed=0, needs_bos=loaded.needs_bos)
        calib, evalset = tokens.calib, tokens.eval
    structure = discover(model)
    dense_weights = snapshot(structure)
    dense_ppl = perplexity(model, evalset).ppl if evalset is not None else float("nan")
    print(f"{source}: dense perplexity {dense_ppl:.2f}", flush=True)
    rows = []
    for target in args.targets.split(","):
        nm = target if ":" in target else None
        for method in args.methods.split(","):
            times, ppl, sparsity = [], float("nan"), float("nan")
            for rep in range(args.repeats):
                restore(structure, dense_weights)
                spec = make_spec(structure, method, None if nm else float(target), nm)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                prune(model, spec, calib, structure=structure, progress=False)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
                if rep == 0:
                    sparsity = sparsity_report(model, structure).global_sparsity
                    ppl = perplexity(model, evalset).ppl if evalset is not None else float("nan")
            rows.append({"target": target, "method": method, "ppl": ppl, "sparsity": sparsity,
                         "seconds": statistics.median(times), "all_seconds": times})
            print(f"{target:>5} {method:>9}: ppl {ppl:9.2f}  sparsity {sparsity:.4f}  "
                  f"time {statistics.median(times):7.2f} s (runs {', '.join(f'{t:.1f}' for t in times)})", flush=True)
        restore(structure, dense_weights)
    table = render(rows, dense_ppl)
    print(table)
    if not args.no_write:
        command = "python scripts/bench_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_doc(Path(args.out), table, source, command.strip(), args)
    return 0


def render(rows: list[dict], dense_ppl: float) -> str:
    wanda = {r["target"]: r for r in rows if r["method"] == "wanda"}
    lines = ["| target | method | perplexity | ratio to dense | ratio to Wanda | sparsity | prune time (s, median) | time vs Wanda |",
             "|---|---|---|---|---|---|---|---|"]
    lines.append(f"| 0 | dense | {dense_ppl:.2f} | 1.00 | | 0.0000 | | |")
    for r in rows:
        w = wanda.get(r["target"])
        rel_ppl = f"{r['ppl'] / w['ppl']:.2f}" if w else ""
        rel_t = f"{r['seconds'] / w['seconds']:.2f}x" if w else ""
        lines.append(f"| {r['target']} | {r['method']} | {r['ppl']:.2f} | {r['ppl'] / dense_ppl:.2f} | {rel_ppl} | "
                     f"{r['sparsity']:.4f} | {r['seconds']:.2f} | {rel_t} |")
    return "\n".join(lines)


def write_doc(path: Path, table: str, source: str, command: str, args) -> None:
    body = (f"Model: `{source}`; {args.calib_samples} calibration windows and {args.eval_samples} held-out "
            f"evaluation windows of {args.seqlen} tokens from the packaged Wikipedia text (seed 0); sequential "
            f"calibration; prune time is the median of {args.repeats} runs.\n\nCommand: `{command}`  \n"
            f"Machine: {machine_description()}  \nDate: {time.strftime('%Y-%m-%d')}\n\n{table}")
    write_section(path, "bench_kernels", "Pruning kernels (`scripts/bench_kernels.py`)", body)


if __name__ == "__main__":
    sys.exit(main())
