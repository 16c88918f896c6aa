"""The comparison report: a Markdown table and two PNG plots from a ``results.json`` dict (no model, no env).

``results`` (written by :mod:`policies.app.compare_job`)::

    {"command": str, "versions": {...}, "machine": str, "date": str, "model": str, "target": float,
     "finalize": str, "budgets": {search: {"options": {...}, "source": str}},
     "dense": {"ppl": float, "ood_ppl": float | None, "knowledge": {task: score}},
     "policies": {name: row}}

A row (``status: ok``) has at least ``policy``, ``ppl`` (test windows), ``ood_ppl``, ``dense_ppl``,
``dense_ood_ppl``, ``sparsity`` (measured), ``evaluations``, ``tokens_evaluated``, ``finalize``,
``validation_ppl``, ``status``, ``error`` (None), plus ``ppl_ratio``, ``steps``, ``rollbacks``,
``wall_seconds``, ``tokens``, ``knowledge``, ``retention``, ``sparsity_map``, ``trace``; an agent row also
``own_share``, ``topped_up_share``, ``fallback_share``, ``requests``, ``llm_wait_s``; a search row
``budget_source``, an evolutionary search's also ``generations`` and ``search_curve``. A failed row is ``{"policy", "status": "failed", "error", "ppl": None}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

SPARSITY_PLOT = "unit_sparsity.png"
TRACE_PLOT = "ppl_over_steps.png"
SEARCH_PLOT = "search_progress.png"
BELOW_TARGET = 0.005   # a measured sparsity this far under the target is flagged
MIN_OWN_SHARE = 0.5    # an agent row whose own choices made less than this share of its pruning is flagged
AGENT_KEYS = ("own_share", "topped_up_share", "fallback_share")


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    if isinstance(value, int) and not isinstance(value, bool) and spec == ",":
        return format(value, ",")
    return str(value)


def is_failed(row: Mapping[str, Any]) -> bool:
    """A failed row (or an old-style row that only has an error)."""
    return row.get("status") == "failed" or (row.get("status") is None and bool(row.get("error")))


def is_agent_row(row: Mapping[str, Any]) -> bool:
    return any(key in row for key in AGENT_KEYS)


def knowledge_tasks(results: Mapping[str, Any]) -> list[str]:
    """Task names that have a retention value for at least one policy, in first-seen order."""
    tasks: list[str] = []
    for row in results["policies"].values():
        for task in row.get("retention", {}) or {}:
            if task not in tasks:
                tasks.append(task)
    return tasks


def row_flags(row: Mapping[str, Any], target: float) -> list[str]:
    """Why a row's numbers are not comparable at face value: below the target sparsity; an agent whose own
    choices made less than half of its pruning (or whose shares are unknown)."""
    flags = []
    if row.get("sparsity") is not None and row["sparsity"] < target - BELOW_TARGET:
        flags.append("below target")
    if is_agent_row(row):
        own = row.get("own_share")
        if own is None:
            flags.append("own share unknown")
        elif own < MIN_OWN_SHARE:
            flags.append(f"own share {own:.2f} < {MIN_OWN_SHARE}")
    return flags


def results_table(results: Mapping[str, Any]) -> str:
    """One row per policy: test / ood / validation perplexity, ratio to dense, knowledge retention per task,
    sparsity, validation work (evaluations, tokens), finalization, cost, flags."""
    tasks = knowledge_tasks(results)
    head = ["policy", "test ppl", "x dense", "ood ppl", "validation ppl", *[f"{t} retention" for t in tasks],
            "sparsity", "evaluations", "tokens evaluated", "finalize", "steps", "rollbacks", "wall (s)",
            "agent tokens", "flags"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    dense = results.get("dense", {})
    target = results.get("target", 0)
    if dense:
        lines.append("| dense | " + " | ".join([_fmt(dense.get("ppl"), ".2f"), "1.000", _fmt(dense.get("ood_ppl"), ".2f"),
                                                 "-", *["1.000"] * len(tasks), "0.000", "-", "-", "-", "-", "-", "-",
                                                 "-", ""]) + " |")
    for name, row in results["policies"].items():
        if is_failed(row):
            cells = [name, "failed", *["-"] * (len(head) - 3), "failed (see below)"]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = [name, _fmt(row.get("ppl"), ".2f"), _fmt(row.get("ppl_ratio")), _fmt(row.get("ood_ppl"), ".2f"),
                 _fmt(row.get("validation_ppl"), ".2f"),
                 *[_fmt((row.get("retention") or {}).get(t)) for t in tasks], _fmt(row.get("sparsity")),
                 _fmt(row.get("evaluations")), _fmt(row.get("tokens_evaluated"), ","), _fmt(row.get("finalize")),
                 _fmt(row.get("steps")), _fmt(row.get("rollbacks")), _fmt(row.get("wall_seconds"), ".0f"),
                 _fmt(row.get("tokens") or None, ","), "; ".join(row_flags(row, target))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failed_notes(results: Mapping[str, Any]) -> list[str]:
    """The failed policies with their errors (the run directory keeps the traceback in ``error.txt``)."""
    failed = [(name, row) for name, row in results["policies"].items() if is_failed(row)]
    if not failed:
        return []
    lines = ["", "## Failed policies", ""]
    for name, row in failed:
        where = f" (traceback: `{row['run_dir']}/error.txt`)" if row.get("run_dir") else ""
        lines.append(f"- **{name}** failed{where}: {row.get('error')}")
    return lines


def agent_notes(results: Mapping[str, Any]) -> list[str]:
    """Per agent row, how much of its pruning was its own: the shares of the sparsity its kept steps gained that
    came from the LLM's validated answers, from pacing top-ups and from fallback actions; requests, tokens,
    time waiting for the LLM."""
    rows = [(name, row) for name, row in results["policies"].items() if not is_failed(row) and is_agent_row(row)]
    if not rows:
        return []
    lines = ["", "## Agent accounting", "",
             "| policy | own share | topped-up share | fallback share | requests | tokens | LLM wait (s) | "
             "answer retries | fallback steps |", "|" + "---|" * 9]
    for name, row in rows:
        totals = row.get("totals") or {}
        lines.append("| " + " | ".join([
            name, _fmt(row.get("own_share")), _fmt(row.get("topped_up_share")), _fmt(row.get("fallback_share")),
            _fmt(row.get("requests")), _fmt(row.get("tokens"), ","), _fmt(row.get("llm_wait_s"), ".0f"),
            str(int(totals.get("answer_retries", 0))), str(int(totals.get("fallbacks", 0)))]) + " |")
    lines += ["", f"Shares split the global sparsity the agent's kept steps gained: its own validated choices, "
                  f"levels pacing added to reach the target, fallback actions; they sum to 1. A row whose own "
                  f"share is below {MIN_OWN_SHARE} is flagged in the results table: most of its pruning was not "
                  f"the LLM's."]
    return lines


def budget_notes(results: Mapping[str, Any]) -> list[str]:
    """Where each search's budget came from (the agent's validation tokens, --budget, or the default)."""
    budgets = results.get("budgets") or {}
    lines = []
    for name, row in results["policies"].items():
        source = row.get("budget_source") or (budgets.get(name) or {}).get("source")
        if not source:
            continue
        spent = "" if is_failed(row) else (f"; it used {_fmt(row.get('tokens_evaluated'), ',')} tokens in "
                                           f"{row.get('evaluations')} evaluations")
        lines.append(f"- {name}: budget {source}{spent}.")
    if not lines:
        return []
    return ["", "## Search budgets", "",
            "Searches get the agent's budget in validation tokens evaluated (its rejected steps included); a "
            "search stops when its next evaluation would pass it.", "", *lines]


def finalize_note(results: Mapping[str, Any]) -> str:
    modes = sorted({str(row.get("finalize")) for row in results["policies"].values()
                    if not is_failed(row) and row.get("finalize")})
    explained = {"sequential": "sequential = the policy's allocation re-pruned from the dense weights block by "
                               "block with sequential calibration, as the Wanda / SparseGPT references and "
                               "`prune-gym prune --mode sequential` do",
                 "none": "none = the env's own weights (each unit re-pruned with one-shot dense statistics), "
                         "the state the policy saw"}
    parts = [explained.get(m, m) for m in modes] or ["none recorded"]
    return ("Finalization (column finalize): " + "; ".join(parts) + ". Test and ood perplexity, sparsity and "
            "retention are of the finalized model; validation ppl is what the policy saw at its last step "
            "(the env's weights on the validation windows it was rewarded on).")


def plot_unit_sparsity(results: Mapping[str, Any], path: Path) -> Path:
    """Per-unit sparsity of every policy, one line each, units in model order."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, row in results["policies"].items():
        levels = list((row.get("sparsity_map") or {}).values())
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
        trace = row.get("trace") or []
        if not trace:
            continue
        line = ax.plot([t["step"] for t in trace], [t["ppl"] for t in trace], marker=".", label=name)[0]
        rejected = [(t["step"], t.get("rejected_ppl", t["ppl"])) for t in trace if t.get("rolled_back")]
        if rejected:
            ax.scatter(*zip(*rejected), marker="x", s=60, color=line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.set_title("Validation perplexity over steps (x: rejected step, rolled back)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return _save(fig, plt, path)


def search_rows(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The rows of searches that recorded a per-generation path (``search_curve``: evo-search)."""
    return [(name, row) for name, row in results["policies"].items()
            if not is_failed(row) and row.get("search_curve")]


def plot_search_progress(results: Mapping[str, Any], path: Path) -> Path | None:
    """Each evolutionary search's parent fitness (validation) against the validation tokens it had spent."""
    rows = search_rows(results)
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, row in rows:
        curve = row["search_curve"]
        ax.plot([c["tokens_used"] for c in curve], [c["parent_fitness"] for c in curve], drawstyle="steps-post",
                marker=".", label=name)
    ax.set_xlabel("validation tokens evaluated")
    ax.set_ylabel("parent fitness (validation; kl: nats/token)")
    ax.set_yscale("log")
    ax.set_title("Search progress: the parent's validation fitness per generation")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def render_report(results: Mapping[str, Any], *, plots: bool = True) -> str:
    """The Markdown report: what was run, the table, failures, agent accounting, budgets, plots."""
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
        f"Test ppl: {results.get('eval_description', 'held-out test windows')}; dense {_fmt(dense.get('ppl'), '.2f')}. "
        f"Ood ppl: {results.get('ood_description', 'out-of-domain text')}; dense "
        f"{_fmt(dense.get('ood_ppl'), '.2f')}. Retention = pruned score / dense score per task "
        f"({results.get('knowledge_description', 'pg_knowledge tasks')}). Sparsity: measured zeros over all "
        "prunable linears. Evaluations and tokens evaluated: the validation work of the episode (every env step, "
        "rejected ones included, and every direct evaluation). Steps and rollbacks: env steps taken and steps "
        "rejected by AutoRollback. Flags: below target (sparsity more than half a point under it); an agent's "
        f"own share below {MIN_OWN_SHARE}.",
        "",
        finalize_note(results),
        *failed_notes(results),
        *agent_notes(results),
        *budget_notes(results),
    ]
    if plots:
        parts += ["", "## Per-unit sparsity", "", f"![per-unit sparsity]({SPARSITY_PLOT})",
                  "", "## Perplexity over steps", "", f"![perplexity over steps]({TRACE_PLOT})"]
        if search_rows(results):
            parts += ["", "## Search progress", "",
                      "The parent's validation fitness after each generation, against the validation tokens spent "
                      "(test perplexity along the path: `scripts/bench_policies.py`).", "",
                      f"![search progress]({SEARCH_PLOT})"]
    return "\n".join(parts) + "\n"


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.md`` and its two PNG plots into ``out_dir``; return the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_unit_sparsity(results, out / SPARSITY_PLOT)
    plot_ppl_over_steps(results, out / TRACE_PLOT)
    plot_search_progress(results, out / SEARCH_PLOT)
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
