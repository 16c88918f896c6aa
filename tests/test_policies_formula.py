"""The formula baselines DLP and AlphaPruning: their math equals hand-computed values on fixed small examples,
their plans on the tiny 4-block Llama equal the formulas computed directly from the weights, and every
variant reaches its target through the real env (per linear and off the level grid here; per block at 50%
in test_policies_baselines; on the default model in the slow tests at the end)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from policy_envs import block_wanda_scores, make_env

from policies.baselines.alphapruning import alpha_peak, alphapruning_sparsities, esd, esd_peak, hill_fit
from policies.baselines.dlp import dlp_alpha, dlp_sparsities, mean_wanda_score
from policies.registry import make_policy, required_method
from policies.runner import EpisodeError, run_episode
from prune_env.env import PruningEnv

NEW_POLICIES = ["dlp-wanda", "dlp-sparsegpt", "alphapruning-magnitude", "alphapruning-wanda",
                "alphapruning-sparsegpt"]


@pytest.fixture(scope="module")
def envs(tiny_llm4_dir, one_thread):
    cache: dict[tuple[str, str], PruningEnv] = {}

    def get(method: str, granularity: str = "block") -> PruningEnv:
        if (method, granularity) not in cache:
            cache[method, granularity] = make_env(tiny_llm4_dir, method, granularity=granularity)
        return cache[method, granularity]

    return get


# ------------------------------------------------------------------------------------------ DLP by hand

def test_dlp_alpha_schedule():
    assert [dlp_alpha(t) for t in (0.5, 0.6, 0.7)] == pytest.approx([0.04, 0.10, 0.15])
    assert dlp_alpha(0.55) == pytest.approx(0.07) and dlp_alpha(0.65) == pytest.approx(0.125)
    assert dlp_alpha(0.3) == pytest.approx(0.04) and dlp_alpha(0.9) == pytest.approx(0.15)  # held at the ends


def test_mean_wanda_score_by_hand():
    # |W| * ||X||: [[1*2, 2*0.5], [3*2, 0]] sums to 9; [[1*4, 2*1]] to 6; 15 over the 6 entries together
    w1, n1 = torch.tensor([[1.0, -2.0], [3.0, 0.0]]), torch.tensor([2.0, 0.5])
    w2, n2 = torch.tensor([[-1.0, 2.0]]), torch.tensor([4.0, 1.0])
    assert mean_wanda_score([w1, w2], [n1, n2]) == pytest.approx(2.5, abs=1e-12)
    with pytest.raises(ValueError, match="one entry per input feature"):
        mean_wanda_score([w1], [torch.ones(3)])


def test_dlp_sparsities_by_hand():
    # U = 1, 2, 3: I = 1 - U/6 = 5/6, 4/6, 3/6 -> norm = (I - 1/2) / (1/3) * 0.08 = 0.08, 0.04, 0; mean 0.04
    np.testing.assert_allclose(dlp_sparsities([1, 2, 3], 0.5, 0.04), [0.46, 0.50, 0.54], atol=1e-12)
    # the third block twice as large: weighted mean of norm = (0.08 + 0.04) / 4 = 0.03
    s = dlp_sparsities([1, 2, 3], 0.5, 0.04, weights=[1, 1, 2])
    np.testing.assert_allclose(s, [0.45, 0.49, 0.53], atol=1e-12)
    assert (s * [1, 1, 2]).sum() / 4 == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(dlp_sparsities([2, 2, 2], 0.6, 0.1), 0.6)  # no spread: uniform
    with pytest.raises(ValueError, match="non-negative block scores"):
        dlp_sparsities([0, 0], 0.5, 0.04)


def test_dlp_plan_equals_direct_formula(envs):
    env = envs("wanda")
    policy = make_policy("dlp-wanda")
    run_episode(env, policy, progress=False, final_eval=False)
    # direct computation, written out from DLP's paper and code: mean of all the block's scores together
    u = []
    for block in range(4):
        u.append(float(block_wanda_scores(env, block).double().mean()))
    u = np.array(u)
    assert u.max() > u.min()  # the test could fail: the blocks differ
    importance = 1 - u / u.sum()
    scaled = (importance - importance.min()) * (1 / (importance.max() - importance.min()) * 0.04 * 2)
    keep = scaled - scaled.mean() + (1 - 0.5)
    np.testing.assert_allclose(policy.planned, 1 - keep, atol=1e-9)
    np.testing.assert_allclose(list(policy.block_scores.values()), u, rtol=1e-6)
    assert int(np.argmax(policy.planned)) == int(np.argmax(u))  # the largest mean score is pruned most
    assert policy.summary()["alpha"] == pytest.approx(0.04)


def test_dlp_per_linear_units_take_their_block_ratio(envs):
    env = envs("wanda", "linear")
    policy = make_policy("dlp-wanda", alpha=0.1)
    run_episode(env, policy, progress=False, final_eval=False)
    blocks = [unit.blocks[0] for unit in env.units]
    by_block = {b: {round(r, 12) for r, bb in zip(policy.planned, blocks) if bb == b} for b in set(blocks)}
    assert all(len(ratios) == 1 for ratios in by_block.values())
    spread = max(min(r) for r in by_block.values()) - min(min(r) for r in by_block.values())
    assert spread == pytest.approx(0.2, abs=1e-9)  # [0, 2 alpha]


def test_dlp_refuses_an_env_without_statistics(envs):
    with pytest.raises(EpisodeError, match="required_method"):
        run_episode(envs("magnitude"), make_policy("dlp-wanda"), progress=False)
    with pytest.raises(ValueError, match="kernel must be one of"):
        make_policy("dlp-wanda", kernel="magnitude")


# ------------------------------------------------------------------------------------------ AlphaPruning by hand

E4 = np.exp(np.arange(4.0))  # eigenvalues 1, e, e^2, e^3: log(x_j / x_i) = j - i


def test_hill_fit_by_hand():
    # xmin = e^i, n = 4 - i tail points: alpha = 1 + n / (0 + 1 + ... + (n - 1)) = 1 + 2 / (n - 1)
    # D = max_k |1 - e^(-k (alpha - 1)) - k / n|
    expected = {0: (5 / 3, 0.75 - math.exp(-2 / 3)), 1: (2.0, 2 / 3 - math.exp(-1)), 2: (3.0, 0.5 - math.exp(-2))}
    for i, (alpha, distance) in expected.items():
        assert hill_fit(E4, i) == pytest.approx((alpha, distance), abs=1e-12)
    with pytest.raises(ValueError, match="flat"):
        hill_fit(np.array([1.0, 2.0, 2.0]), 1)


def test_alpha_peak_by_hand():
    # log10 of E4 spreads over 100 bins one eigenvalue each: the peak is the first bin's left edge, 1; the
    # candidates go up to 1.5, so only xmin = 1 is fitted
    assert esd_peak(E4) == pytest.approx(1.0)
    assert alpha_peak(E4) == pytest.approx(5 / 3, abs=1e-12)
    with pytest.raises(ValueError, match="positive spectrum"):
        alpha_peak(np.array([0.0, 1.0, 2.0]))


def _alpha_peak_reference(eigs: list[float]) -> tuple[float, int]:
    """A second, plain-Python reading of the authors' xmin_peak search: (alpha, index of the chosen xmin)."""
    logs = [math.log10(x) for x in eigs]
    lo, hi = min(logs), max(logs)
    width = (hi - lo) / 100
    counts = [0] * 100
    for v in logs:
        counts[min(int((v - lo) / width), 99)] += 1
    peak = 10 ** (lo + width * counts.index(max(counts)))
    best = (0.0, 1.0, -1)
    for i, xmin in enumerate(eigs[:-1]):
        if xmin < math.log10(0.95 * peak) or xmin > 1.5 * peak:
            continue
        tail = eigs[i:]
        alpha = 1 + len(tail) / sum(math.log(x / xmin) for x in tail)
        d = max(abs(1 - (x / xmin) ** (1 - alpha) - k / len(tail)) for k, x in enumerate(tail))
        if d < best[1]:
            best = (alpha, d, i)
    return best[0], best[2]


def test_alpha_peak_follows_the_authors_low_bound():
    # 2.0 and 2.01 share the fullest bin: peak = 10^(18 * log10(40) / 100) = 1.94; candidates up to 2.91. The
    # authors' low bound log10(0.95 * peak) = 0.27 admits 1.0 and 1.5 (0.95 * peak = 1.85 would not), and
    # xmin = 1.5 has the smallest KS distance: alpha = 1 + 7 / sum log(x / 1.5) over the 7 eigenvalues >= 1.5
    eigs = [1.0, 1.5, 2.0, 2.01, 2.02, 3.0, 4.0, 40.0]
    assert esd_peak(np.array(eigs)) == pytest.approx(10 ** (18 * math.log10(40) / 100))
    by_hand = 1 + 7 / sum(math.log(x / 1.5) for x in eigs[1:])
    assert _alpha_peak_reference(eigs) == (pytest.approx(by_hand), 1)
    assert alpha_peak(np.array(eigs)) == pytest.approx(by_hand, abs=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(5):  # heavy-tailed random spectra agree with the plain reading too
        sample = np.sort(rng.pareto(2.0, 60) + 0.1)
        assert alpha_peak(sample) == pytest.approx(_alpha_peak_reference(sample.tolist())[0], rel=1e-9)


def test_esd_is_the_spectrum_of_wtw():
    q1, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    w = q1[:, :4] @ torch.diag(torch.tensor(E4).sqrt()) @ q2.T  # (6, 4) with singular values sqrt(E4)
    np.testing.assert_allclose(esd(w), E4, rtol=1e-12)
    np.testing.assert_allclose(esd(w.T), E4, rtol=1e-12)  # the non-zero part of W^T W's spectrum either way
    assert alpha_peak(esd(w.float())) == pytest.approx(5 / 3, rel=1e-5)


def test_alphapruning_sparsities_by_hand():
    # alpha 2, 3, 4 -> q = 0.7, 1.0, 1.3; numel 1, 1, 2: scale = 0.5 * 4 / (0.7 + 1.0 + 2.6) = 20 / 43
    r = alphapruning_sparsities([2, 3, 4], [1, 1, 2], 0.5, 0.3)
    np.testing.assert_allclose(r, [14 / 43, 20 / 43, 26 / 43], atol=1e-12)
    assert (r * [1, 1, 2]).sum() / 4 == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(alphapruning_sparsities([3, 3], [5, 7], 0.6, 0.2), 0.6)  # no spread: uniform


def _direct_alphas(env: PruningEnv) -> dict[str, float]:
    """Every linear's alpha_peak from numpy's eigenvalues of the smaller Gram matrix (not svdvals)."""
    out = {}
    for lin in env.structure.linears:
        w = env.dense.get(lin.name).double().numpy()
        gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
        out[lin.name] = alpha_peak(np.linalg.eigvalsh(gram))
    return out


def test_alphapruning_block_plan_equals_direct_formula(envs):
    env = envs("wanda")
    policy = make_policy("alphapruning-wanda")
    run_episode(env, policy, progress=False, final_eval=False)
    alphas = _direct_alphas(env)
    np.testing.assert_allclose([policy.alphas[name] for name in alphas], list(alphas.values()), rtol=1e-6)
    block = np.array([np.mean([alphas[lin.name] for lin in env.structure.linears_in_block(b)]) for b in range(4)])
    assert block.max() > block.min()  # the test could fail: the blocks differ
    numel = np.array([u.numel for u in env.units], dtype=np.float64)
    q = 0.7 + (block - block.min()) / (block.max() - block.min()) * 0.6  # epsilon 0.3 for Wanda
    np.testing.assert_allclose(policy.planned, q * 0.5 * numel.sum() / (numel * q).sum(), atol=1e-9)
    assert int(np.argmax(policy.planned)) == int(np.argmax(block))  # the lightest tail is pruned most


def test_alphapruning_per_linear_and_block_mappings(envs):
    env = envs("magnitude", "linear")
    per_linear = make_policy("alphapruning-magnitude", epsilon=0.2)
    run_episode(env, per_linear, progress=False, final_eval=False)
    alphas = np.array([per_linear.alphas[unit.linears[0].name] for unit in env.units])
    numel = np.array([u.numel for u in env.units], dtype=np.float64)
    q = 0.8 + (alphas - alphas.min()) / (alphas.max() - alphas.min()) * 0.4
    np.testing.assert_allclose(per_linear.planned, q * 0.5 * numel.sum() / (numel * q).sum(), atol=1e-9)
    # the authors' epsilon 0.5 for magnitude puts the lightest-tailed linears above the env's cap (0.95):
    # they are clipped there and the rest shift so the numel-weighted mean stays the target
    capped = make_policy("alphapruning-magnitude")
    run_episode(env, capped, progress=False, final_eval=False)
    assert capped.planned.max() == pytest.approx(env.config.max_unit_sparsity)
    assert (capped.planned * numel).sum() / numel.sum() == pytest.approx(0.5, abs=1e-12)
    blockwise = make_policy("alphapruning-magnitude", mapping="block")
    run_episode(env, blockwise, progress=False, final_eval=False)
    for b in range(4):
        ratios = {round(r, 12) for r, unit in zip(blockwise.planned, env.units) if unit.blocks[0] == b}
        assert len(ratios) == 1
    with pytest.raises(EpisodeError, match="granularity='linear'"):
        run_episode(envs("magnitude"), make_policy("alphapruning-magnitude", mapping="linear"), progress=False)


# ------------------------------------------------------------------------------------------ through the env

@pytest.mark.parametrize("name", NEW_POLICIES)
def test_new_policy_reaches_an_off_grid_target_per_linear(tiny_llm4_dir, one_thread, name):
    env = make_env(tiny_llm4_dir, required_method(name), granularity="linear", target_sparsity=0.47)
    result = run_episode(env, make_policy(name), progress=False, final_eval=False)
    assert env.global_sparsity_planned == pytest.approx(0.47, abs=1e-9)
    assert result.terminated and not result.truncated
    assert len(set(np.round(list(result.summary["planned"].values()), 9))) > 1  # really non-uniform
    assert result.summary["plan_max_deviation"] < env.config.step_size / 2


# ------------------------------------------------------------------------------------------ default model

TINY_WINDOWS = dict(seqlen=32, calib_samples=2, reward_eval_samples=1, final_eval_samples=1, gradient_samples=0,
                    target_sparsity=0.5, n_levels=7)


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_POLICIES)
def test_new_policy_on_default_model_lands_within_half_a_point(default_model_dir, one_thread, name):
    env = PruningEnv(model=str(default_model_dir), method=required_method(name), **TINY_WINDOWS)
    policy = make_policy(name)
    result = run_episode(env, policy, progress=False)
    assert env.global_sparsity_planned == pytest.approx(0.5, abs=1e-9)
    assert abs(result.global_sparsity - 0.5) <= 0.005
    assert len(set(policy.planned.round(6))) > 1  # really non-uniform
    assert result.summary["plan_max_deviation"] < env.config.step_size / 2
