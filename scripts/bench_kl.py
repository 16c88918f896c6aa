"""Benchmark evo-search's KL fitness reduction: the plain formula against the in-place form it uses.

    python scripts/bench_kl.py                # default preset, windows of 256 tokens, docs/BENCHMARKS.md
    python scripts/bench_kl.py --model DIR --seqlen 32 --repeats 3 --no-write

Per window (and per batch of ``--batch`` windows) it times, on the model's real LM head and vocabulary:

* the LM head itself (``hidden @ W_head^T``), for scale: every candidate evaluation pays it;
* ``plain``: ``(exp(log_p) * (log_p - log_softmax(z))).sum(-1)``, the textbook form (the code before);
* ``in place``: :func:`prune_env.divergence.sequence_kl` with the cached reference probabilities (what
  :class:`prune_env.divergence.DenseReference` passes), the difference and product written into the
  log-softmax buffer.

Each is the median of ``--repeats`` timed calls after one warm-up; the ratio is plain / in place, measured in
the same run. It also checks that both forms give bitwise the same sums (the search's decisions, and so its
results, do not move). Logits are the model's own on random hidden states: the cost does not depend on values.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from policies.app.benchdoc import machine_description, write_section  # noqa: E402
from prune_env.divergence import sequence_kl  # noqa: E402
from prune_env.models import DEFAULT_MODEL, load_model  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--seqlen", type=int, default=256, help="tokens per window (the CPU default)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="windows per call (stage sizes)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    p.add_argument("--no-write", action="store_true")
    return p.parse_args(argv)


def plain_kl(logits: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """The textbook form, with its temporaries (the baseline)."""
    log_p = ref_logprobs.float()
    return (log_p.exp() * (log_p - F.log_softmax(logits.float(), dim=-1))).sum(dim=-1).double().sum(dim=1)


def median_ms(repeats: int, fn: Callable[..., object], *inputs: object) -> float:
    """Median wall time of ``fn(*inputs)`` over ``repeats`` calls after one warm-up, in ms."""
    fn(*inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*inputs)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


@torch.no_grad()
def measure(args: argparse.Namespace) -> list[dict[str, float]]:
    loaded = load_model(args.model)
    head = loaded.model.get_output_embeddings().weight.float()
    vocab, hidden = head.shape
    gen = torch.Generator().manual_seed(0)
    rows = []
    t = args.seqlen - 1  # predicted positions of a window
    for batch in args.batch:
        h_model = torch.randn(batch, t, hidden, generator=gen)
        h_ref = torch.randn(batch, t, hidden, generator=gen)
        logits = F.linear(h_model, head)
        ref = F.log_softmax(F.linear(h_ref, head), dim=-1)
        probs = ref.exp()
        same = torch.equal(plain_kl(logits, ref), sequence_kl(logits, ref, probs))
        head_ms = median_ms(args.repeats, F.linear, h_model, head)
        plain_ms = median_ms(args.repeats, plain_kl, logits, ref)
        inplace_ms = median_ms(args.repeats, sequence_kl, logits, ref, probs)
        rows.append({"batch": batch, "vocab": vocab, "head_ms": head_ms, "plain_ms": plain_ms,
                     "inplace_ms": inplace_ms, "ratio": plain_ms / inplace_ms, "bitwise": same})
        print(f"batch {batch}: LM head {head_ms:.1f} ms, plain {plain_ms:.1f} ms, in place {inplace_ms:.1f} ms "
              f"({plain_ms / inplace_ms:.2f}x), bitwise equal: {same}", flush=True)
    return rows


def render(rows: list[dict[str, float]], args: argparse.Namespace, argv: list[str], seconds: float) -> str:
    lines = [f"Windows of {args.seqlen} tokens, {args.model} (vocabulary {rows[0]['vocab']:,}); median of "
             f"{args.repeats} calls each, after a warm-up; ratio = plain / in place, same run.", "",
             "| windows per call | LM head (ms) | KL plain (ms) | KL in place (ms) | plain / in place | bitwise equal |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['head_ms']:.1f} | {r['plain_ms']:.1f} | {r['inplace_ms']:.1f} | "
                     f"{r['ratio']:.2f} | {'yes' if r['bitwise'] else 'NO'} |")
    command = "python scripts/bench_kl.py" + "".join(f" {a}" for a in argv)
    lines += ["", f"Command: `{command}`; {seconds:.0f} s; machine: {machine_description()}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    start = time.perf_counter()
    rows = measure(args)
    body = render(rows, args, argv, time.perf_counter() - start)
    print(body)
    if not args.no_write:
        write_section(Path(args.out), "bench_kl", "evo-search's KL fitness (`scripts/bench_kl.py`)", body)
    return 0 if all(r["bitwise"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
