"""scripts/gpu_check.sh: its CPU dry run passes end to end (so the device check is known to work before a GPU is
spent on it), and its report fails a pass whose parts failed, timed out or ran their tests skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check_report  # noqa: E402

PARTS = ["tests", "env", "kernels-wanda", "compare", "kernels-sparsegpt"]


@pytest.mark.slow
def test_dry_run_passes_and_writes_its_tables(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["mode"] == "dry-run" and summary["shape"] == "qwen3-tiny"
    assert [p["part"] for p in summary["parts"]] == PARTS
    assert all(p["status"] == "passed" for p in summary["parts"]), summary["parts"]
    assert summary["tests"]["passed"] >= 6 and summary["tests"]["skipped"] == 0  # run on the CPU in the dry run
    assert {g["verdict"] for g in summary["goals"]} == {"n/a (dry run)"}  # all four measured, none judged
    assert summary["kernels"]["wanda"]["rows"][0]["sparsity"] == pytest.approx(0.5)
    assert {"uniform-wanda", "owl-wanda"} <= set(summary["compare"]["policies"])
    assert summary["imports"]["missing"] == []
    assert {"gymnasium", "gensim"} <= {d for d, v in summary["imports"]["distributions"].items()
                                       if v["where"] == "wheel"}
    text = (out / "summary.md").read_text()
    assert "## Goals" in text and "| step, block cache on" in text and "Result: PASSED" in text
    assert text in done.stdout  # the tables are printed too
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"summary.md", "summary.json", "log.txt", "tests.xml", "compare_results.json"} <= set(files)


def _work(tmp_path: Path, statuses: dict[str, tuple[str, int]]) -> Path:
    """A WORK folder as gpu_check.sh leaves it, with the given (status, rc) per part and no outputs."""
    work = tmp_path / "work"
    work.mkdir()
    lines = ["part\tstatus\trc\tseconds\tlimit\tcommand"]
    lines += [f"{part}\t{status}\t{rc}\t5\t60\tpython x" for part, (status, rc) in statuses.items()]
    (work / "parts.tsv").write_text("\n".join(lines) + "\n")
    return work


def _junit(work: Path, passed: int, skipped: int) -> None:
    cases = "".join(f'<testcase classname="test_cuda" name="t{i}"/>' for i in range(passed))
    cases += "".join(f'<testcase classname="test_cuda" name="s{i}"><skipped/></testcase>' for i in range(skipped))
    (work / "tests.xml").write_text(f'<testsuites><testsuite tests="{passed + skipped}" failures="0" errors="0" '
                                    f'skipped="{skipped}">{cases}</testsuite></testsuites>')


def _report(work: Path, out: Path, mode: str = "gpu") -> tuple[int, dict]:
    rc = gpu_check_report.main(["--work", str(work), "--out", str(out), "--mode", mode, "--shape", "qwen3-4b",
                                "--budget", "330", "--seconds", "100"])
    return rc, json.loads((out / "summary.json").read_text())


def test_report_fails_a_failed_part_and_reports_a_timed_out_kernel(tmp_path):
    work = _work(tmp_path, {"tests": ("passed", 0), "compare": ("skipped", 0), "kernels-sparsegpt": ("timed-out", 124)})
    _junit(work, passed=6, skipped=0)
    rc, summary = _report(work, tmp_path / "out")
    assert rc == 1 and not summary["ok"]
    sparsegpt = next(g for g in summary["goals"] if "sparsegpt" in g["goal"])
    assert sparsegpt["measured"] == "> 60 s (stopped at its limit)"
    assert sparsegpt["verdict"].startswith("unknown")  # stopped before its 300 s target: not judged
    assert {p["part"]: p["ok"] for p in summary["parts"]} == {"tests": True, "compare": False,
                                                                "kernels-sparsegpt": False}
    assert "budget was spent" in summary["parts"][1]["problem"]  # a part left out for want of time fails too


def test_report_fails_cuda_tests_skipped_on_the_gpu_machine(tmp_path):
    work = _work(tmp_path, {"tests": ("passed", 0)})
    _junit(work, passed=0, skipped=6)
    rc, summary = _report(work, tmp_path / "out")
    assert rc == 1 and summary["parts"][0]["status"] == "failed"
    assert "skipped" in summary["parts"][0]["problem"] or "0 passed" in summary["parts"][0]["problem"]


def test_report_judges_the_goals_on_the_gpu(tmp_path):
    work = _work(tmp_path, {"kernels-wanda": ("passed", 0), "env": ("passed", 0)})
    (work / "kernels_wanda.json").write_text(json.dumps({
        "meta": {"source": "random:qwen3-4b", "calib_samples": 128, "seqlen": 2048, "calib_tokens": 128 * 2048},
        "rows": [{"method": "wanda", "seconds": 42.0}], "table": "| wanda |"}))
    rows = {"step_cached_s": 1.2, "peak_bytes": 12 * 2**30, "model_bytes": 8 * 2**30, "cache_bytes": 2 * 2**30,
            "memory_kind": "cuda", "reward_windows": 8, "seqlen": 2048, "hessian_bytes": 20 * 2**30}
    (work / "bench_env.json").write_text(json.dumps({"rows": rows, "table": "| step |"}))
    rc, summary = _report(work, tmp_path / "out")
    assert rc == 0 and summary["ok"]
    verdicts = {g["goal"].split(",")[0]: g["verdict"] for g in summary["goals"]}
    assert verdicts["sequential wanda prune"] == "met"
    assert verdicts["sequential sparsegpt prune"] == "not measured"
    assert verdicts["cached env step (8 x 2048 validation tokens"] == "NOT met"  # 1.2 s > 1.0 s
    peak = next(g for g in summary["goals"] if g["goal"].startswith("peak GPU memory"))
    assert peak["verdict"] == "met" and peak["measured"].startswith("1.20x")  # 12 / (8 + 2)
    assert "20.00 GiB" in (tmp_path / "out" / "summary.md").read_text()  # SparseGPT's Hessians, apart
