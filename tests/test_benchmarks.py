"""The benchmark scripts run end to end on a tiny local model (their figures are not checked: no timing asserts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
