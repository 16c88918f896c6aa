"""`prune-gym prune`: end to end on a tiny local model (fast) and on the packaged default model (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from policies.app.cli import main
from prune_env.saving import load_report

SMALL = ["--calib-samples", "4", "--eval-samples", "2", "--seqlen", "32", "--no-progress"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_json_on_a_local_model(method, tiny_llm_dir, tmp_path, capsys):
    out_dir = tmp_path / "pruned"
    code, out, err = _run(capsys, "prune", "--model", str(tiny_llm_dir), "--method", method, "--sparsity", "0.5",
                          *SMALL, "--json", "--out", str(out_dir))
    assert code == 0, err
    metrics = json.loads(out)
    assert {"dense_ppl", "ppl", "sparsity", "seconds"} <= set(metrics)
    assert metrics["sparsity"] == pytest.approx(0.5, abs=0.005)
    assert metrics["ppl"] > 0 and metrics["dense_ppl"] > 0
    assert "dense perplexity" in err  # human logs go to stderr with --json, stdout stays one JSON object
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    zeros = sum(int((p == 0).sum()) for n, p in reloaded.named_parameters() if "layers" in n and p.ndim == 2)
    assert zeros == pytest.approx(load_report(out_dir)["sparsity_report"]["prunable"]["zeros"])


def test_prune_nm_human_output(tiny_llm_dir, capsys):
    code, out, _ = _run(capsys, "prune", "--model", str(tiny_llm_dir), "--nm", "2:4", *SMALL)
    assert code == 0
    assert "perplexity" in out and "sparsity 0.5000" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sparsity", "1.2"], r"[0, 1)"),
        (["--sparsity", "-0.1"], r"[0, 1)"),
        (["--nm", "4:2"], "N < M"),
        (["--nm", "2:4", "--sparsity", "0.3"], "contradicts"),
        ([], "give --sparsity"),
        (["--sparsity", "0.5", "--calib-samples", "0"], "--calib-samples must be >= 1"),
        (["--sparsity", "0.5", "--model", "smollm3"], "Presets: gemma3-270m"),
        (["--sparsity", "0.5", "--text", "no-such-source"], "no-such-source"),
    ],
)
def test_bad_flags_get_clear_errors(flags, message, tiny_llm_dir, capsys):
    argv = ["prune", "--model", str(tiny_llm_dir), *SMALL, *flags] if "--model" not in flags else ["prune", *SMALL, *flags]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert message in err


def test_unknown_method_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prune", "--method", "owl", "--sparsity", "0.5"])
    assert exc.value.code == 2
    assert "magnitude" in capsys.readouterr().err


def test_text_too_short_is_rejected_before_pruning(tiny_llm_dir, tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("Only a few words here.\n")
    code, _, err = _run(capsys, "prune", "--model", str(tiny_llm_dir), "--sparsity", "0.5", "--text", str(text), *SMALL)
    assert code == 2
    assert "window" in err


@pytest.mark.slow
def test_console_script_on_the_default_model(tmp_path):
    """The installed `prune-gym` command on SmolLM2-135M: SparseGPT <= Wanda << magnitude at 50%."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("prune-gym")), "prune", "--method", method, "--sparsity", "0.5",
             "--calib-samples", "16", "--eval-samples", "8", "--seqlen", "128", "--json", "--no-progress"],
            capture_output=True, text=True, env=env, check=True, timeout=900,
        )
        results[method] = json.loads(proc.stdout)
    dense = results["wanda"]["dense_ppl"]
    assert 10 < dense < 60  # SmolLM2-135M on held-out Wikipedia text
    for r in results.values():
        assert r["sparsity"] == pytest.approx(0.5, abs=0.005)
        assert r["dense_ppl"] == pytest.approx(dense)
    assert dense < results["sparsegpt"]["ppl"] <= results["wanda"]["ppl"] * 1.05
    assert results["wanda"]["ppl"] * 3 < results["magnitude"]["ppl"]


def test_agent_flags_become_agent_settings():
    from policies.agent.settings import AgentSettings
    from policies.app.cli import build_parser
    from policies.app.cli_episodes import _agent_options

    args = build_parser().parse_args(["compare", "--policies", "agent", "--agent-max-endpoint-failures", "3",
                                      "--agent-step-time-limit", "45", "--agent-pace", "off", "--agent-memory", "off",
                                      "--agent-bar-rejected", "off"])
    options = _agent_options(args)
    assert options == {"max_endpoint_failures": 3, "step_time_limit_s": 45.0, "pace": False, "memory": False,
                       "bar_rejected": False}
    settings = AgentSettings(**options)
    assert (settings.max_endpoint_failures, settings.step_time_limit_s, settings.pace, settings.memory) == (3, 45.0,
                                                                                                         False, False)
    assert _agent_options(build_parser().parse_args(["compare", "--policies", "agent"])) == {}


def test_rollback_final_step_flag_becomes_the_env_setting():
    from policies.app.cli import build_parser
    from policies.app.cli_episodes import _env_settings
    from prune_env.env_config import PruningEnvConfig

    for command in ("run", "compare"):
        base = [command, "--policy" if command == "run" else "--policies", "agent"]
        check = _env_settings(build_parser().parse_args([*base, "--rollback-final-step", "check"]))
        assert check == {"rollback_keep_final_step": False}
        assert PruningEnvConfig(**check).rollback_keep_final_step is False
        assert _env_settings(build_parser().parse_args(base)) == {}  # the default: the env's (keep)
    assert PruningEnvConfig().rollback_keep_final_step is True
