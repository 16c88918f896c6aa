"""The summary of one ``scripts/gpu_check.sh`` pass: parts, goals, tables; ``summary.md`` and ``summary.json``.

    python scripts/gpu_check_report.py --work WORK --out OUT --mode gpu|dry-run --shape qwen3-4b --budget 330

Reads what the parts left in ``WORK`` (``parts.tsv``, the benchmarks' ``--json-out`` files, pytest's JUnit XML,
the compare run's ``results.json``; in the dry run the module lists that a ``sitecustomize`` wrote for every
Python process), writes ``OUT/summary.md`` and ``OUT/summary.json``, prints the summary and exits 0 only if
every part passed (a part skipped for want of time fails the pass; and, in the dry run, every imported distribution is on the GPU image or carried
as a wheel, and what travels fits the device tool's 64 MiB). Goals are measurements, not failures: a goal not
met is reported as such and does not change the exit status.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GiB, MiB = 2**30, 2**20
TRAVEL_LIMIT = 64 * MiB  # what the device tool sends: the working tree plus the carried paths
# Issue 15's goals on the H200, Qwen3-4B shape, bf16.
WANDA_MAX_S, SPARSEGPT_MAX_S, CACHED_STEP_MAX_S, PEAK_MAX_RATIO = 60.0, 300.0, 1.0, 1.5
CALIB_TOKENS = 128 * 2048
PROJECT_DISTS = {"prune-gym"}  # the repository itself travels as source
OWN_MODULES = {"prune_env", "policies", "harness_tasks", "__main__", "conftest", "tests", "scripts"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=("gpu", "dry-run"), required=True)
    p.add_argument("--shape", required=True)
    p.add_argument("--budget", type=float, default=None)
    p.add_argument("--seconds", type=float, default=None, help="wall seconds of the whole pass so far")
    return p.parse_args(argv)


def normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def read_list(path: Path) -> list[str]:
    """Non-comment lines of a list file (``name`` or ``name==version``)."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def read_parts(work: Path) -> list[dict[str, Any]]:
    path = work / "parts.tsv"
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


# ------------------------------------------------------------------------------------------------ parts
def junit_counts(path: Path) -> dict[str, Any] | None:
    """Counts and failing test ids of pytest's JUnit XML."""
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    counts["failed"] = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
                        if case.find("failure") is not None or case.find("error") is not None]
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def check_part(part: dict[str, Any], work: Path, mode: str) -> str | None:
    """Why a part that exited 0 still failed (missing or bad output), or None when it is fine."""
    name = part["part"]
    if name == "tests":
        counts = junit_counts(work / "tests.xml")
        if counts is None:
            return "no JUnit XML"
        if counts["failures"] or counts["errors"] or counts["passed"] == 0:
            return f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors"
        if mode == "gpu" and counts["skipped"]:
            return f"{counts['skipped']} cuda tests were skipped on the GPU machine"
    elif name == "env" and read_json(work / "bench_env.json") is None:
        return "bench_env.py wrote no JSON"
    elif name.startswith("kernels-"):
        data = read_json(work / f"{name.replace('-', '_')}.json")
        if not data or not data.get("rows"):
            return "bench_kernels.py wrote no rows"
    elif name == "compare":
        results = read_json(work / "compare" / "results.json")
        if results is None:
            return "no results.json"
        errors = {p: r["error"] for p, r in results.get("policies", {}).items() if r.get("error")}
        if errors:
            return "; ".join(f"{p}: {e}" for p, e in errors.items())
        if len(results.get("policies", {})) < 2:
            return f"only {len(results.get('policies', {}))} policies finished"
    return None


def judge_parts(parts: list[dict[str, Any]], work: Path, mode: str) -> list[dict[str, Any]]:
    for part in parts:
        part["ok"] = part["status"] == "passed"
        part["problem"] = check_part(part, work, mode) if part["ok"] else None
        if part["status"] == "skipped":
            part["problem"] = "not run: the budget was spent (rerun it with --parts)"
        if part["problem"]:
            part["ok"], part["status"] = False, "failed"
    return parts


# ------------------------------------------------------------------------------------------------ goals
def _verdict(value: float | None, limit: float, mode: str) -> str:
    if value is None:
        return "not measured"
    if mode != "gpu":
        return "n/a (dry run)"
    return "met" if value <= limit else "NOT met"


def kernel_goal(work: Path, parts: dict[str, dict], method: str, limit: float, mode: str) -> dict[str, Any]:
    name = f"kernels-{method}"
    data = read_json(work / f"kernels_{method}.json")
    label = f"sequential {method} prune, 128 x 2048 calibration tokens"
    if data and data.get("rows"):
        seconds = float(data["rows"][0]["seconds"])
        tokens = data["meta"]["calib_tokens"]
        measured = f"{seconds:.1f} s" + ("" if tokens == CALIB_TOKENS else f" ({tokens} calibration tokens)")
        return {"goal": label, "measured": measured, "value": seconds, "target": f"<= {limit:.0f} s",
                "verdict": _verdict(seconds, limit, mode)}
    part = parts.get(name)
    if part and part["status"] == "timed-out":
        stopped = float(part["limit"])
        verdict = "NOT met" if mode == "gpu" and stopped >= limit else "unknown: stopped early, rerun this part alone"
        return {"goal": label, "measured": f"> {stopped:.0f} s (stopped at its limit)", "value": None,
                "target": f"<= {limit:.0f} s", "verdict": verdict}
    return {"goal": label, "measured": "not run" if part is None else part["status"], "value": None,
            "target": f"<= {limit:.0f} s", "verdict": "not measured"}


def env_goals(work: Path, mode: str) -> list[dict[str, Any]]:
    data = read_json(work / "bench_env.json")
    rows = data["rows"] if data else None
    step = rows["step_cached_s"] if rows else None
    ratio = rows["peak_bytes"] / (rows["model_bytes"] + rows["cache_bytes"]) if rows and rows.get("peak_bytes") else None
    peak_kind = (rows or {}).get("memory_kind", "cuda")
    windows = f"{rows['reward_windows']} x {rows['seqlen']}" if rows and rows.get("reward_windows") else "8 x 2048"
    goals = [
        {"goal": f"cached env step ({windows} validation tokens, Wanda)",
         "measured": f"{step:.3f} s" if step is not None else "not measured", "value": step,
         "target": f"<= {CACHED_STEP_MAX_S:.1f} s", "verdict": _verdict(step, CACHED_STEP_MAX_S, mode)},
        {"goal": "peak GPU memory while stepping / (bf16 model + cached activations), Wanda inside the env"
                 + ("" if peak_kind == "cuda" else " (dry run: peak RSS of the memory child)"),
         "measured": (f"{ratio:.2f}x ({rows['peak_bytes'] / GiB:.2f} GiB over {rows['model_bytes'] / GiB:.2f} + "
                      f"{rows['cache_bytes'] / GiB:.2f} GiB)") if ratio is not None else "not measured",
         "value": ratio, "target": f"<= {PEAK_MAX_RATIO:.1f}x", "verdict": _verdict(ratio, PEAK_MAX_RATIO, mode)},
    ]
    return goals


# ------------------------------------------------------------------------------------------------ tables
def compare_table(results: dict[str, Any] | None) -> str:
    if not results:
        return "(no results)"

    def num(value: Any, fmt: str) -> str:
        return format(value, fmt) if isinstance(value, (int, float)) else ""

    dense = results.get("dense", {})
    lines = [f"Dense test perplexity {num(dense.get('ppl'), '.3f')} (random weights: the numbers only show the "
             "runs finished).", "",
             "| policy | test ppl | validation ppl | sparsity | steps | evaluations | finalize (s) | wall (s) | error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.get("policies", {}).items():
        lines.append(f"| {name} | {num(r.get('ppl'), '.3f')} | {num(r.get('validation_ppl'), '.3f')} | "
                     f"{num(r.get('sparsity'), '.4f')} | {r.get('steps', '')} | {r.get('evaluations', '')} | "
                     f"{num(r.get('finalize_seconds'), '.1f')} | {num(r.get('wall_seconds'), '.1f')} | "
                     f"{r.get('error') or ''} |")
    return "\n".join(lines)


def tests_text(counts: dict[str, Any] | None) -> str:
    if counts is None:
        return "(no JUnit XML: the tests part did not run or crashed)"
    text = (f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
            f"{counts['skipped']} skipped")
    return text + "".join(f"\n- FAILED {name}" for name in counts["failed"])


# ------------------------------------------------------------------------------------------------ dry-run checks
def _own(module: str) -> bool:
    """A module of the repository (its packages, a script run as __main__, a test module or conftest)."""
    return module in OWN_MODULES or module.startswith("test_")


def audit_imports(work: Path) -> dict[str, Any] | None:
    """Distributions that the project's code and the carried wheels' code imported in the checked processes,
    each: on the GPU image, carried as a wheel, or missing. What other libraries import in turn is left out:
    the image's packages come with their own dependencies (and locally installed versions differ)."""
    files = sorted((work / "audit" / "modules").glob("*.txt"))
    if not files:
        return None
    pairs: set[tuple[str, str]] = set()
    for f in files:  # first line: "# argv" of the process, then "importer imported" per line
        pairs.update(tuple(line.split()) for line in f.read_text().splitlines()[1:] if len(line.split()) == 2)
    stdlib = set(sys.stdlib_module_names)
    owners = {m: {normalize(d) for d in ds} for m, ds in importlib.metadata.packages_distributions().items()}
    device = {normalize(n) for n in read_list(ROOT / "scripts" / "gpu_device_packages.txt")}
    wheels = {normalize(pin.partition("==")[0]) for pin in read_list(ROOT / "scripts" / "gpu_wheels.txt")}
    carried_modules = {m for m, ds in owners.items() if ds & wheels}
    project = {normalize(d) for d in PROJECT_DISTS}
    found: dict[str, dict[str, Any]] = {}
    for importer, module in sorted(pairs):
        if not (_own(importer) or importer in carried_modules) or module in stdlib or _own(module):
            continue
        dists = owners.get(module, set()) - project
        if not dists:
            continue  # builtins and extension modules of the interpreter
        where = "image" if dists & device else "wheel" if dists & wheels else "MISSING"
        name = sorted(dists & device or dists & wheels or dists)[0]
        entry = found.setdefault(name, {"where": where, "modules": set(), "importers": set()})
        entry["modules"].add(module)
        entry["importers"].add(importer)
    for entry in found.values():
        entry["modules"], entry["importers"] = sorted(entry["modules"]), sorted(entry["importers"])
    missing = sorted(d for d, v in found.items() if v["where"] == "MISSING")
    return {"processes": len(files), "distributions": found, "missing": missing}


def wheel_files_check() -> dict[str, Any]:
    """Whether out/gpu_wheels holds exactly the pinned wheels (it is made by scripts/gpu_wheels.sh)."""
    folder = ROOT / "out" / "gpu_wheels"
    pins = read_list(ROOT / "scripts" / "gpu_wheels.txt")
    files = sorted(p.name for p in folder.glob("*.whl")) if folder.is_dir() else []
    if not files:
        return {"ok": None, "text": "out/gpu_wheels is empty here: run `bash scripts/gpu_wheels.sh` before the device "
                                    "call (and carry out/gpu_wheels)", "bytes": 0}
    wanted = {(normalize(p.partition("==")[0]).replace("-", "_"), p.partition("==")[2]) for p in pins}
    have = {(normalize(f.split("-")[0]).replace("-", "_"), f.split("-")[1]) for f in files}
    size = sum(p.stat().st_size for p in folder.glob("*.whl"))
    ok = wanted == have
    text = (f"{len(files)} wheels, {size / MiB:.1f} MiB, as pinned" if ok
            else f"out/gpu_wheels differs from scripts/gpu_wheels.txt: has {sorted(have)}, wants {sorted(wanted)}; "
                 "re-run bash scripts/gpu_wheels.sh")
    return {"ok": ok, "text": text, "bytes": size}


def travel_bytes() -> int | None:
    """Bytes of what the device tool sends without carry: tracked and untracked-not-ignored files."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                                capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file())


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    from policies.app.benchdoc import machine_description

    parts = judge_parts(read_parts(work), work, args.mode)
    by_name = {p["part"]: p for p in parts}
    goals = [kernel_goal(work, by_name, "wanda", WANDA_MAX_S, args.mode),
             kernel_goal(work, by_name, "sparsegpt", SPARSEGPT_MAX_S, args.mode), *env_goals(work, args.mode)]
    env = read_json(work / "bench_env.json")
    kernels = {m: read_json(work / f"kernels_{m}.json") for m in ("wanda", "sparsegpt")}
    results = read_json(work / "compare" / "results.json")
    tests = junit_counts(work / "tests.xml")
    summary: dict[str, Any] = {
        "mode": args.mode, "shape": args.shape, "machine": machine_description(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "budget_s": args.budget, "seconds": args.seconds, "parts": parts, "goals": goals, "tests": tests,
        "bench_env": env["rows"] if env else None,
        "kernels": {m: {"meta": k["meta"], "rows": k["rows"]} for m, k in kernels.items() if k},
        "compare": results and {"dense": results.get("dense"), "policies": {
            n: {k: v for k, v in r.items() if k not in ("trace", "sparsity_map", "totals")}
            for n, r in results.get("policies", {}).items()}},
    }
    ok = bool(parts) and all(p["ok"] for p in parts)
    md = [f"# Device check: {args.mode}, random:{args.shape}", "",
          f"Machine: {summary['machine']}  ",
          f"Date: {summary['date']}; the pass took {args.seconds or 0:.0f} s of a {args.budget or 0:.0f} s budget", "",
          "## Parts", "", "| part | status | seconds | limit (s) | problem |", "|---|---|---|---|---|"]
    md += [f"| {p['part']} | {p['status']} | {p['seconds']} | {p['limit']} | {p.get('problem') or ''} |" for p in parts]
    md += ["", "## Goals (issue 15: H200, Qwen3-4B shape, bf16)", "", "| goal | measured | target | verdict |",
           "|---|---|---|---|"]
    md += [f"| {g['goal']} | {g['measured']} | {g['target']} | {g['verdict']} |" for g in goals]
    if env:
        md += ["", f"Reported apart: SparseGPT's in-env Hessians for this shape would take "
                   f"{env['rows']['hessian_bytes'] / GiB:.2f} GiB (fp32 in x in per prunable linear, from the shapes)."]
    md += ["", "## Tests (`-m cuda`, tests/test_cuda.py)", "", tests_text(tests)]
    md += ["", "## PruningEnv (scripts/bench_env.py)", "", env["table"] if env else "(no result)"]
    for method, data in kernels.items():
        md += ["", f"## {method} kernel (scripts/bench_kernels.py)", ""]
        md += [f"Model: `{data['meta']['source']}`; {data['meta']['calib_samples']} x {data['meta']['seqlen']} "
               f"random calibration ids.", "", data["table"]] if data else ["(no result)"]
    md += ["", "## prune-gym compare --tasks none", "", compare_table(results)]
    if args.mode == "dry-run":
        audit, wheels, travel = audit_imports(work), wheel_files_check(), travel_bytes()
        summary.update(imports=audit, wheels=wheels, travel_bytes=travel)
        md += ["", "## Dry-run checks of what the GPU machine will need", ""]
        if audit is None:
            md.append("- imports: not recorded")
            ok = False
        else:
            carried = sorted(d for d, v in audit["distributions"].items() if v["where"] == "wheel")
            md.append(f"- imports: {len(audit['distributions'])} distributions over {audit['processes']} processes; "
                      f"carried as wheels: {', '.join(carried) or 'none'}; missing on the GPU image and not carried: "
                      f"{', '.join(audit['missing']) or 'none'}")
            ok = ok and not audit["missing"]
            (out / "imports.txt").write_text("".join(
                f"{d}\t{v['where']}\tmodules: {' '.join(v['modules'])}\timported by: {' '.join(v['importers'])}\n"
                for d, v in sorted(audit["distributions"].items())))
        md.append(f"- wheels: {wheels['text']}")
        ok = ok and wheels["ok"] is not False
        if travel is not None:
            total = travel + wheels["bytes"]
            md.append(f"- what travels: {travel / MiB:.1f} MiB of files + {wheels['bytes'] / MiB:.1f} MiB of wheels = "
                      f"{total / MiB:.1f} MiB of the {TRAVEL_LIMIT // MiB} MiB limit")
            ok = ok and total <= TRAVEL_LIMIT
    md += ["", f"Result: {'PASSED' if ok else 'FAILED'}"]
    summary["ok"] = ok
    text = "\n".join(md) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
