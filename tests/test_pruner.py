"""Structure discovery and block-by-block pruning on tiny random models of seven architectures."""

from __future__ import annotations

import pytest
import torch
from tiny_models import ARCHITECTURES, random_tokens, tiny_model
from torch import nn

from prune_env.pruner import make_spec, prune, resolve_sparsity_map
from prune_env.sparsify import wanda_sparsify
from prune_env.sparsity import sparsity_report
from prune_env.statistics import LayerStatistics, NonFiniteStatisticsError
from prune_env.structure import StructureError, discover

EXPECTED = {  # blocks path and linears per block: found generically, checked against what we know
    "llama": ("model.layers", 7),
    "qwen2": ("model.layers", 7),
    "qwen3": ("model.layers", 7),
    "gemma3": ("model.layers", 7),
    "gpt2": ("transformer.h", 4),
    "gpt_neox": ("gpt_neox.layers", 4),
    "opt": ("model.decoder.layers", 6),
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_discovery_finds_blocks_and_linears_but_not_head_or_embeddings(arch):
    model = tiny_model(arch)
    structure = discover(model)
    blocks_name, per_block = EXPECTED[arch]
    assert structure.blocks_name == blocks_name
    assert structure.num_blocks == 3
    assert len(structure.linears) == 3 * per_block
    pruned_ids = {id(lin.module.weight) for lin in structure.linears}
    assert id(model.get_output_embeddings().weight) not in pruned_ids
    assert id(model.get_input_embeddings().weight) not in pruned_ids
    for lin in structure.linears:
        out_f, in_f = lin.shape
        assert lin.weight_matrix().shape == (out_f, in_f)


def _inputs_by_plain_hooks(model: nn.Module, structure, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every linear's inputs from one ordinary dense forward: independent of the block replay machinery."""
    seen: dict[str, list[torch.Tensor]] = {lin.name: [] for lin in structure.linears}
    handles = [
        lin.module.register_forward_hook(lambda m, a, o, n=lin.name: seen[n].append(a[0].reshape(-1, a[0].shape[-1])))
        for lin in structure.linears
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return {name: torch.cat(xs) for name, xs in seen.items()}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_oneshot_wanda_equals_direct_computation_from_dense_activations(arch):
    model, ids = tiny_model(arch), random_tokens(6, 24)
    structure = discover(model)
    inputs = _inputs_by_plain_hooks(model, structure, ids)
    dense = {lin.name: lin.weight_matrix().detach().clone() for lin in structure.linears}
    prune(model, make_spec(structure, "wanda", 0.5, mode="oneshot"), ids, batch_size=4, progress=False)
    for lin in structure.linears:
        expected = wanda_sparsify(dense[lin.name], inputs[lin.name].norm(dim=0), 0.5)
        assert torch.equal(lin.weight_matrix() == 0, expected.mask | (dense[lin.name] == 0)), lin.name
        assert torch.equal(lin.weight_matrix(), expected.weight), lin.name


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_every_method_reaches_the_target_on_every_architecture(arch, method):
    model, ids = tiny_model(arch), random_tokens(4, 16)
    structure = discover(model)
    result = prune(model, make_spec(structure, method, 0.5), ids, progress=False)
    report = sparsity_report(model, structure)
    assert report.global_sparsity == pytest.approx(0.5, abs=0.01)
    assert set(result.layer_sparsity) == set(structure.names())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert report.all_parameters.sparsity < report.global_sparsity  # embeddings, norms, head untouched


def test_nm_pruning_through_the_model_gives_exact_groups():
    model, ids = tiny_model("gpt2"), random_tokens(4, 16)  # Conv1D: transposed weights
    structure = discover(model)
    prune(model, make_spec(structure, "sparsegpt", nm="2:4"), ids, progress=False)
    for lin in structure.linears:
        groups = (lin.weight_matrix() == 0).reshape(lin.shape[0], -1, 4)
        assert (groups.sum(dim=2) >= 2).all(), lin.name


def test_sequential_differs_from_oneshot_and_both_are_deterministic():
    ids = random_tokens(6, 24)

    def weights(mode: str) -> list[torch.Tensor]:
        model = tiny_model("llama", seed=1)
        prune(model, make_spec(discover(model), "wanda", 0.6, mode=mode), ids, progress=False)
        return [lin.weight_matrix().clone() for lin in discover(model).linears]

    seq_a, seq_b, one_a, one_b = weights("sequential"), weights("sequential"), weights("oneshot"), weights("oneshot")
    assert all(torch.equal(a, b) for a, b in zip(seq_a, seq_b))
    assert all(torch.equal(a, b) for a, b in zip(one_a, one_b))
    first_block = len(discover(tiny_model("llama")).linears_in_block(0))
    assert all(torch.equal(a, b) for a, b in zip(seq_a[:first_block], one_a[:first_block]))  # same inputs
    assert any(not torch.equal(a, b) for a, b in zip(seq_a[first_block:], one_a[first_block:]))


def test_per_layer_sparsity_map_with_block_and_linear_keys():
    model, ids = tiny_model("qwen3"), random_tokens(4, 16)
    structure = discover(model)
    first = structure.linears_in_block(0)[0].name
    ratios = {"model.layers.1": 0.7, first: 0.3}
    prune(model, make_spec(structure, "wanda", ratios), ids, progress=False)
    report = sparsity_report(model, structure)
    assert report.linears[first].sparsity == pytest.approx(0.3, abs=0.02)
    assert report.blocks[1].sparsity == pytest.approx(0.7, abs=0.02)
    assert report.blocks[2].sparsity == 0.0
    with pytest.raises(ValueError, match="unknown layer or block names"):
        resolve_sparsity_map(structure, {"model.layers.9": 0.5})


def test_nan_statistics_fail_cleanly_and_restore_every_layer():
    model, ids = tiny_model("llama"), random_tokens(4, 16)
    structure = discover(model)
    before = [lin.weight_matrix().clone() for lin in structure.linears]
    with torch.no_grad():
        structure.blocks[2].input_layernorm.weight.fill_(float("nan"))  # block 2's linears see NaN inputs
    with pytest.raises(NonFiniteStatisticsError, match="model.layers.2"):
        prune(model, make_spec(structure, "sparsegpt", 0.5), ids, progress=False)
    assert all(torch.equal(a, lin.weight_matrix()) for a, lin in zip(before, structure.linears))


def test_bad_inputs_are_rejected_before_anything_changes():
    model = tiny_model("llama")
    structure = discover(model)
    with pytest.raises(ValueError, match="choose one of magnitude, wanda, sparsegpt"):
        make_spec(structure, "owl", 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        make_spec(structure, "wanda", 1.0)
    with pytest.raises(ValueError, match="N < M"):
        make_spec(structure, "wanda", nm="4:2")
    with pytest.raises(ValueError, match="contradicts"):
        make_spec(structure, "wanda", 0.7, nm="2:4")
    with pytest.raises(ValueError, match="calibration token ids"):
        prune(model, make_spec(structure, "wanda", 0.5), None, progress=False)
    assert sparsity_report(model, structure).global_sparsity == 0.0


def test_model_without_linear_layers_is_rejected():
    model = nn.Sequential(nn.Embedding(10, 4), nn.ModuleList([nn.LayerNorm(4), nn.LayerNorm(4)]))
    with pytest.raises(StructureError, match="no nn.ModuleList"):
        discover(model)


def test_layer_statistics_are_fp32_for_bf16_models():
    model, ids = tiny_model("llama").to(torch.bfloat16), random_tokens(2, 16)
    structure = discover(model)
    prune(model, make_spec(structure, "sparsegpt", 0.5), ids, progress=False)
    assert sparsity_report(model, structure).global_sparsity == pytest.approx(0.5, abs=0.01)
    assert LayerStatistics(4, "cpu", hessian=True).sq_norm.dtype == torch.float32
