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
    assert len(steps) == result.steps == result.evaluations == 4  # 0.15, 0.30, 0.45, 0.50
    assert result.tokens_evaluated == 4 * env.tokens.validation.numel()
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


def test_counters_include_rejected_steps_and_timings_come_from_the_env(tiny_llm4_dir, tmp_path):
    """Every env step is one validation evaluation, a rolled-back one too; with timings off in info
    (the default) the step lines still carry the env's timings (``env.last_timings``)."""
    from prune_env.wrappers import AutoRollback

    raw = make_env(tiny_llm4_dir, "wanda", max_steps=6)
    assert not raw.config.info_timings
    env = AutoRollback(raw, max_ppl_increase=1e-6)
    result = run_episode(env, make_policy("uniform-wanda"), steps_path=tmp_path / "steps.jsonl", progress=False)
    assert result.rollbacks >= 1, "no step was rejected: the test needs one (lower the threshold)"
    assert result.evaluations == result.steps
    assert result.tokens_evaluated == result.steps * raw.tokens.validation.numel()
    steps = [line for line in load_steps(tmp_path / "steps.jsonl") if line["kind"] == "step"]
    assert all({"prune", "evaluate", "step", "act"} <= set(line["timings"]) for line in steps
               if not line["rolled_back"])


def test_a_search_is_bounded_by_its_budget_not_by_max_steps(tiny_llm4_dir):
    env = make_env(tiny_llm4_dir, "wanda", max_steps=3)
    policy = make_policy("random-search", budget=7, seed=1)
    result = run_episode(env, policy, progress=False, final_eval=False)
    assert result.steps == result.evaluations == 7 > env.config.max_steps
    assert result.terminated and env.global_sparsity_planned == pytest.approx(0.5)


class RestoresForever(UniformPolicy):
    """Restores its first checkpoint again and again without stepping."""

    def act(self, obs, info):
        from policies.base import Restore

        return Restore(0)


def test_restoring_without_stepping_is_a_loop(env):
    with pytest.raises(EpisodeError, match="restores in a row"):
        run_episode(env, RestoresForever("wanda"), progress=False)


def test_finalize_hook_remakes_the_weights_before_the_test_evaluation(tiny_llm4_dir, tmp_path):
    """``finalize=`` runs after the last step: the test perplexity is of the finalized model, the validation
    perplexity is what the policy saw, and the counters do not include finalization."""
    from prune_env.finalize import finalize_allocation

    env = make_env(tiny_llm4_dir, "sparsegpt")
    oneshot = run_episode(env, make_policy("uniform-sparsegpt"), progress=False)
    path = tmp_path / "steps.jsonl"
    final = run_episode(env, make_policy("uniform-sparsegpt"), steps_path=path, progress=False,
                        finalize=lambda e: finalize_allocation(e, "sequential"))
    assert (oneshot.finalize, final.finalize) == ("none", "sequential")
    assert final.reward_ppl == oneshot.reward_ppl and final.sparsity_map == oneshot.sparsity_map
    assert final.evaluations == oneshot.evaluations and final.tokens_evaluated == oneshot.tokens_evaluated
    assert final.final_ppl == pytest.approx(env.evaluate_full().ppl, rel=1e-12)
    assert final.final_ppl != oneshot.final_ppl  # sequential SparseGPT updates differ from one-shot ones
    assert final.ood_ppl is not None and final.dense_ood_ppl is not None and final.ood_ppl != final.dense_ood_ppl
    kinds = [line["kind"] for line in load_steps(path)]
    assert kinds[-2:] == ["finalize", "end"]


def test_a_failing_finalization_restores_the_last_checkpoint(env):
    def broken(e):
        lin = e.unwrapped.structure.linears[0]
        e.unwrapped.store.about_to_change(e.unwrapped.units[0].name)
        lin.set_weight_matrix(torch.zeros_like(lin.weight_matrix()))
        raise RuntimeError("finalization broke")

    reference = run_episode(env, make_policy("uniform-wanda"), progress=False, final_eval=False)
    before = weights(env)
    with pytest.raises(EpisodeError, match="failed in finalize.*finalization broke"):
        run_episode(env, make_policy("uniform-wanda"), progress=False, finalize=broken)
    now = weights(env)
    assert reference.terminated and all(torch.equal(now[name], before[name]) for name in now)
