"""Benchmark the harness tasks: dense vs uniform Wanda 50% vs magnitude 50% on the default preset.

    python scripts/bench_harness.py                          # every pg_* offline task, writes docs/BENCHMARKS.md
    python scripts/bench_harness.py --limit 20 --no-write    # a quick look
    python scripts/bench_harness.py --limit 10 --mmlu-limit 2 --threads 1   # ~15 min on 2 busy CPU cores
    python scripts/bench_harness.py --from-json runs/bench_harness.json   # re-render a saved run

Each configuration starts from a freshly loaded dense model. Wanda calibrates on 64 windows of 256 tokens
from ``build_token_sets(..., seed=0)`` (the first 80% of the packaged Wikipedia tokens); magnitude needs no
data. Every task is scored with ``harness_tasks.evaluate_raw`` at its default shots and timed separately.
Pruned scores are followed by their retention (pruned/dense; dense/pruned for perplexities).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness_tasks  # noqa: E402
from harness_tasks.sources.facts import FACT_SOURCES, MC_SOURCES  # noqa: E402
from harness_tasks.sources.mmlu import CATEGORIES  # noqa: E402
from policies.app.benchdoc import machine_description, write_section  # noqa: E402
from prune_env.models import DEFAULT_MODEL, load_model  # noqa: E402
from prune_env.pruner import make_spec, prune  # noqa: E402
from prune_env.sparsity import sparsity_report  # noqa: E402
from prune_env.structure import discover  # noqa: E402
from prune_env.text import build_token_sets, load_text  # noqa: E402

SECTION, HEADING = "bench_harness", "lm-eval tasks: dense vs pruned (`scripts/bench_harness.py`)"
TASKS = ("pg_factual_mc", "pg_factual_qa", "pg_mmlu_dev", "pg_wiki_ppl")
CONFIGS = (("dense", None), ("wanda 50%", "wanda"), ("magnitude 50%", "magnitude"))  # (column, method)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--limit", type=float, default=None, help="documents per (sub)task (default: all)")
    p.add_argument("--mmlu-limit", type=float, default=None,
                   help="questions per MMLU subject (3-5 each; default: --limit)")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default="dense,wanda,magnitude", help="which configurations to run")
    p.add_argument("--json", default=str(ROOT / "runs" / "bench_harness.json"),
                   help="the saved state: results are written after every task, and a rerun with the same "
                        "settings only runs what is missing (resume after an interruption)")
    p.add_argument("--fresh", action="store_true", help="ignore the saved state and start over")
    p.add_argument("--rerun", action="store_true", help="rerun the chosen --configs even if saved")
    p.add_argument("--from-json", default=None, help="render a saved run instead of running")
    p.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--note", default=None, help="a remark on the machine's load, kept with the results")
    return p.parse_args(argv)


def _limit(value: float | None) -> int | float | None:
    return int(value) if value is not None and value >= 1 else value


def _task_limit(args: argparse.Namespace, task: str) -> int | float | None:
    """The ``limit=`` for one task: ``--mmlu-limit`` for the MMLU subjects when set, else ``--limit``."""
    if task.startswith("pg_mmlu_dev") and args.mmlu_limit is not None:
        return _limit(args.mmlu_limit)
    return _limit(args.limit)


def run_config(args: argparse.Namespace, method: str | None, tasks: list[str], record: dict[str, Any],
               save: Callable[[], None]) -> None:
    """Score and time the tasks ``record`` lacks: load the dense model, prune it with ``method`` (None:
    dense; deterministic, so a resumed run prunes identically), save after every task."""
    todo = [t for t in tasks if t not in record["tasks"]]
    if not todo:
        return
    loaded = load_model(args.model, device=args.device)
    if method is not None:
        structure = discover(loaded.model)
        calib = None
        if method != "magnitude":
            calib = build_token_sets(loaded.tokenizer, load_text("wiki"), seqlen=args.seqlen,
                                     n_calib=args.calib_samples, n_eval=0, seed=0,
                                     needs_bos=loaded.needs_bos).calib
        result = prune(loaded.model, make_spec(structure, method, args.sparsity), calib, progress=False)
        record.setdefault("prune_seconds", result.seconds)
        record["global_sparsity"] = sparsity_report(loaded.model, structure).as_dict()["global_sparsity"]
    for task in todo:
        start = time.perf_counter()
        raw = harness_tasks.evaluate_raw(loaded.model, loaded.tokenizer, [task], limit=_task_limit(args, task),
                                         batch_size=args.batch_size, add_bos_token=loaded.needs_bos or None)
        seconds = time.perf_counter() - start
        docs = sum(int(n["effective"]) for n in raw.get("n-samples", {}).values())
        record["tasks"][task] = {"seconds": seconds, "docs": docs, "results": harness_tasks.summarize(raw)}
        save()
        print(f"  {method or 'dense'} {task}: {seconds:.0f}s, {docs} docs", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ rendering
def _rows() -> list[tuple[str, str, str, str]]:
    """(label, task key in results, result entry, metric) for every table row."""
    rows = [("factual MC, all sources", "pg_factual_mc", "pg_factual_mc", "acc")]
    rows += [(f"  MC {s}", "pg_factual_mc", f"pg_factual_mc_{s}", "acc") for s in MC_SOURCES]
    rows += [("factual open QA, all sources", "pg_factual_qa", "pg_factual_qa", "exact_match")]
    rows += [(f"  QA {s}", "pg_factual_qa", f"pg_factual_qa_{s}", "exact_match") for s in FACT_SOURCES]
    rows += [("MMLU dev (lm-eval's 281)", "pg_mmlu_dev", "pg_mmlu_dev", "acc")]
    rows += [(f"  MMLU {c}", "pg_mmlu_dev", f"pg_mmlu_dev_{c}", "acc") for c in CATEGORIES]
    rows += [("held-out wiki", "pg_wiki_ppl", "pg_wiki_ppl", m)
             for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")]
    return rows


def _value(run: dict[str, Any], task: str, entry: str, metric: str) -> float | None:
    return run["tasks"].get(task, {}).get("results", {}).get(entry, {}).get(metric)


def _extra_rows(dense: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Rows for tasks run by ``--tasks`` that the standard rows do not cover (e.g. a single subtask)."""
    covered = {task for _, task, _, _ in _rows()}
    return [(entry, task, entry, metric) for task, record in dense["tasks"].items() if task not in covered
            for entry, metrics in record["results"].items() for metric in metrics]


def render(runs: dict[str, dict[str, Any]]) -> str:
    names = list(runs)
    dense = runs[names[0]]
    lines = ["| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for label, task, entry, metric in _rows() + _extra_rows(dense):
        base = _value(dense, task, entry, metric)
        if base is None:
            continue
        cells = []
        for name in names:
            value = _value(runs[name], task, entry, metric)
            if value is None:
                cells.append("-")
                continue
            text = f"{value:.3f}" if value < 100 else f"{value:.1f}"
            if runs[name] is not dense:
                ratio = harness_tasks.retention({entry: {metric: value}}, {entry: {metric: base}})[entry][metric]
                text += f" ({ratio:.2f})"
            cells.append(text)
        lines.append(f"| {label.replace('  ', '&nbsp;&nbsp;')} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", "| evaluation time (s) | docs | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for task in dense["tasks"]:
        secs = [f"{runs[n]['tasks'][task]['seconds']:.0f}" if task in runs[n]["tasks"] else "-" for n in names]
        lines.append(f"| {task} | {dense['tasks'][task]['docs']} | " + " | ".join(secs) + " |")
    prune_cells = [f"{runs[n]['prune_seconds']:.0f} (sparsity {runs[n]['global_sparsity']:.3f})"
                   if "prune_seconds" in runs[n] else "-" for n in names]
    lines.append("| prune time (s) | | " + " | ".join(prune_cells) + " |")
    return "\n".join(lines)


def section_body(table: str, meta: dict[str, Any]) -> str:
    """The text of this script's section of the shared benchmarks file."""
    settings = meta["settings"]
    commands = ", then ".join(f"`{c}`" for c in meta["commands"])
    return (f"Model: `{settings['model']}`; pruned models: uniform {settings['sparsity']:.0%} of every prunable "
            f"linear, Wanda calibrated on {settings['calib_samples']} x {settings['seqlen']} tokens of the packaged "
            f"Wikipedia text (seed 0), magnitude without data. Default shots: factual MC 3, open QA 3, MMLU 0. "
            f"Pruned cells: score (retention: pruned/dense, dense/pruned for perplexities; 1.00 = unchanged). "
            f"Documents per (sub)task: {settings['limit'] or 'all'}, per MMLU subject: "
            f"{settings.get('mmlu_limit') or settings['limit'] or 'all'} (the docs column counts what ran): with "
            f"limits, a cell rests on few documents, so read differences under ~0.1 as noise; MMLU is near "
            f"chance (0.25) for a 135M model either way.  \n"
            f"Command: {commands}  \nTask data: `{meta.get('build', '?')}` (harness cache)  \n"
            f"Machine: {meta['machine']}{'; ' + meta['note'] if meta.get('note') else ''}  \n"
            f"Date: {meta['date']}\n\n{table}")


def _save(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(path)


def run(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    """Run what the saved state (``--json``) lacks for the chosen configs; return the state."""
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"model": args.model, "sparsity": args.sparsity, "calib_samples": args.calib_samples,
                "seqlen": args.seqlen, "limit": _limit(args.limit), "mmlu_limit": _limit(args.mmlu_limit)}
    path = Path(args.json)
    state = json.loads(path.read_text()) if path.is_file() and not args.fresh else None
    if state is not None and state["meta"]["settings"] != settings:
        raise SystemExit(f"{path} holds a run with other settings ({state['meta']['settings']}): pass --fresh "
                         f"to start over or another --json")
    state = state or {"meta": {"settings": settings, "commands": []}, "runs": {}}
    build = harness_tasks.ensure_built().name  # the task data: saved results must all come from one build
    if state["meta"].setdefault("build", build) != build:
        raise SystemExit(f"{path} was scored on task data {state['meta']['build']}, now {build} (the packaged "
                         f"text or the task code changed): pass --fresh to start over")
    wanted = {c.strip() for c in args.configs.split(",") if c.strip()}
    unknown = wanted - {method or "dense" for _, method in CONFIGS}
    if unknown:
        raise SystemExit(f"unknown --configs {sorted(unknown)}; choose from dense, wanda, magnitude")
    command = " ".join(["python scripts/bench_harness.py",
                        *(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--no-write")])
    meta = state["meta"]
    if command not in meta["commands"]:
        meta["commands"].append(command)
    meta.update(machine=machine_description(), date=time.strftime("%Y-%m-%d"))
    tasks = [t for t in args.tasks.split(",") if t]
    for name, method in CONFIGS:
        if (method or "dense") in wanted:
            record = state["runs"].setdefault(name, {"method": method, "tasks": {}})
            if args.rerun:
                record["tasks"] = {}
                record.pop("prune_seconds", None)
            print(f"{name} ...", file=sys.stderr, flush=True)
            run_config(args, method, tasks, record, lambda: _save(path, state))
    _save(path, state)
    return state


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state = json.loads(Path(args.from_json).read_text()) if args.from_json else run(args, argv)
    if args.note:
        state["meta"]["note"] = args.note
    runs = {name: state["runs"][name] for name, _ in CONFIGS if name in state["runs"]}
    table = render(runs)
    print(table)
    if not args.no_write:
        write_section(Path(args.out), SECTION, HEADING, section_body(table, state["meta"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
