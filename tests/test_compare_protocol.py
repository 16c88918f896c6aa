"""The comparison protocol of issues 11 and 12, end to end on the tiny 4-block Llama: a failed agent is a failed
row and a non-zero exit; searches get the agent's budget in validation tokens (or ``--budget``); the final
models are finalized with sequential calibration (``uniform-sparsegpt`` then equals ``prune-gym prune
--method sparsegpt --mode sequential`` bitwise); every row of ``results.json`` has the protocol's fields."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from scripted_chat_server import ScriptedChatServer, answer

from policies.app.cli import main
from policies.app.compare_job import CompareConfig, run_compare
from policies.app.run_job import RunConfig, build_env, run_policy

SMALL_ENV = {"calib_samples": 4, "reward_eval_samples": 2, "final_eval_samples": 2, "ood_eval_samples": 2,
             "seqlen": 64}
SMALL = ["--calib-samples", "4", "--reward-eval-samples", "2", "--final-eval-samples", "2", "--seqlen", "64",
         "--no-progress"]
ROW_FIELDS = {"policy", "ppl", "ood_ppl", "dense_ppl", "dense_ood_ppl", "sparsity", "evaluations", "tokens_evaluated",
              "finalize", "validation_ppl", "status", "error"}
AGENT_FIELDS = {"own_share", "topped_up_share", "fallback_share", "requests", "tokens", "llm_wait_s"}
VALIDATION_TOKENS = 2 * 64  # one env step evaluates the 2 validation windows of 64 tokens


def dead_endpoint() -> str:
    """A loopback URL nothing listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def check_ok_row(row: dict) -> None:
    assert set(row) >= ROW_FIELDS, ROW_FIELDS - set(row)
    assert row["status"] == "ok" and row["error"] is None
    assert row["ppl"] > 0 and row["ood_ppl"] > 0 and row["dense_ppl"] > 0 and row["dense_ood_ppl"] > 0
    assert row["finalize"] == "sequential" and row["validation_ppl"] > 0
    assert row["tokens_evaluated"] == row["evaluations"] * VALIDATION_TOKENS


def test_a_dead_agent_endpoint_fails_its_row_the_others_go_on_and_the_exit_code_says_so(tiny_llm4_dir, tmp_path,
                                                                                       capsys, monkeypatch):
    url = dead_endpoint()
    monkeypatch.setenv("PRUNE_GYM_AGENT_MAX_ENDPOINT_FAILURES", "1")
    monkeypatch.setenv("PRUNE_GYM_AGENT_MAX_RETRIES", "0")
    out = tmp_path / "compare"
    code = main(["compare", "--policies", "agent,uniform-wanda,random-search", "--model", str(tiny_llm4_dir),
                 "--target", "0.3", "--max-steps", "8", "--tasks", "none", "--out", str(out), "--agent-base-url", url,
                 "--agent-model", "nobody", "--agent-api-key", "test", *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "1 of 3 policies failed" in err
    results = json.loads((out / "results.json").read_text())
    assert list(results["policies"]) == ["agent", "uniform-wanda", "random-search"]
    agent = results["policies"]["agent"]
    assert agent["status"] == "failed" and agent["ppl"] is None
    assert "EndpointError" in agent["error"] and url in agent["error"]  # the endpoint is named
    assert not (out / "agent" / "final.json").exists() and (out / "agent" / "error.txt").is_file()
    for name in ("uniform-wanda", "random-search"):
        check_ok_row(results["policies"][name])
    search = results["policies"]["random-search"]
    assert "agent failed" in search["budget_source"] and search["budget"] == 20 and search["budget_tokens"] is None
    assert search["evaluations"] == 20 > 8  # its default budget; max_steps truncates the agent, not a search
    report = (out / "report.md").read_text()
    assert "| agent | failed |" in report and "## Failed policies" in report and url in report
    assert "agent failed" in report.split("## Search budgets")[1]


def test_run_exits_non_zero_naming_the_endpoint_and_how_to_resume(tiny_llm4_dir, tmp_path, capsys, monkeypatch):
    url = dead_endpoint()
    monkeypatch.setenv("PRUNE_GYM_AGENT_MAX_ENDPOINT_FAILURES", "1")
    monkeypatch.setenv("PRUNE_GYM_AGENT_MAX_RETRIES", "0")
    out = tmp_path / "run"
    code = main(["run", "--policy", "agent", "--model", str(tiny_llm4_dir), "--target", "0.3", "--out", str(out),
                 "--agent-base-url", url, "--agent-model", "nobody", "--agent-api-key", "test", "--json", *SMALL])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""  # no result object for a failed episode
    assert f"the agent's endpoint {url} failed" in captured.err
    assert f"prune-gym run --resume {out}" in captured.err
    assert not (out / "final.json").exists()
    lines = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert lines[-1]["kind"] == "error" and "EndpointError" in lines[-1]["error"]


def test_the_searches_get_the_agents_budget_in_validation_tokens(tiny_llm4_dir, tmp_path):
    """The agent (a scripted real HTTP endpoint: one level on every block per step) runs first although it is
    named last; random-search then gets exactly its tokens_evaluated and spends all of it (same cost per
    evaluation: the same number of evaluations)."""
    with ScriptedChatServer([], default=lambda body: answer({"0": 1, "1": 1, "2": 1, "3": 1})) as server:
        agent = {"base_url": server.base_url, "model": "scripted", "api_key": "test", "response_format": "json_object",
                 "timeout": 5.0}
        config = CompareConfig(policies=["random-search", "agent"], model=str(tiny_llm4_dir), target=0.3,
                               env=SMALL_ENV, tasks=[], policy_options={"agent": agent})
        results = run_compare(config, tmp_path, progress=False, log=lambda _m: None)
    assert list(results["policies"]) == ["random-search", "agent"]
    agent_row, search = results["policies"]["agent"], results["policies"]["random-search"]
    for row in (agent_row, search):
        check_ok_row(row)
    assert set(agent_row) >= AGENT_FIELDS and agent_row["requests"] >= agent_row["steps"] >= 6
    shares = [agent_row[k] for k in ("own_share", "topped_up_share", "fallback_share")]
    assert sum(shares) == pytest.approx(1.0) and agent_row["own_share"] > 0.5
    assert search["budget_tokens"] == agent_row["tokens_evaluated"] and "agent" in search["budget_source"]
    assert search["tokens_evaluated"] == agent_row["tokens_evaluated"]
    assert search["evaluations"] == agent_row["evaluations"]
    report = (tmp_path / "report.md").read_text()
    assert "## Agent accounting" in report and "## Search budgets" in report
    assert f"{agent_row['tokens_evaluated']} validation tokens" in report


def test_without_an_agent_budget_sets_the_searches_budget(tiny_llm4_dir, tmp_path):
    budget = 5 * VALIDATION_TOKENS + VALIDATION_TOKENS // 2  # 5.5 evaluations: the search stops after 5
    config = CompareConfig(policies=["random-search"], model=str(tiny_llm4_dir), target=0.3, env=SMALL_ENV, tasks=[],
                           budget_tokens=budget, finalize="none")
    row = run_compare(config, tmp_path, progress=False, log=lambda _m: None)["policies"]["random-search"]
    assert row["status"] == "ok" and row["finalize"] == "none" and row["budget_tokens"] == budget
    assert row["evaluations"] == 5 and row["tokens_evaluated"] == 5 * VALIDATION_TOKENS <= budget
    assert "--budget" in row["budget_source"]
    assert row["ppl"] != row["validation_ppl"]  # test and validation windows are different windows


def test_a_search_budget_too_small_for_the_target_is_a_failed_row(tiny_llm4_dir, tmp_path):
    config = CompareConfig(policies=["uniform-wanda", "random-search"], model=str(tiny_llm4_dir), target=0.3,
                           env=SMALL_ENV, tasks=[], budget_tokens=VALIDATION_TOKENS)
    results = run_compare(config, tmp_path, progress=False, log=lambda _m: None)
    failed = results["policies"]["random-search"]
    assert failed["status"] == "failed" and failed["ppl"] is None and "cannot reach the target" in failed["error"]
    check_ok_row(results["policies"]["uniform-wanda"])


def test_uniform_sparsegpt_finalized_equals_prune_sequential_bitwise(tiny_llm4_dir, tmp_path, capsys):
    """The published method under its own name: the run's final model (finalize sequential, the default) is
    bitwise the model ``prune-gym prune --method sparsegpt --mode sequential`` saves at the same sizes."""
    from transformers import AutoModelForCausalLM

    config = RunConfig(policy="uniform-sparsegpt", model=str(tiny_llm4_dir), target=0.5, env=SMALL_ENV)
    env = build_env(config, progress=False)
    metrics = run_policy(config, tmp_path / "run", env=env, progress=False, log=lambda _m: None)
    assert metrics["finalize"] == "sequential" and metrics["ppl"] != metrics["validation_ppl"]
    assert main(["prune", "--model", str(tiny_llm4_dir), "--method", "sparsegpt", "--sparsity", "0.5", "--mode",
                 "sequential", "--calib-samples", "4", "--eval-samples", "2", "--seqlen", "64", "--out",
                 str(tmp_path / "pruned"), "--json", "--no-progress"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned", dtype=torch.float32).state_dict()
    ours = env.unwrapped.model.state_dict()
    assert set(ours) >= {k for k in reference if "layers" in k}
    for key, value in reference.items():
        if key in ours:
            assert torch.equal(ours[key], value), key
    assert metrics["ppl"] == pytest.approx(pruned["ppl"], rel=1e-9)  # the same test windows, the same weights
    env.close()


def test_run_without_ood_text_and_without_finalization(tiny_llm4_dir, tmp_path, capsys):
    code = main(["run", "--policy", "uniform-wanda", "--model", str(tiny_llm4_dir), "--target", "0.3", "--ood-text",
                 "none", "--finalize", "none", "--out", str(tmp_path / "run"), "--json", *SMALL])
    row = json.loads(capsys.readouterr().out)
    assert code == 0 and row["ood_ppl"] is None and row["dense_ood_ppl"] is None and row["finalize"] == "none"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["run"]["finalize"] == "none" and config["tokens"]["ood"] is None
    assert config["tokens"]["validation"]["windows"] == 2 and config["tokens"]["test"]["windows"] == 2
