"""The main job end to end on a tiny model: run, resume after a kill, compare + report, eval, W&B, Ray, bad flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from policies.app.cli import main
from policies.app.compare_job import CompareConfig, run_compare
from policies.app.run_job import FINAL, MASKS, RunConfig, rebuild_run_env, run_policy

SMALL = ["--calib-samples", "4", "--reward-eval-samples", "2", "--final-eval-samples", "2", "--seqlen", "64",
         "--no-progress"]
SMALL_ENV = {"calib_samples": 4, "reward_eval_samples": 2, "final_eval_samples": 2, "seqlen": 64}
# Measured sparsity counts zeros: on the tiny model's 64-wide rows, per-row rounding of a unit's level costs up to
# 1/64 of that unit, so measured sparsity may sit up to ~1.5 points under the planned target (on SmolLM2: < 0.2).
TINY_TOLERANCE = 0.016


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_writes_the_run_directory_and_one_json_object(tiny_llm4_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = _cli(capsys, "run", "--policy", "uniform-wanda", "--model", str(tiny_llm4_dir), "--target", "0.3",
                           "--out", str(out), "--json", *SMALL)
    assert code == 0
    result = json.loads(stdout)
    for key in ("ppl", "dense_ppl", "sparsity", "steps", "rollbacks"):
        assert key in result
    assert abs(result["sparsity"] - 0.3) <= 0.005
    assert {p.name for p in out.iterdir()} >= {"config.json", "steps.jsonl", "masks.safetensors", "sparsity_map.json",
                                               "final.json"}
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["kind"] for s in steps][0] == "start" and steps[-1]["kind"] == "end"
    assert sum(s["kind"] == "step" for s in steps) == result["steps"]
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["policy"] == "uniform-wanda" and config["env"]["target_sparsity"] == 0.3


def test_resume_after_a_killed_run_gives_the_uninterrupted_result(tiny_llm4_dir, tmp_path):
    """A real SIGKILL mid-episode; --resume replays the finished steps and ends exactly where a clean run ends."""
    args = ["run", "--policy", "greedy-sensitivity", "--model", str(tiny_llm4_dir), "--target", "0.4", "--step-size",
            "0.02", "--n-levels", "2", "--max-steps", "60", *SMALL]
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "policies.app.cli", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    steps_file, deadline = killed / "steps.jsonl", time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if steps_file.exists() and steps_file.read_text().count('"kind": "step"') >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    assert not (killed / "final.json").exists()
    done_before = steps_file.read_text().count('"kind": "step"')

    assert main(["run", "--resume", str(killed), "--no-progress"]) == 0
    clean = tmp_path / "clean"
    assert main([*args, "--out", str(clean)]) == 0

    resumed, reference = (json.loads((d / "final.json").read_text()) for d in (killed, clean))
    assert resumed["sparsity_map"] == reference["sparsity_map"]
    assert resumed["ppl"] == reference["ppl"] and resumed["steps"] == reference["steps"]
    assert (killed / MASKS).read_bytes() == (clean / MASKS).read_bytes()
    lines = [json.loads(line) for line in steps_file.read_text().splitlines()]
    replayed = [s for s in lines if s["kind"] == "step" and s.get("replayed")]
    assert len(replayed) == done_before  # finished steps are kept (replayed, not asked again)
    assert list((killed).glob("steps.resumed-*.jsonl"))  # the interrupted log is kept too


def test_compare_writes_report_results_and_plots(tiny_llm4_dir, tmp_path):
    config = CompareConfig(policies=["uniform-wanda", "owl"], model=str(tiny_llm4_dir), target=0.3, env=SMALL_ENV,
                           tasks=["pg_factual_mc"], eval_limit=3)
    results = run_compare(config, tmp_path, progress=False, log=lambda _m: None)
    assert set(results["policies"]) == {"uniform-wanda", "owl"}
    for row in results["policies"].values():
        assert row["status"] == "ok" and row["error"] is None and abs(row["sparsity"] - 0.3) <= TINY_TOLERANCE
        assert set(row["retention"]) == {"pg_factual_mc"} and row["finalize"] == "sequential"
    assert results["dense"]["knowledge"]["pg_factual_mc"]["acc"] >= 0 and results["dense"]["ood_ppl"] > 0
    report = (tmp_path / "report.md").read_text()
    assert "| uniform-wanda |" in report and "| owl |" in report and "pg_factual_mc retention" in report
    assert "ood ppl" in report and "validation ppl" in report and "Finalization (column finalize): sequential" in report
    assert json.loads((tmp_path / "results.json").read_text())["policies"].keys() == results["policies"].keys()
    for png in ("unit_sparsity.png", "ppl_over_steps.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_rebuilds_a_run_and_checks_its_masks(tiny_llm4_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_policy(RunConfig(policy="uniform-sparsegpt", model=str(tiny_llm4_dir), target=0.3, env=SMALL_ENV), run_dir,
               progress=False, log=lambda _m: None)
    code, stdout, _ = _cli(capsys, "eval", "--run", str(run_dir), "--tasks", "pg_factual_mc_worldcapitals", "--limit",
                           "3", "--json", "--no-progress")
    assert code == 0 and "pg_factual_mc_worldcapitals" in json.loads(stdout)["scores"]

    from safetensors.torch import load_file, save_file

    masks = load_file(str(run_dir / MASKS))
    first = next(iter(masks))
    masks[first] = masks[first] ^ 1  # flip one bit of one mask
    save_file(masks, str(run_dir / MASKS))
    with pytest.raises(RuntimeError, match="different mask"):
        rebuild_run_env(run_dir, progress=False)


def test_wandb_disabled_and_offline(tiny_llm4_dir, tmp_path):
    pytest.importorskip("wandb")
    from policies.app.wandb_log import WandbSettings

    config = RunConfig(policy="uniform-wanda", model=str(tiny_llm4_dir), target=0.3, env=SMALL_ENV)
    disabled = run_policy(config, tmp_path / "disabled", progress=False, log=lambda _m: None,
                          wandb=WandbSettings(mode="disabled"))
    assert not list((tmp_path / "disabled").glob("wandb"))
    offline = run_policy(config, tmp_path / "offline", progress=False, log=lambda _m: None,
                         wandb=WandbSettings(mode="offline"))
    runs = list((tmp_path / "offline" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert disabled["ppl"] == offline["ppl"]


def test_wandb_streams_steps_while_the_episode_runs(tiny_llm4_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from policies.app import wandb_log

    seen: list[tuple[int, bool]] = []  # (step, whether final.json existed when W&B got it)
    real = wandb_log.WandbRun.log_step

    def spy(self, record):
        seen.append((record["step"], (tmp_path / "run" / FINAL).exists()))
        real(self, record)

    monkeypatch.setattr(wandb_log.WandbRun, "log_step", spy)
    config = RunConfig(policy="uniform-wanda", model=str(tiny_llm4_dir), target=0.3, env=SMALL_ENV)
    metrics = run_policy(config, tmp_path / "run", progress=False, log=lambda _m: None,
                         wandb=wandb_log.WandbSettings(mode="offline"))
    assert [step for step, _ in seen] == list(range(1, metrics["steps"] + 1))
    assert not any(finished for _, finished in seen)


def test_ray_compare_runs_each_policy_in_its_own_actor_and_searches_wait_for_the_agent(tiny_llm4_dir, tmp_path):
    pytest.importorskip("ray")
    from scripted_chat_server import ScriptedChatServer, answer

    from policies.app.ray_compare import run_compare_ray

    with ScriptedChatServer([], default=lambda body: answer({"0": 1, "1": 1, "2": 1, "3": 1})) as server:
        agent = {"base_url": server.base_url, "model": "scripted", "api_key": "test", "response_format": "json_object",
                 "timeout": 30.0}
        config = CompareConfig(policies=["random-search", "uniform-wanda", "agent"], model=str(tiny_llm4_dir),
                               target=0.3, env=SMALL_ENV, tasks=[], policy_options={"agent": agent}).validate()
        results = {"policies": {}, "dense": {}}
        run_compare_ray(config, tmp_path, results, log=lambda _m: None, num_cpus=2)
    assert list(results["policies"]) == ["random-search", "uniform-wanda", "agent"]
    for name, row in results["policies"].items():
        assert row["status"] == "ok", row
        assert abs(row["sparsity"] - 0.3) <= TINY_TOLERANCE
        assert (tmp_path / name / "final.json").is_file()
    assert results["dense"]["ppl"] > 0
    search, agent_row = results["policies"]["random-search"], results["policies"]["agent"]
    assert search["budget_tokens"] == agent_row["tokens_evaluated"] == search["tokens_evaluated"]


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--policy", "nope"], "unknown policy 'nope'"),
    (["run", "--policy", "uniform-wanda", "--target", "1.5"], "target_sparsity"),
    (["run", "--policy", "uniform-sparsegpt", "--method", "wanda"], "prunes with sparsegpt"),
    (["run"], "give --policy"),
    (["run", "--resume", "/nonexistent/run"], "no config.json"),
    (["run", "--policy", "uniform-wanda", "--rollback-threshold", "-1"], "rollback-threshold"),
    (["compare", "--policies", "uniform-wanda,uniform-wanda"], "names a policy twice"),
    (["compare", "--policies", "uniform-wanda", "--tasks", "pg_nope"], "unknown task name"),
])
def test_bad_flags_get_clear_errors(capsys, argv, message):
    code, _, err = _cli(capsys, *argv)
    assert code == 2
    assert message in err


def test_report_flags_rows_lists_failures_and_accounts_for_the_agent():
    from policies.app.report import render_report

    row = {"policy": "agent", "status": "ok", "error": None, "ppl": 40.0, "ppl_ratio": 1.5, "ood_ppl": 80.0,
           "validation_ppl": 35.0, "sparsity": 0.40, "evaluations": 12, "tokens_evaluated": 1536,
           "finalize": "sequential", "steps": 10, "rollbacks": 3, "wall_seconds": 100.0, "tokens": 1234,
           "retention": {"pg_factual_mc": 0.8}, "own_share": 0.3, "topped_up_share": 0.6, "fallback_share": 0.1,
           "requests": 11, "llm_wait_s": 50.0, "totals": {"requests": 11, "fallbacks": 1, "answer_retries": 2}}
    uniform = {k: v for k, v in row.items() if k not in ("own_share", "topped_up_share", "fallback_share",
                                                            "requests", "llm_wait_s", "totals")}
    results = {"model": "m", "target": 0.5, "dense": {"ppl": 20.0, "ood_ppl": 30.0}, "policies": {
        "agent": row, "uniform-wanda": {**uniform, "policy": "uniform-wanda", "sparsity": 0.4999, "tokens": 0},
        "random-search": {**uniform, "policy": "random-search", "sparsity": 0.5, "tokens": 0,
                          "budget_source": "the agent's: 1536 validation tokens in 12 evaluations"},
        "broken": {"policy": "broken", "status": "failed", "error": "EpisodeError: boom at http://x/v1",
                   "ppl": None, "run_dir": "runs/c/broken"}}}
    text = render_report(results, plots=False)
    assert ("| agent | 40.00 | 1.500 | 80.00 | 35.00 | 0.800 | 0.400 | 12 | 1,536 | sequential | 10 | 3 | 100 | "
            "1,234 | below target; own share 0.30 < 0.5 |") in text
    assert "| uniform-wanda | 40.00 | 1.500 | 80.00 | 35.00 | 0.800 | 0.500 | 12 | 1,536 | sequential | 10 | 3 | " \
           "100 | - |  |" in text  # within half a point of the target: not flagged
    assert "| broken | failed |" in text and "- **broken** failed (traceback: `runs/c/broken/error.txt`): " \
           "EpisodeError: boom at http://x/v1" in text
    assert "| agent | 0.300 | 0.600 | 0.100 | 11 | 1,234 | 50 | 2 | 1 |" in text
    assert "- random-search: budget the agent's: 1536 validation tokens in 12 evaluations; it used 1,536" in text
    assert "| dense | 20.00 | 1.000 | 30.00 |" in text
    unknown = {**results, "policies": {"agent": {**row, "own_share": None, "sparsity": 0.5}}}
    assert "| own share unknown |" in render_report(unknown, plots=False)


DEFAULT_SMALL = {"calib_samples": 8, "reward_eval_samples": 2, "final_eval_samples": 4, "seqlen": 64,
                 "step_size": 0.05, "n_levels": 7, "gradient_samples": 1}


@pytest.mark.slow
def test_run_and_compare_on_the_default_model(tmp_path, capsys):
    """The console commands on the packaged SmolLM2: run reaches the target; compare scores and reports."""
    code, stdout, _ = _cli(capsys, "run", "--policy", "greedy-sensitivity", "--target", "0.5", "--out",
                           str(tmp_path / "run"), "--json", "--calib-samples", "8", "--reward-eval-samples", "2",
                           "--final-eval-samples", "4", "--seqlen", "64", "--step-size", "0.05", "--n-levels", "7",
                           "--no-progress")
    assert code == 0
    result = json.loads(stdout)
    assert abs(result["sparsity"] - 0.5) <= 0.005 and result["ppl"] > result["dense_ppl"]

    config = CompareConfig(policies=["uniform-wanda", "owl"], target=0.5, env=DEFAULT_SMALL,
                           tasks=["pg_factual_mc_worldcapitals"], eval_limit=10)
    results = run_compare(config, tmp_path / "compare", progress=False, log=lambda _m: None)
    dense_acc = results["dense"]["knowledge"]["pg_factual_mc_worldcapitals"]["acc"]
    assert dense_acc >= 0.7  # SmolLM2 knows its capitals (0.95 on 20 questions); chance is 0.25
    for row in results["policies"].values():
        assert abs(row["sparsity"] - 0.5) <= 0.005 and row["ppl_ratio"] > 1.2
        assert 0 <= row["retention"]["pg_factual_mc_worldcapitals"] <= 1.2
    assert "| owl |" in (tmp_path / "compare" / "report.md").read_text()
