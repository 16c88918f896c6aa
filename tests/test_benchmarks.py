"""The benchmark scripts run end to end on a tiny local model (their figures are not checked: no timing asserts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args, "--no-write"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_bench_env_times_steps_and_measures_memory_in_a_child(tiny_llm4_dir):
    out = _run("bench_env.py", "--model", str(tiny_llm4_dir), "--every", "2", "--rollbacks", "2", "--repeats", "2",
               "--calib-samples", "2", "--reward-eval-samples", "2", "--batch-size", "2", "--seqlen", "32")
    assert "| cached / uncached (median of the passes' ratios: " in out
    assert "peak RSS above start while stepping (memory child)" in out
    assert "units 0, 2, ... every 2" in out  # 4 blocks, k = 2: offset 0


def test_bench_kernels_reports_every_method(tiny_llm_dir):
    out = _run("bench_kernels.py", "--model", str(tiny_llm_dir), "--targets", "0.5,2:4", "--repeats", "1",
               "--calib-samples", "2", "--eval-samples", "2", "--seqlen", "32")
    for method in ("magnitude", "wanda", "sparsegpt"):
        assert f"| 0.5 | {method} |" in out and f"| 2:4 | {method} |" in out


def test_bench_policies_compares_and_rebuilds_the_evo_search_path(tiny_llm4_dir, tmp_path):
    out = _run("bench_policies.py", "--model", str(tiny_llm4_dir), "--policies", "uniform-wanda",
               "evo-search:offspring=3:survivors=2:windows=1:budget_tokens=1500", "--runs-dir", str(tmp_path / "runs"),
               "--plot-dir", str(tmp_path), "--env", "seqlen=32", "--env", "calib_samples=2",
               "--env", "reward_eval_samples=2", "--env", "final_eval_samples=2", "--env", "gradient_samples=0",
               "--env", "ood_eval_samples=2")
    assert "| uniform-wanda |" in out and "| evo-search:offspring=3" in out and "| 1.000 |" in out
    assert "evo-search:offspring=3:survivors=2:windows=1:budget_tokens=1500 path (test ppl of recorded parents" in out
    assert (tmp_path / "bench_evo_50.png").is_file() and (tmp_path / "runs" / "evo_curve.json").is_file()


def test_bench_kl_times_both_forms_and_finds_them_bitwise_equal(tiny_llm4_dir):
    out = _run("bench_kl.py", "--model", str(tiny_llm4_dir), "--seqlen", "16", "--batch", "1", "2", "--repeats", "2")
    assert "| 1 |" in out and "| 2 |" in out
    assert out.count("| yes |") == 2 and "| NO |" not in out


@pytest.mark.slow
def test_bench_agent_runs_the_real_local_agent_and_writes_its_table(tiny_llm4_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, str(ROOT / "scripts" / "bench_agent.py"), "--runs-dir", str(tmp_path / "runs")]
    run = subprocess.run([*base, "--model", str(tiny_llm4_dir), "--max-steps", "3", "--seqlen", "32",
                          "--calib-samples", "2", "--reward-eval-samples", "2", "--final-eval-samples", "2",
                          "--gradient-samples", "0", "--bar", "off", "--n-threads", "1"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    row = results["pace-on_memory-on_bar-off"]
    assert row["requests"] >= 1 and row["tokens"] > 0 and row["steps"] <= 3 and row["bar_rejected"] is False
    doc = tmp_path / "BENCHMARKS.md"
    done = subprocess.run([*base, "--write", "--doc", str(doc)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    text = doc.read_text()
    assert "<!-- bench_agent:start -->" in text and "| pace-on_memory-on_bar-off | on | on | off | seqlen=32" in text
