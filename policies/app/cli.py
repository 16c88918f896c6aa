"""``prune-gym``: the command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prune_env.models import DEFAULT_MODEL, PRESETS
from prune_env.pruner import MODES
from prune_env.sparsify import METHODS

from .cli_episodes import add_compare_parser, add_eval_parser, add_run_parser
from .prune_job import PruneJobConfig, dumps, run_prune_job
from .serve_agent import add_serve_agent_parser


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"a preset ({', '.join(PRESETS)}), a Hugging Face hub id, or a local directory (default {DEFAULT_MODEL})")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed for calibration sampling (default 0)")


def _add_prune_parser(sub) -> None:
    p = sub.add_parser("prune", help="prune a model once with magnitude, Wanda or SparseGPT and report perplexity",
                       description="Prune every prunable linear of a causal LM to one sparsity (or N:M) and report "
                                   "dense and pruned perplexity on held-out text.")
    _add_model_args(p)
    p.add_argument("--method", choices=METHODS, default="wanda", help="pruning kernel (default wanda)")
    p.add_argument("--sparsity", type=float, default=None, help="fraction of prunable weights to remove, in [0, 1)")
    p.add_argument("--nm", default=None, metavar="N:M", help="semi-structured pattern instead of --sparsity, e.g. 2:4")
    p.add_argument("--mode", choices=MODES, default="sequential",
                   help="sequential: statistics from the already pruned blocks (default); oneshot: from the dense model")
    p.add_argument("--text", default="wiki",
                   help="calibration/evaluation text: wiki (packaged Wikipedia, default), lee, a local .txt path, "
                        "hf:wikitext2 or hf:c4 (online)")
    p.add_argument("--calib-samples", type=int, default=64, help="calibration windows (default 64)")
    p.add_argument("--eval-samples", type=int, default=32, help="held-out evaluation windows (default 32)")
    p.add_argument("--seqlen", type=int, default=None, help="tokens per window (default 256 on CPU, 2048 on GPU)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--out", default=None, help="save the pruned model (safetensors) and prune_report.json here")
    p.add_argument("--json", action="store_true", help="print one JSON object with the results on stdout")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(handler=_prune)


def _prune(args: argparse.Namespace) -> int:
    config = PruneJobConfig(
        model=args.model, method=args.method, sparsity=args.sparsity, nm=args.nm, mode=args.mode, text=args.text,
        calib_samples=args.calib_samples, eval_samples=args.eval_samples, seqlen=args.seqlen,
        batch_size=args.batch_size, seed=args.seed, device=args.device, dtype=args.dtype, out=args.out,
    )
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    metrics = run_prune_job(config, progress=not args.no_progress, log=log)
    if args.json:
        print(dumps(metrics))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prune-gym", description="LLM agents decide how to prune LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prune_parser(sub)
    add_run_parser(sub)
    add_compare_parser(sub)
    add_eval_parser(sub)
    add_serve_agent_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, OSError) as err:
        print(f"prune-gym {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (ImportError, RuntimeError) as err:  # a missing optional part, a server that won't start, a failed episode
        print(f"prune-gym {args.command}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"prune-gym {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
