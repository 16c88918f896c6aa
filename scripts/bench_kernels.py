"""Benchmark the pruning kernels on a real model: perplexity and prune time per method and sparsity.

    python scripts/bench_kernels.py                      # default preset, writes docs/BENCHMARKS.md
    python scripts/bench_kernels.py --repeats 3 --targets 0.5,2:4 --no-write

Every configuration starts from the same dense weights (restored bitwise between runs). Prune time is the
median of ``--repeats`` runs; perplexity is deterministic, so it is measured once. Ratios are against the
dense model and against Wanda, both measured in the same run.

``--shape NAME`` times the kernels on ``random:NAME`` instead (:data:`prune_env.models.RANDOM_SHAPES`: random
weights built on the device, no download) with seeded random calibration token ids and no evaluation set
(perplexities of random weights mean nothing); shapes other than ``*-tiny`` need CUDA. The device check
(``scripts/gpu_check.sh``) runs::

    python scripts/bench_kernels.py --shape qwen3-4b --methods wanda --targets 0.5 --repeats 1 \
        --calib-samples 128 --seqlen 2048 --no-write --json-out out/kernels.json

On CUDA each row also reports the peak GPU memory allocated while pruning.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.app.benchdoc import machine_description, write_section  # noqa: E402
from prune_env.models import DEFAULT_MODEL, RANDOM_PREFIX, load_model, resolve_device  # noqa: E402
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
    p.add_argument("--shape", default=None,
                   help="time the kernels on random:SHAPE with random token ids (qwen3-4b needs CUDA; qwen3-tiny "
                        "runs anywhere)")
    p.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--json-out", default=None, help="also write the rows as JSON to this file")
    return p.parse_args(argv)


def snapshot(structure) -> dict[str, torch.Tensor]:
    return {lin.name: lin.weight_matrix().detach().clone() for lin in structure.linears}


def restore(structure, weights: dict[str, torch.Tensor]) -> None:
    for lin in structure.linears:
        lin.set_weight_matrix(weights[lin.name])


def random_shape(args):
    """``random:SHAPE`` on the device, and seeded random calibration ids over its whole vocabulary."""
    device = resolve_device(args.device)
    if not args.shape.endswith("-tiny") and device.type != "cuda":
        raise SystemExit(f"--shape {args.shape} needs a CUDA GPU (its bf16 weights and kernels are GPU-sized); "
                         f"on CPU use --shape qwen3-tiny")
    loaded = load_model(RANDOM_PREFIX + args.shape, device=device, dtype=args.dtype)
    vocab = int(loaded.model.config.vocab_size)
    calib = torch.randint(0, vocab, (args.calib_samples, args.seqlen), generator=torch.Generator().manual_seed(0))
    config = loaded.model.config
    source = (f"{loaded.source} ({config.num_hidden_layers} blocks, hidden {config.hidden_size}, "
              f"{str(loaded.dtype).removeprefix('torch.')}, {device.type})")
    return loaded.model, source, calib


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.shape:
        model, source, calib = random_shape(args)
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
            times, ppl, sparsity, peak = [], float("nan"), float("nan"), None
            for rep in range(args.repeats):
                restore(structure, dense_weights)
                spec = make_spec(structure, method, None if nm else float(target), nm)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                prune(model, spec, calib, structure=structure, progress=False)
                if cuda:
                    torch.cuda.synchronize()
                    peak = max(peak or 0, torch.cuda.max_memory_allocated())
                times.append(time.perf_counter() - t0)
                if rep == 0:
                    sparsity = sparsity_report(model, structure).global_sparsity
                    ppl = perplexity(model, evalset).ppl if evalset is not None else float("nan")
            rows.append({"target": target, "method": method, "ppl": ppl, "sparsity": sparsity,
                         "seconds": statistics.median(times), "all_seconds": times, "peak_gpu_bytes": peak})
            print(f"{target:>5} {method:>9}: ppl {ppl:9.2f}  sparsity {sparsity:.4f}  "
                  f"time {statistics.median(times):7.2f} s (runs {', '.join(f'{t:.1f}' for t in times)})", flush=True)
        restore(structure, dense_weights)
    table = render(rows, dense_ppl)
    print(table)
    if args.json_out:
        meta = {"source": source, "calib_samples": args.calib_samples, "seqlen": args.seqlen,
                "calib_tokens": int(calib.numel()), "repeats": args.repeats,
                "model_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps({"meta": meta, "rows": rows, "table": table}, indent=2))
    if not args.no_write:
        command = "python scripts/bench_kernels.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_doc(Path(args.out), table, source, command.strip(), args)
    return 0


def render(rows: list[dict], dense_ppl: float) -> str:
    wanda = {r["target"]: r for r in rows if r["method"] == "wanda"}
    gpu = any(r.get("peak_gpu_bytes") for r in rows)  # a column of peak GPU memory, on CUDA only
    extra_head, extra_rule = (" peak GPU memory (GiB) |", "---|") if gpu else ("", "")
    lines = ["| target | method | perplexity | ratio to dense | ratio to Wanda | sparsity | prune time (s, median) | "
             "time vs Wanda |" + extra_head, "|---|---|---|---|---|---|---|---|" + extra_rule]
    lines.append(f"| 0 | dense | {dense_ppl:.2f} | 1.00 | | 0.0000 | | |" + (" |" if gpu else ""))
    for r in rows:
        w = wanda.get(r["target"])
        rel_ppl = f"{r['ppl'] / w['ppl']:.2f}" if w else ""
        rel_t = f"{r['seconds'] / w['seconds']:.2f}x" if w else ""
        peak = f" {r['peak_gpu_bytes'] / 2**30:.1f} |" if gpu and r.get("peak_gpu_bytes") else (" |" if gpu else "")
        lines.append(f"| {r['target']} | {r['method']} | {r['ppl']:.2f} | {r['ppl'] / dense_ppl:.2f} | {rel_ppl} | "
                     f"{r['sparsity']:.4f} | {r['seconds']:.2f} | {rel_t} |" + peak)
    return "\n".join(lines)


def write_doc(path: Path, table: str, source: str, command: str, args) -> None:
    data = (f"{args.calib_samples} calibration windows of {args.seqlen} random token ids (seed 0), no evaluation"
            if args.shape else f"{args.calib_samples} calibration windows and {args.eval_samples} held-out "
            f"evaluation windows of {args.seqlen} tokens from the packaged Wikipedia text (seed 0)")
    body = (f"Model: `{source}`; {data}; sequential "
            f"calibration; prune time is the median of {args.repeats} runs.\n\nCommand: `{command}`  \n"
            f"Machine: {machine_description()}  \nDate: {time.strftime('%Y-%m-%d')}\n\n{table}")
    write_section(path, "bench_kernels", "Pruning kernels (`scripts/bench_kernels.py`)", body)


if __name__ == "__main__":
    sys.exit(main())
