"""A dead endpoint stops the agent, and only a dead one: real loopback servers that accept connections and close
them without a byte of reply, or hold them and never answer, drive the agent (through the episode runner on
a tiny Llama, and step by step); a single outage still falls back; ``response_format`` negotiation does not
reset the count; a replay gives up exactly where the recorded run did; a local server that exits before it
answers says why (exit status, log)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import numpy as np
import pytest
import torch
from scripted_chat_server import Reply, ScriptedChatServer, answer

from policies.agent import EndpointError, make_agent
from policies.agent.chat import StepBudget
from policies.agent.server import LocalServer, ServerStartError, describe_exit, exit_hint
from policies.agent.settings import resolve_settings
from policies.agent.transcript import read_transcript
from policies.base import EnvView, StepOutcome
from policies.runner import EpisodeError, load_steps, run_episode
from prune_env.env import PruningEnv

ENV = dict(seqlen=32, calib_samples=4, reward_eval_samples=2, final_eval_samples=2, gradient_samples=2,
           gradient_every=2, step_size=0.1, n_levels=3, max_unit_sparsity=0.35, target_sparsity=0.3, max_steps=10)
FAST = dict(model="m", api_key="t", max_retries=1, backoff=0.01, response_format="json_object", pace=False)


class SilentServer:
    """A loopback TCP server that accepts connections and, without sending a byte, closes each one after
    reading the request (``hang=False``) or holds it open until the server stops (``hang=True``).
    Bounded: it stops by itself after ``max_connections`` connections or ``lifetime`` seconds."""

    def __init__(self, *, hang: bool = False, max_connections: int = 40, lifetime: float = 120.0) -> None:
        self.hang, self.max_connections, self.lifetime = hang, max_connections, lifetime
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="silent-server")

    base_url = ""  # set on entering

    def _serve(self) -> None:
        deadline = time.monotonic() + self.lifetime
        while not self._stop.is_set() and self.connections < self.max_connections and time.monotonic() < deadline:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            self.connections += 1
            conn.settimeout(2.0)
            with contextlib.suppress(OSError):
                conn.recv(65536)  # the request (headers and body fit)
            if self.hang:
                self._held.append(conn)
            else:
                conn.close()

    def __enter__(self) -> SilentServer:
        self._sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._sock.close()


def view() -> EnvView:
    return EnvView(unit_names=tuple(f"model.layers.{i}" for i in range(4)), unit_numel=(100,) * 4, n_levels=3,
                   step_size=0.1, max_unit_sparsity=0.95, target_sparsity=0.5, max_steps=10, method="wanda",
                   granularity="block", rollback_threshold=0.2)


def obs(sparsity=(0.0, 0.0, 0.0, 0.0)) -> dict[str, np.ndarray]:
    s = np.asarray(sparsity, dtype=np.float32)
    return {"wanda_z": np.asarray((0.5, -1.0, 1.5, -1.0), dtype=np.float32),
            "grad_z": np.asarray((0.0, 0.2, -0.5, 0.1), dtype=np.float32), "sparsity": s,
            "global_sparsity": np.array([s.mean()], dtype=np.float32), "target": np.array([0.5], dtype=np.float32),
            "ppl_ratio": np.array([1.0], dtype=np.float32), "steps_left": np.array([10], dtype=np.float32)}


def step(agent, sparsity=(0.0, 0.0, 0.0, 0.0)) -> np.ndarray:
    """One act + observe on a fixed observation."""
    action = agent.act(obs(sparsity), {})
    agent.observe(StepOutcome(step=len(agent.history) + 1, action=action, reward=0.0, terminated=False,
                              truncated=False, obs=obs(sparsity), info={"ppl": 10.0, "rolled_back": False}))
    return action


def weights(env: PruningEnv) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in env.model.state_dict().items()}


# ---------------------------------------------------------------- through the runner, on a real env
def test_an_endpoint_that_closes_every_connection_stops_the_episode_after_max_endpoint_failures(tiny_llm4_dir,
                                                                                                   tmp_path):
    env = PruningEnv(model=str(tiny_llm4_dir), **ENV)
    snapshots: list[dict[str, torch.Tensor]] = []

    def on_record(line: dict) -> None:
        if line["kind"] == "step":
            snapshots.append(weights(env))

    with SilentServer() as server:
        agent = make_agent(env={}, base_url=server.base_url, timeout=10, max_endpoint_failures=3,
                           transcript_path=tmp_path / "t.jsonl", **FAST)
        with pytest.raises(EpisodeError) as caught:
            run_episode(env, agent, steps_path=tmp_path / "steps.jsonl", progress=False, on_record=on_record)
        connections = server.connections
    cause = caught.value.__cause__
    assert isinstance(cause, EndpointError) and cause.endpoint == server.base_url
    assert "3 consecutive steps failed" in cause.reason and "connection" in cause.reason
    assert "--resume" in str(cause) and server.base_url in str(cause) and "EndpointError" in str(caught.value)
    lines = load_steps(tmp_path / "steps.jsonl")
    steps = [s for s in lines if s["kind"] == "step"]
    assert len(steps) == 2 and all(s["policy"]["fallback"] and s["policy"]["endpoint_failed"] for s in steps)
    assert [s["kind"] for s in lines][-1] == "error" and lines[-1]["where"] == "act"
    assert connections == 3 * (FAST["max_retries"] + 1)  # 3 steps, every try refused: not the whole episode
    assert caught.value.checkpoint == steps[-1]["checkpoint"]  # restored to the last finished step, bitwise
    assert all(torch.equal(v, snapshots[-1][k]) for k, v in weights(env).items())
    errors = [r for r in read_transcript(tmp_path / "t.jsonl") if r["type"] == "error"]
    assert len(errors) == connections and {e["error"]["kind"] for e in errors} == {"connection"}


# ---------------------------------------------------------------- step by step
def test_an_endpoint_that_never_answers_costs_the_step_time_limit_not_the_timeout(tmp_path):
    with SilentServer(hang=True) as server:
        agent = make_agent(env={}, base_url=server.base_url, timeout=60, step_time_limit_s=0.5,
                           transcript_path=tmp_path / "t.jsonl", **{**FAST, "max_retries": 4})
        agent.reset(view(), obs(), {"ppl": 10.0})
        step(agent)
        first = agent.record()
        with pytest.raises(EndpointError, match="2 consecutive steps failed") as caught:
            agent.act(obs(), {})
    # each step: one request cut to the 0.5 s left of the step (not 60 s), then no time for a retry
    assert first["fallback"] and first["endpoint_failed"] and first["requests"] == 1
    assert "step time limit of 0.5 s" in first["fallback_reason"] and "timeout" in first["transport_errors"][0]
    assert "0.5 s" in caught.value.reason and server.connections == 2
    recorded = read_transcript(tmp_path / "t.jsonl")
    assert [r["error"]["kind"] for r in recorded if r["type"] == "error"] == ["timeout", "timeout"]

    # the replay counts the recorded latencies against the limit, so it gives up where the run did
    replay = make_agent(replay_path=tmp_path / "t.jsonl")
    replay.reset(view(), obs(), {"ppl": 10.0})
    assert step(replay).tolist() == [0, 0, 0, 1] and replay.record()["fallback_reason"] == first["fallback_reason"]
    with pytest.raises(EndpointError, match="2 consecutive steps failed"):
        replay.act(obs(), {})
    assert replay.session.transport.remaining == 0


def test_a_single_outage_falls_back_and_an_answer_resets_the_count(tmp_path):
    down = [Reply(status=503)] * 2  # max_retries=1: two tries per step
    script = [*down, answer({"0": 1}), *down, answer({"1": 1}), *down, *down]
    with ScriptedChatServer(script) as server:
        agent = make_agent(env={}, base_url=server.base_url, timeout=5, **FAST)
        agent.reset(view(), obs(), {"ppl": 10.0})
        actions = [step(agent).tolist() for _ in range(5)]  # down, answer, down, answer, down: never 2 in a row
        fallbacks = [h.fallback for h in agent.history]
        with pytest.raises(EndpointError, match=r"2 consecutive steps failed .* http 503") as caught:
            agent.act(obs(), {})  # the second failed step in a row
    assert actions == [[0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 1]]
    assert fallbacks == [True, False, True, False, True]
    assert caught.value.endpoint == server.base_url and len(server.requests) == 10


def test_response_format_negotiation_does_not_reset_the_count():
    # auto mode: json_schema is refused with HTTP 400 (the server answered), then the endpoint is down
    script = [Reply(status=400, content="response_format json_schema unsupported"), *[Reply(status=502)] * 2,
              *[Reply(status=502)] * 2]
    with ScriptedChatServer(script) as server:
        agent = make_agent(env={}, base_url=server.base_url, timeout=5, **{**FAST, "response_format": "auto"})
        agent.reset(view(), obs(), {"ppl": 10.0})
        step(agent)
        assert agent.record()["endpoint_failed"] and agent.record()["response_format"] == "json_object"
        with pytest.raises(EndpointError, match="2 consecutive steps failed"):
            agent.act(obs(), {})
    assert [r.get("response_format", {}).get("type") for r in server.requests] == \
        ["json_schema", "json_object", "json_object", "json_object", "json_object"]


def test_answers_that_stay_invalid_are_no_endpoint_failure():
    bad = Reply("not json")
    with ScriptedChatServer([bad] * 20) as server:
        agent = make_agent(env={}, base_url=server.base_url, timeout=5, answer_retries=1, **FAST)
        agent.reset(view(), obs(), {"ppl": 10.0})
        for _ in range(4):  # fallbacks, but the endpoint answers: the episode goes on
            step(agent)
    assert all(h.fallback for h in agent.history) and not agent.record()["endpoint_failed"]


def test_the_step_budget_cuts_the_last_request_and_the_backoffs():
    budget = StepBudget(2.0)
    assert (budget.left_s, budget.exhausted) == (2.0, False)
    budget.spent_s = 2.5
    assert budget.exhausted
    # backoffs that would pass the limit are not waited: here 4 tries of 503 with 1 s backoff and a 1.5 s limit
    sleeps: list[float] = []
    with ScriptedChatServer([Reply(status=503)] * 5) as server:
        agent = make_agent(env={}, base_url=server.base_url, timeout=5, step_time_limit_s=1.5, sleep=sleeps.append,
                           **{**FAST, "max_retries": 4, "backoff": 1.0, "max_endpoint_failures": 5})
        agent.reset(view(), obs(), {"ppl": 10.0})
        step(agent)
    assert sleeps == [1.0] and len(server.requests) == 2 and "step time limit" in agent.record()["fallback_reason"]


def test_endpoint_failure_settings_come_from_arguments_and_env_variables():
    s = resolve_settings({"PRUNE_GYM_AGENT_MAX_ENDPOINT_FAILURES": "4", "PRUNE_GYM_AGENT_STEP_TIME_LIMIT": "90"})
    assert (s.max_endpoint_failures, s.step_time_limit_s) == (4, 90.0)
    d = resolve_settings({})
    assert (d.max_endpoint_failures, d.step_time_limit_s) == (2, 300.0)
    assert resolve_settings({}, max_endpoint_failures="3").max_endpoint_failures == 3  # --agent-option KEY=VALUE
    with pytest.raises(ValueError, match="max_endpoint_failures must be >= 1"):
        resolve_settings({}, max_endpoint_failures=0)
    with pytest.raises(ValueError, match="step_time_limit_s must be > 0"):
        resolve_settings({}, step_time_limit_s=0)


def test_endpoint_error_names_the_endpoint_what_failed_and_the_fix():
    err = EndpointError("http://127.0.0.1:9/v1", "2 consecutive steps failed: connection refused")
    assert (err.endpoint, err.reason) == ("http://127.0.0.1:9/v1", "2 consecutive steps failed: connection refused")
    assert "http://127.0.0.1:9/v1" in str(err) and "connection refused" in str(err)
    assert "prune-gym run --resume DIR" in str(err) and isinstance(err, RuntimeError)


# ---------------------------------------------------------------- the local server's exit
def test_exit_statuses_are_named():
    assert [describe_exit(rc) for rc in (-9, -11, -4, 1, 0)] == ["SIGKILL", "SIGSEGV", "SIGILL", "exit code 1",
                                                                    "exit code 0"]
    assert "setup.sh" in exit_hint(-4) and "memory" in exit_hint(-9) and "GGUF" in exit_hint(1)


def test_the_readiness_probe_uses_the_agent_response_format(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    probe = LocalServer(gguf).probe_request()
    assert probe["response_format"]["type"] == "json_object" and probe["max_tokens"] <= 16
    assert probe["response_format"]["schema"]["required"] == ["ok"]
    assert "response_format" not in LocalServer(gguf, response_format="none").probe_request()
    with pytest.raises(ValueError, match="response_format must be"):
        LocalServer(gguf, response_format="auto")


def test_a_server_that_exits_before_it_answers_says_why_at_once(tmp_path):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'prune-gym[agent-server]')")
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("this is a text file, not a GGUF model\n" * 10)
    server = LocalServer(not_gguf, log_path=tmp_path / "server.log", n_threads=1, startup_timeout=600)
    with pytest.raises(ServerStartError) as caught:
        server.start()
    err = caught.value
    assert "exited with exit code" in err.reason and "before it was ready" in err.reason
    assert str(tmp_path / "server.log") in str(err) and err.details.count("\n") >= 1
    assert "GGUF" in err.fix and isinstance(err, EndpointError) and server.process is None
    log_text = (tmp_path / "server.log").read_text()
    assert log_text.strip() and log_text.strip().splitlines()[-1] in str(err)  # the log's last lines are shown


def test_a_server_not_ready_within_startup_timeout_is_stopped_and_says_so(tmp_path):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'prune-gym[agent-server]')")
    from policies.agent.server import default_gguf

    server = LocalServer(default_gguf(), log_path=tmp_path / "server.log", n_threads=1, startup_timeout=0.3)
    with pytest.raises(ServerStartError, match=r"did not answer GET /v1/models within startup_timeout 0.3 s") as caught:
        server.start()  # python alone takes longer than 0.3 s to import the server
    assert "raise startup_timeout" in caught.value.fix and server.process is None
