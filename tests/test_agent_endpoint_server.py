"""The real llama.cpp server dies in the middle of an agent episode (slow): SIGKILL or SIGSEGV is sent to the
``llama_cpp.server`` process while it is answering a request of a `prune-gym run` on a tiny Llama. The episode
stops with EndpointError naming the signal (not after the retries, not after the episode), the model is
bitwise at its last checkpoint, and ``--resume`` against a fresh server finishes the run."""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from policies.agent import EndpointError
from policies.app.run_job import RunConfig, build_env, run_policy
from policies.runner import EpisodeError, load_steps

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="finds the server process through /proc (Linux)"),
]
ENV = dict(seqlen=32, calib_samples=4, reward_eval_samples=2, final_eval_samples=2, gradient_samples=2,
           gradient_every=2, step_size=0.1, n_levels=3)


def server_children() -> list[int]:
    """Pids of this process's ``llama_cpp.server`` children."""
    me, pids = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and b"llama_cpp.server" in cmdline:
            pids.append(int(entry.name))
    return pids


class KillDuringStep(threading.Thread):
    """Sends ``signum`` to the server while the request of agent step ``step`` is in flight (its transcript has
    the request and no reply yet). Gives up after ``limit`` seconds."""

    def __init__(self, transcript: Path, step: int, signum: int, limit: float = 900.0) -> None:
        super().__init__(daemon=True, name="kill-server")
        self.transcript, self.step, self.signum, self.limit = transcript, step, signum, limit
        self.killed_at: float | None = None
        self.pid: int | None = None
        self._stop = threading.Event()

    def _in_flight(self) -> bool:
        try:
            lines = self.transcript.read_text().splitlines()
        except OSError:
            return False
        last = json.loads(lines[-1]) if lines else {}
        return last.get("type") == "request" and last.get("step") == self.step

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            pids = server_children()
            if pids and self._in_flight():
                self.pid = pids[0]
                os.kill(self.pid, self.signum)
                self.killed_at = time.monotonic()
                return
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()


def model_weights(env) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in env.unwrapped.model.state_dict().items()}


@pytest.fixture
def no_core_dumps():
    """A SIGSEGV'd server must not drop a core file into the working tree."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    yield
    resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])
def test_a_killed_server_stops_the_episode_and_resume_finishes_it(tiny_llm4_dir, tmp_path, signum, no_core_dumps):
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (pip install 'prune-gym[agent-server]')")
    out = tmp_path / "run"
    # one thread: llama.cpp threads spin-wait, so on a busy shared CPU fewer are faster; short answers
    options = dict(local=True, n_threads=1, log_path=str(tmp_path / "server.log"), startup_timeout=600,
                   timeout=300, max_tokens=96, answer_retries=0)
    config = RunConfig(policy="agent", model=str(tiny_llm4_dir), target=0.5, max_steps=3, env=ENV,
                       policy_options=options)
    env = build_env(config, progress=False)
    killer = KillDuringStep(out / "transcript.jsonl", step=2, signum=signum)
    killer.start()
    try:
        with pytest.raises(EpisodeError) as caught:
            run_policy(config, out, env=env, progress=False, log=lambda _m: None)
        stopped_at = time.monotonic()
    finally:
        killer.stop()
    assert killer.killed_at is not None, "the server was never seen answering step 2"
    cause = caught.value.__cause__
    assert isinstance(cause, EndpointError), caught.value
    name = signal.Signals(signum).name
    assert f"exited with {name} while the agent was using it" in cause.reason  # seen at once, not after retries
    assert str(tmp_path / "server.log") in str(cause) and "--resume" in cause.fix and cause.endpoint.startswith("http://127.0.0.1:")
    print(f"{name}: EndpointError {stopped_at - killer.killed_at:.1f} s after the kill")
    assert server_children() == []  # the dead server was reaped; nothing left running

    # the run directory keeps the finished steps (one, unless the reply beat the signal); the model is bitwise
    # the state after the last of them (its checkpoint): a fresh env driven by the recorded actions agrees
    lines = load_steps(out / "steps.jsonl")
    steps = [s for s in lines if s["kind"] == "step"]
    assert 1 <= len(steps) < 3 and lines[-1]["kind"] == "error"
    assert lines[-1]["restored_checkpoint"] == steps[-1]["checkpoint"]
    fresh = build_env(config, progress=False)
    fresh.reset(seed=config.seed)
    for s in steps:
        fresh.step(np.asarray(s["action"]))
    expected = model_weights(fresh)
    assert all(torch.equal(v, expected[k]) for k, v in model_weights(env).items())
    fresh.close()
    env.close()
    assert not (out / "final.json").exists()

    # --resume with a fresh server: the recorded step is replayed (not asked again) and the run finishes
    metrics = run_policy(None, out, resume=True, progress=False, log=lambda _m: None)
    assert (out / "final.json").is_file() and (metrics["steps"] == 3 or metrics["terminated"])
    resumed = [s for s in load_steps(out / "steps.jsonl") if s["kind"] == "step"]
    n = len(steps)
    assert all(s["replayed"] for s in resumed[:n]) and [s["action"] for s in resumed[:n]] == [s["action"] for s in steps]
    assert len(resumed) == metrics["steps"] and not any(s.get("replayed") for s in resumed[n:])
    assert all(s["policy"]["requests"] >= 1 for s in resumed[n:])
    assert server_children() == []  # the resumed run stopped its server
