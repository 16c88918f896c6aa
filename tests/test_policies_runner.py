"""The episode runner: JSONL written as it goes, failures restore the last checkpoint bitwise, resume by replay,
policy totals, the registry."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from policy_envs import make_env

from policies.baselines.uniform import UniformPolicy
from policies.registry import make_policy
from policies.runner import EpisodeError, load_steps, run_episode


@pytest.fixture(scope="module")
def env(tiny_llm4_dir):
    return make_env(tiny_llm4_dir, "wanda")


def weights(env) -> dict[str, torch.Tensor]:
    return {lin.name: lin.weight_matrix().detach().clone() for lin in env.structure.linears}


class LineCounting(UniformPolicy):
    """Checks, before each action, that every earlier step is already on disk; reports fake token counts."""

    def __init__(self, path) -> None:
        super().__init__("wanda")
        self.path, self.seen = path, []

    def act(self, obs, info):
        lines = self.path.read_text().splitlines()
        self.seen.append(len(lines))
        assert [json.loads(line)["kind"] for line in lines] == ["start"] + ["step"] * (len(lines) - 1)
        return super().act(obs, info)

    def record(self):
        return {"tokens": 10, "note": "x"}


def test_jsonl_written_line_by_line(env, tmp_path):
    path = tmp_path / "steps.jsonl"
    policy = LineCounting(path)
    result = run_episode(env, policy, steps_path=path, progress=False)
    assert policy.seen == [1 + k for k in range(result.steps)]  # step k's line was flushed before act k+1
    lines = load_steps(path)
    steps = [line for line in lines if line["kind"] == "step"]
    assert [line["kind"] for line in lines] == ["start"] + ["step"] * result.steps + ["end"]
    assert len(steps) == result.steps == result.ppl_evaluations == 4  # 0.15, 0.30, 0.45, 0.50
    for key in ("action", "reward", "ppl", "ppl_ratio", "global_sparsity", "unit_sparsity", "changed_units",
                "rolled_back", "checkpoint", "timings", "policy"):
        assert key in steps[0], key
    assert steps[-1]["terminated"] and steps[0]["policy"] == {"tokens": 10, "note": "x"}
    assert {"act", "prune", "evaluate", "step"} <= set(steps[0]["timings"])
    assert result.totals == {"tokens": 40}
    assert lines[-1]["final_ppl"] == pytest.approx(result.final_ppl)


class CrashesMidWrite(UniformPolicy):
    """After two steps, starts overwriting a unit through the checkpoint store, then dies (a crash mid-change)."""

    def __init__(self) -> None:
        super().__init__("wanda")
        self.steps, self.snapshot, self.checkpoint = 0, None, None

    def observe(self, outcome):
        super().observe(outcome)
        self.steps += 1
        self.snapshot, self.checkpoint = weights(self.view.env), outcome.info["checkpoint"]

    def act(self, obs, info):
        if self.steps == 2:
            env = self.view.env
            unit = env.units[1]
            env.store.about_to_change(unit.name)
            for lin in unit.linears:
                lin.set_weight_matrix(torch.full_like(lin.weight_matrix(), 7.0))
            raise RuntimeError("boom")
        return super().act(obs, info)


def test_failing_policy_leaves_model_at_last_checkpoint(env, tmp_path):
    path = tmp_path / "steps.jsonl"
    policy = CrashesMidWrite()
    with pytest.raises(EpisodeError, match="'uniform-wanda' failed in act after step 2.*boom.*checkpoint") as caught:
        run_episode(env, policy, steps_path=path, progress=False)
    assert caught.value.checkpoint == policy.checkpoint
    now = weights(env)
    assert all(torch.equal(now[name], policy.snapshot[name]) for name in now)  # bitwise
    error = load_steps(path)[-1]
    assert error["kind"] == "error" and "boom" in error["error"] and error["restored_checkpoint"] == policy.checkpoint
    assert error["restore_error"] is None and "RuntimeError" in error["traceback"]
    # the env is usable afterwards: a new episode starts from the dense model
    result = run_episode(env, make_policy("uniform-wanda"), progress=False)
    assert result.terminated


def test_resume_replays_recorded_steps(env, tmp_path):
    full_path = tmp_path / "full.jsonl"
    full = run_episode(env, make_policy("owl-wanda"), steps_path=full_path, progress=False)
    recorded = load_steps(full_path)
    partial = [line for line in recorded if line["kind"] in ("start", "step")][:3]  # start + 2 steps
    resumed_path = tmp_path / "resumed.jsonl"
    resumed = run_episode(env, make_policy("owl-wanda"), steps_path=resumed_path, start_from=partial, progress=False)
    assert resumed.steps == full.steps
    assert resumed.sparsity_map == full.sparsity_map
    assert resumed.final_ppl == pytest.approx(full.final_ppl, rel=1e-9)
    flags = [line.get("replayed", False) for line in load_steps(resumed_path) if line["kind"] == "step"]
    assert flags == [True, True] + [False] * (full.steps - 2)


def test_load_steps_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "torn.jsonl"
    path.write_text('{"kind": "start"}\n{"kind": "step", "step": 1}\n{"kind": "st')
    assert [line["kind"] for line in load_steps(path)] == ["start", "step"]


def test_registry_errors_and_lazy_agent():
    with pytest.raises(ValueError, match="unknown policy 'nope'; known policies: uniform-magnitude.*agent"):
        make_policy("nope")
    code = "import sys, policies.registry as r; r.required_method('agent'); print('policies.agent' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # the agent package is imported only when an agent is made
    with pytest.raises(TypeError):
        make_policy("uniform-wanda", kernel="wanda", nonsense=1)


def test_listener_sees_each_line_once_it_is_on_disk_and_a_failing_one_is_switched_off(env, tmp_path):
    path = tmp_path / "steps.jsonl"
    seen: list[tuple[str, int]] = []

    def listener(record):
        seen.append((record["kind"], len(path.read_text().splitlines())))

    result = run_episode(env, make_policy("uniform-wanda"), steps_path=path, progress=False, on_record=listener)
    assert [kind for kind, _ in seen] == ["start"] + ["step"] * result.steps + ["end"]
    assert [on_disk for _, on_disk in seen] == list(range(1, len(seen) + 1))

    def broken(record):
        raise ConnectionError("W&B is down")

    with pytest.warns(RuntimeWarning, match="W&B is down"):
        again = run_episode(env, make_policy("uniform-wanda"), steps_path=tmp_path / "again.jsonl", progress=False,
                            on_record=broken)
    assert again.final_ppl == result.final_ppl
