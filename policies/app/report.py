"""The comparison report: a Markdown table and two PNG plots from a ``results.json`` dict (no model, no env).

``results`` (written by :mod:`policies.app.compare_job`)::

    {"command": str, "versions": {...}, "machine": str, "date": str, "model": str, "target": float,
     "dense": {"ppl": float, "knowledge": {task: score}},
     "policies": {name: {"ppl", "dense_ppl", "ppl_ratio", "sparsity", "steps", "rollbacks", "wall_seconds",
                         "tokens", "knowledge": {task: score}, "retention": {task: ratio},
                         "sparsity_map": {unit: level}, "trace": [{"step", "ppl", "rolled_back",
                         "rejected_ppl"?, "global_sparsity"}], "error"?: str}}}
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

SPARSITY_PLOT = "unit_sparsity.png"
TRACE_PLOT = "ppl_over_steps.png"


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def knowledge_tasks(results: Mapping[str, Any]) -> list[str]:
    """Task names that have a retention value for at least one policy, in first-seen order."""
    tasks: list[str] = []
    for row in results["policies"].values():
        for task in row.get("retention", {}):
            if task not in tasks:
                tasks.append(task)
    return tasks


def results_table(results: Mapping[str, Any]) -> str:
    """One row per policy: perplexity, ratio to dense, knowledge retention per task, sparsity, cost."""
    tasks = knowledge_tasks(results)
    head = ["policy", "perplexity", "x dense", *[f"{t} retention" for t in tasks], "sparsity", "steps",
            "rollbacks", "wall (s)", "agent tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    dense = results.get("dense", {})
    if dense:
        lines.append("| dense | " + " | ".join([_fmt(dense.get("ppl"), ".2f"), "1.000", *["1.000"] * len(tasks),
                                                 "0.000", "-", "-", "-", "-"]) + " |")
    for name, row in results["policies"].items():
        if row.get("error"):
            lines.append(f"| {name} | failed: {row['error'][:80]} |" + " |" * (len(head) - 2))
            continue
        sparsity = _fmt(row.get("sparsity"))
        if row.get("sparsity") is not None and row["sparsity"] < results.get("target", 0) - 0.005:
            sparsity += " (below target)"
        cells = [name, _fmt(row.get("ppl"), ".2f"), _fmt(row.get("ppl_ratio")),
                 *[_fmt(row.get("retention", {}).get(t)) for t in tasks], sparsity,
                 _fmt(row.get("steps")), _fmt(row.get("rollbacks")), _fmt(row.get("wall_seconds"), ".0f"),
                 _fmt(row.get("tokens") or None)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_unit_sparsity(results: Mapping[str, Any], path: Path) -> Path:
    """Per-unit sparsity of every policy, one line each, units in model order."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, row in results["policies"].items():
        levels = list(row.get("sparsity_map", {}).values())
        if levels:
            ax.plot(range(len(levels)), levels, marker="o", markersize=3, label=name)
    ax.set_xlabel("unit (decoder block / linear, in model order)")
    ax.set_ylabel("sparsity")
    ax.axhline(results.get("target", 0.0), color="grey", linestyle=":", linewidth=1, label="target (global)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(f"Per-unit sparsity, {results.get('model', '')}")
    return _save(fig, plt, path)


def plot_ppl_over_steps(results: Mapping[str, Any], path: Path) -> Path:
    """Reward perplexity after every step per policy; rejected (rolled-back) steps marked with x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, row in results["policies"].items():
        trace = row.get("trace", [])
        if not trace:
            continue
        line = ax.plot([t["step"] for t in trace], [t["ppl"] for t in trace], marker=".", label=name)[0]
        rejected = [(t["step"], t.get("rejected_ppl", t["ppl"])) for t in trace if t.get("rolled_back")]
        if rejected:
            ax.scatter(*zip(*rejected), marker="x", s=60, color=line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel("reward perplexity")
    ax.set_yscale("log")
    ax.set_title("Perplexity over steps (x: rejected step, rolled back)")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def render_report(results: Mapping[str, Any], *, plots: bool = True) -> str:
    """The Markdown report: what was run, the table, the plots, how to reproduce it."""
    dense = results.get("dense", {})
    parts = [
        f"# prune-gym comparison: {results.get('model', '?')} at {results.get('target', 0):.0%} sparsity",
        "",
        f"Date: {results.get('date', '?')}  ",
        f"Machine: {results.get('machine', '?')}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items()),
        "",
        "Command:",
        "",
        "```bash",
        results.get("command", "?"),
        "```",
        "",
        "## Results",
        "",
        results_table(results),
        "",
        f"Perplexity: {results.get('eval_description', 'held-out windows')}; dense perplexity "
        f"{_fmt(dense.get('ppl'), '.2f')}. Retention = pruned score / dense score per task "
        f"({results.get('knowledge_description', 'pg_knowledge tasks')}). Sparsity: measured zeros over all "
        "prunable linears. Steps and rollbacks: env steps taken and steps rejected by AutoRollback.",
        *agent_notes(results),
    ]
    if plots:
        parts += ["", "## Per-unit sparsity", "", f"![per-unit sparsity]({SPARSITY_PLOT})",
                  "", "## Perplexity over steps", "", f"![perplexity over steps]({TRACE_PLOT})"]
    return "\n".join(parts) + "\n"


def agent_notes(results: Mapping[str, Any]) -> list[str]:
    """One line per LLM policy: requests, fallbacks, pacing top-ups (how much of its pruning was its own)."""
    lines = []
    for name, row in results["policies"].items():
        totals = row.get("totals") or {}
        if "requests" not in totals:
            continue
        lines.append(f"\n{name}: {int(totals.get('requests', 0))} requests, {int(totals.get('answer_retries', 0))} "
                     f"answer retries, {int(totals.get('fallbacks', 0))} fallback steps, "
                     f"{int(totals.get('topped_up_levels', 0))} levels added by pacing, "
                     f"{row.get('tokens', 0)} tokens, {totals.get('latency_s', 0):.0f} s waiting for the LLM.")
    return lines


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.md`` and its two PNG plots into ``out_dir``; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_unit_sparsity(results, out / SPARSITY_PLOT)
    plot_ppl_over_steps(results, out / TRACE_PLOT)
    path = out / "report.md"
    path.write_text(render_report(results))
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
