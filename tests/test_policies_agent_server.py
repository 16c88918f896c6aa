"""The local agent server: its command line and errors (fast), and the real thing (slow): llama-cpp-python's
OpenAI-compatible server with the SmolLM2-135M-Instruct GGUF drives a tiny PruningEnv for a few steps."""

from __future__ import annotations

import argparse

import pytest

from policies.agent import local_agent
from policies.agent.server import LocalServer, default_gguf, server_command
from policies.agent.transcript import read_transcript
from policies.app.serve_agent import add_serve_agent_parser
from policies.runner import load_steps, run_episode
from prune_env.env import PruningEnv


def test_server_command_and_errors(tmp_path):
    gguf = default_gguf()
    assert gguf.name.endswith(".gguf") and gguf.is_file()
    server = LocalServer(gguf, n_threads=2, n_ctx=2048)
    cmd = server_command(server.spec, 1234)
    assert cmd[1:3] == ["-m", "llama_cpp.server"] and cmd[cmd.index("--port") + 1] == "1234"
    assert cmd[cmd.index("--model") + 1] == str(gguf) and cmd[cmd.index("--n_threads") + 1] == "2"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LocalServer(tmp_path / "missing.gguf")
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.base_url
    assert server.response_format == "json_object" and server.pid is None


def test_serve_agent_subcommand_parses():
    parser = argparse.ArgumentParser(prog="prune-gym")
    add_serve_agent_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve-agent", "--port", "8091", "--threads", "2"])
    assert (args.command, args.port, args.threads, args.host) == ("serve-agent", 8091, 2, "127.0.0.1")
    assert callable(args.handler)


@pytest.mark.slow
def test_real_smollm2_agent_prunes_a_tiny_env(tiny_llm4_dir, tmp_path):
    env = PruningEnv(model=str(tiny_llm4_dir), seqlen=32, calib_samples=4, reward_eval_samples=2,
                     final_eval_samples=2, gradient_samples=2, gradient_every=2, step_size=0.1, n_levels=3,
                     target_sparsity=0.5, max_steps=3)
    # one thread: llama.cpp threads spin-wait, so on a busy shared CPU 2 threads were 4x slower than 1 here
    with local_agent(n_threads=1, server_log=tmp_path / "server.log", transcript_path=tmp_path / "t.jsonl",
                     timeout=120, max_tokens=256, answer_retries=1) as agent:
        result = run_episode(env, agent, steps_path=tmp_path / "steps.jsonl", progress=False, final_eval=False)
        server = agent.server
        assert server is not None and server.process is not None and server.process.poll() is None
    assert server.process is None  # stopped on exit
    steps = [s for s in load_steps(tmp_path / "steps.jsonl") if s["kind"] == "step"]
    assert len(steps) == 3 == result.steps
    for s in steps:
        rec = s["policy"]
        assert rec["requests"] >= 1 and rec["prompt_tokens"] > 0 and rec["completion_tokens"] > 0
        assert rec["fallback"] == (rec["fallback_reason"] is not None)
        assert rec["response_format"] == "json_object" and any(s["action"])
        print(f"step {s['step']}: action {s['action']} fallback={rec['fallback']} answer_retries="
              f"{rec['answer_retries']} tokens {rec['prompt_tokens']}+{rec['completion_tokens']} "
              f"{rec['latency_s']:.1f}s ppl {s['ppl']:.1f} | {rec['reflection'][:80]!r} | {rec['rationale'][:80]!r} "
              f"| {rec['answer_errors']}")
    summary = result.summary
    assert sum(summary[k] for k in ("own_share", "topped_up_share", "fallback_share")) == pytest.approx(1.0)
    assert summary["requests"] == sum(s["policy"]["requests"] for s in steps) and summary["tokens"] > 0
    print(f"shares: own {summary['own_share']:.2f} topped up {summary['topped_up_share']:.2f} fallback "
          f"{summary['fallback_share']:.2f}; {summary['requests']} requests, {summary['tokens']} tokens, "
          f"{summary['llm_wait_s']:.0f} s waiting")
    records = read_transcript(tmp_path / "t.jsonl")
    answered = [r for r in records if r["type"] in ("response", "error")]  # an error: e.g. a timeout, retried
    assert len(answered) == sum(s["policy"]["requests"] for s in steps) == sum(r["type"] == "request" for r in records)
    assert any(r["type"] == "response" and r["reply"]["content"] for r in answered)
