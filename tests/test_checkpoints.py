"""Copy-on-write unit checkpoints on real tiny models: exact restores, byte accounting, mask compression."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import ARCHITECTURES, LAYERS, tiny_model

from prune_env.checkpoints import (
    CheckpointKeyError,
    CheckpointStore,
    InMemoryDenseWeights,
    Unit,
    make_units,
)
from prune_env.sparsify import magnitude_sparsify
from prune_env.structure import discover

# ------------------------------------------------------------------------------------------------ helpers


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _assert_bitwise(model: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """Every parameter equals the snapshot bit for bit (torch.equal alone ignores the sign of zero)."""
    params = dict(model.named_parameters())
    assert params.keys() == snapshot.keys()
    for name, p in params.items():
        assert torch.equal(_bits(p), _bits(snapshot[name])), name


def _setup(arch: str, granularity: str = "block", dense: bool = False, seed: int = 0):
    model = tiny_model(arch, seed)
    structure = discover(model)
    units = make_units(structure, granularity)
    provider = InMemoryDenseWeights(structure) if dense else None
    return model, units, CheckpointStore(units, dense=provider)


def _prune(store: CheckpointStore, unit: Unit, sparsity: float) -> None:
    """Magnitude-prune each linear of ``unit`` from its current weight (kept weights untouched)."""
    with store.changing(unit.name):
        for lin in unit.linears:
            lin.set_weight_matrix(magnitude_sparsify(lin.weight_matrix(), sparsity).weight)


def _update_kept(store: CheckpointStore, unit: Unit, sparsity: float = 0.5) -> None:
    """SparseGPT-like: prune and change the kept weights too."""
    with store.changing(unit.name):
        for lin in unit.linears:
            result = magnitude_sparsify(lin.weight_matrix(), sparsity)
            lin.set_weight_matrix(result.weight * 1.5)


def _full_bytes(unit: Unit) -> int:
    return sum(lin.numel * lin.module.weight.element_size() for lin in unit.linears)


def _mask_bytes(unit: Unit) -> int:
    return sum(math.ceil(lin.numel / 8) for lin in unit.linears)


def _weight_versions(units: list[Unit]) -> dict[str, list[int]]:
    return {u.name: [lin.module.weight._version for lin in u.linears] for u in units}


# ------------------------------------------------------------------------------------------------- units


@pytest.mark.parametrize(("arch", "block_prefix", "per_block"), [("llama", "model.layers", 7),
                                                                  ("gpt2", "transformer.h", 4)])
def test_make_units_by_block(arch, block_prefix, per_block):
    structure = discover(tiny_model(arch))
    units = make_units(structure, "block")
    assert [u.name for u in units] == [f"{block_prefix}.{i}" for i in range(LAYERS)]
    for i, unit in enumerate(units):
        assert unit.blocks == (i,)
        assert len(unit.linears) == per_block
        assert unit.linears == tuple(structure.linears_in_block(i))
        assert unit.numel == sum(lin.module.weight.numel() for lin in unit.linears)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_make_units_by_linear(arch):
    structure = discover(tiny_model(arch))
    units = make_units(structure, "linear")
    assert [u.name for u in units] == structure.names()
    assert all(u.linears == (lin,) and u.blocks == (lin.block,) for u, lin in zip(units, structure.linears))
    assert sum(u.numel for u in units) == sum(lin.numel for lin in structure.linears)


def test_unknown_granularity_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'layer'.*block, linear"):
        make_units(discover(tiny_model("llama")), "layer")


# ------------------------------------------------------------------------------------------ exact restore


@pytest.mark.parametrize("dense", [False, True], ids=["full", "mask"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bitwise_restore_after_changes_and_rollbacks(arch, dense):
    model, units, store = _setup(arch, dense=dense)
    a, b, c = units
    snaps = {store.save({"step": 0}): _snapshot(model)}
    _prune(store, a, 0.5)
    snaps[store.save({"step": 1})] = _snapshot(model)
    _prune(store, b, 0.5)
    _prune(store, a, 0.7)
    snaps[store.save({"step": 2})] = _snapshot(model)
    _update_kept(store, c)  # a rejected step
    assert store.restore("last") == ([c.name], {"step": 2})
    _assert_bitwise(model, snaps[2])

    assert store.restore(1)[1] == {"step": 1}  # roll back two steps, then branch off
    _assert_bitwise(model, snaps[1])
    _update_kept(store, b)
    _prune(store, c, 0.6)
    snaps[store.save({"step": 3})] = _snapshot(model)
    for checkpoint_id in (2, 0, 3, 1, 2, 3):  # jump around, forward into the abandoned branch too
        store.restore(checkpoint_id)
        _assert_bitwise(model, snaps[checkpoint_id])


def test_restore_writes_only_the_differing_units_in_place():
    model, units, store = _setup("llama", granularity="linear")
    store.save()
    _prune(store, units[0], 0.5)
    _prune(store, units[5], 0.5)
    store.save()
    _prune(store, units[5], 0.8)
    _prune(store, units[9], 0.5)
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    before = _weight_versions(units)

    written, _ = store.restore(1)

    assert written == [units[5].name, units[9].name]
    after = _weight_versions(units)
    for unit in units:
        changed = [x != y for x, y in zip(before[unit.name], after[unit.name])]
        assert all(changed) if unit.name in written else not any(changed), unit.name
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == pointers
    assert store.restore(1)[0] == []  # already there: nothing written
    assert _weight_versions(units) == after


def test_restore_rewrites_a_unit_announced_but_never_marked():
    """A failed write between about_to_change and mark_changed is still rolled back."""
    model, units, store = _setup("gpt2")
    snap = _snapshot(model)
    store.save()
    store.about_to_change(units[1].name)
    units[1].linears[0].set_weight_matrix(torch.zeros(units[1].linears[0].shape))
    assert store.restore("last")[0] == [units[1].name]
    _assert_bitwise(model, snap)


# ------------------------------------------------------------------------------------------------- bytes


def test_a_checkpoint_stores_only_the_changed_units():
    model, units, store = _setup("llama")
    store.save()
    assert store.nbytes() == 0
    _prune(store, units[1], 0.5)
    store.save()
    _prune(store, units[0], 0.5)
    _prune(store, units[2], 0.5)
    _prune(store, units[0], 0.7)  # twice in one step: its intermediate state is not copied
    store.save()
    _prune(store, units[2], 0.8)  # not saved yet: counts in the total only
    one, two = _full_bytes(units[1]), _full_bytes(units[0]) + _full_bytes(units[2])
    assert (store.nbytes(0), store.nbytes(1), store.nbytes(2)) == (0, one, two)
    assert store.nbytes() == one + two + _full_bytes(units[2])
    assert store.nbytes_by_form() == {"mask": 0, "full": store.nbytes()}
    assert one == 4 * units[1].numel


def test_about_to_change_copies_each_state_once():
    model, units, store = _setup("opt")
    store.save()
    for _ in range(3):
        store.about_to_change(units[0].name)
    assert store.nbytes() == _full_bytes(units[0])
    store.mark_changed(units[0].name)
    store.save()
    assert store.nbytes(1) == _full_bytes(units[0])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mask_form_costs_a_bit_per_weight_and_restores_exactly(arch):
    model, units, store = _setup(arch, dense=True)
    dense_snap = _snapshot(model)
    store.save()
    for unit in units:
        _prune(store, unit, 0.5)
    half_snap = _snapshot(model)
    store.save()
    assert store.nbytes(1) == 0  # the state replaced was the dense one: nothing to store
    for unit in units[:2]:
        _prune(store, unit, 0.7)
    store.save()

    expected = sum(_mask_bytes(u) for u in units[:2])
    assert store.nbytes(2) == expected
    assert store.nbytes_by_form(2) == {"mask": expected, "full": 0}
    assert expected * 32 == sum(_full_bytes(u) for u in units[:2])  # fp32: 1/32 of a full copy
    store.restore(1)
    _assert_bitwise(model, half_snap)
    store.restore(0)
    _assert_bitwise(model, dense_snap)


def test_bfloat16_model_in_both_forms():
    model = tiny_model("qwen2").to(torch.bfloat16)
    structure = discover(model)
    units = make_units(structure, "block")
    store = CheckpointStore(units, dense=InMemoryDenseWeights(structure))
    store.save()
    _prune(store, units[0], 0.5)
    _update_kept(store, units[1])
    snap = _snapshot(model)
    store.save()
    _prune(store, units[0], 0.8)
    _prune(store, units[1], 0.8)
    store.save()
    assert store.nbytes_by_form(2) == {"mask": _mask_bytes(units[0]), "full": 2 * units[1].numel}
    store.restore(1)
    _assert_bitwise(model, snap)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_model_keeps_full_copies_on_the_cpu():
    model = tiny_model("gpt2").cuda()
    units = make_units(discover(model), "block")
    store = CheckpointStore(units)
    store.save()
    snap = _snapshot(model)
    _update_kept(store, units[0])
    store.save()
    copy = next(iter(store._copies.values()))
    assert all(state.tensor.device.type == "cpu" for state in copy.states)
    store.restore(0)
    _assert_bitwise(model, snap)


def test_mask_form_is_exact_when_the_dense_weight_has_zeros():
    model = tiny_model("gpt2")
    lin = discover(model).linears[0]
    with torch.no_grad():
        w = lin.weight_matrix()
        w[0, :5] = 0.0
        w[1, :5] = -0.0  # also kept as is: only entries that change are in the mask
    structure = discover(model)
    units = make_units(structure, "linear")
    store = CheckpointStore(units, dense=InMemoryDenseWeights(structure))
    dense_snap = _snapshot(model)
    store.save()
    _prune(store, units[0], 0.5)
    pruned_snap = _snapshot(model)
    store.save()
    _prune(store, units[0], 0.9)
    store.save()
    assert store.nbytes_by_form(2) == {"mask": _mask_bytes(units[0]), "full": 0}
    store.restore(1)
    _assert_bitwise(model, pruned_snap)
    store.restore(0)
    _assert_bitwise(model, dense_snap)
    assert torch.equal(_bits(lin.weight_matrix()[1, :5]), _bits(torch.full((5,), -0.0)))


def test_changed_kept_weights_fall_back_to_a_full_copy():
    model, units, store = _setup("gpt2", dense=True)
    store.save()
    _update_kept(store, units[0])
    _prune(store, units[1], 0.5)
    snap = _snapshot(model)
    store.save()
    _update_kept(store, units[0], 0.6)
    _prune(store, units[1], 0.6)
    store.save()
    assert store.nbytes_by_form(2) == {"mask": _mask_bytes(units[1]), "full": _full_bytes(units[0])}
    store.restore(1)
    _assert_bitwise(model, snap)


def test_negative_zeros_from_multiplying_by_a_mask_fall_back_to_a_full_copy():
    """w * keep gives -0.0 for pruned negative weights; a mask would restore +0.0, so it is not used."""
    model, units, store = _setup("llama", granularity="linear", dense=True)
    store.save()
    lin = units[0].linears[0]
    with store.changing(units[0].name):
        result = magnitude_sparsify(lin.weight_matrix(), 0.5)
        lin.set_weight_matrix(lin.weight_matrix() * (~result.mask))
    snap = _snapshot(model)
    store.save()
    _prune(store, units[0], 0.7)
    store.save()
    assert store.nbytes_by_form(2) == {"mask": 0, "full": _full_bytes(units[0])}
    store.restore(1)
    _assert_bitwise(model, snap)


# ----------------------------------------------------------------------------------- last, discard, ids


def test_last_is_the_most_recent_save_or_restore():
    model, units, store = _setup("qwen3")
    assert store.last is None
    s0 = _snapshot(model)
    store.save({"n": 0})
    _prune(store, units[0], 0.5)
    s1 = _snapshot(model)
    store.save({"n": 1})
    assert store.last == 1
    _prune(store, units[1], 0.5)
    assert store.restore("last") == ([units[1].name], {"n": 1})
    _assert_bitwise(model, s1)
    store.restore(0)
    assert store.last == 0
    _prune(store, units[2], 0.5)
    assert store.restore("last") == ([units[2].name], {"n": 0})
    _assert_bitwise(model, s0)
    assert store.ids() == [0, 1]
    assert store.metadata("1") == {"n": 1}


def test_returned_metadata_is_a_copy():
    _, _, store = _setup("llama")
    store.save({"reward": 1.0})
    store.restore(0)[1]["reward"] = 2.0
    assert store.metadata(0) == {"reward": 1.0}


def test_discard_after_frees_copies_nothing_refers_to():
    model, units, store = _setup("llama", dense=True)
    u0, u1, u2 = units
    m0, m1, m2, f1 = _mask_bytes(u0), _mask_bytes(u1), _mask_bytes(u2), _full_bytes(u1)
    store.save()
    for unit in units:
        _prune(store, unit, 0.5)
    store.save()  # 1: all at 50%; costs 0: the states replaced were dense
    _prune(store, u0, 0.6)
    store.save()  # 2: u0@50% (mask)
    _prune(store, u0, 0.7)
    _update_kept(store, u1)
    store.save()  # 3: u0@60% and u1@50% (masks)
    _prune(store, u1, 0.9)  # not saved: u1 updated (full)
    assert [store.nbytes(i) for i in store.ids()] == [0, 0, m0, m0 + m1]
    assert store.nbytes() == 2 * m0 + m1 + f1

    store.restore(2)  # also copies u0@70%, which checkpoint 3 refers to
    snap2 = _snapshot(model)
    assert store.nbytes() == 3 * m0 + m1 + f1
    store.discard_after(2)  # frees u0@70% and u1 updated
    assert store.ids() == [0, 1, 2]
    assert store.nbytes() == 2 * m0 + m1
    store.discard_after(0)  # frees u0@50%; u0@60% and u1@50% are the current states: kept
    assert (store.ids(), store.last) == ([0], 0)
    assert store.nbytes() == m0 + m1
    _assert_bitwise(model, snap2)

    assert store.save() == 4  # ids are never reused
    store.restore(0)  # copies u2@50%, which checkpoint 4 refers to
    assert store.nbytes() == m0 + m1 + m2
    store.discard_after(0)
    assert store.nbytes() == 0


def test_discard_after_moves_last_back():
    _, units, store = _setup("llama")
    store.save()
    _prune(store, units[0], 0.5)
    store.save()
    store.discard_after(0)
    assert store.last == 0
    assert store.nbytes() == _full_bytes(units[0])  # the dense state (checkpoint 0); 50% is current
    assert store.restore("last")[0] == [units[0].name]


# ------------------------------------------------------------------------------------------------- errors


def test_unknown_checkpoint_ids_name_the_known_ones():
    _, units, store = _setup("llama")
    with pytest.raises(CheckpointKeyError, match="no checkpoint yet"):
        store.restore("last")
    store.save()
    store.save()
    for bad in (7, "first", 1.0, True, -1):
        with pytest.raises(KeyError, match=r"known ids: \[0, 1\]"):
            store.restore(bad)
    with pytest.raises(KeyError, match="known ids"):
        store.nbytes(5)
    with pytest.raises(KeyError, match="known ids"):
        store.discard_after(5)


def test_unknown_unit_names_are_rejected():
    _, _, store = _setup("llama")
    for call in (store.about_to_change, store.mark_changed, store.version):
        with pytest.raises(KeyError, match=r"unknown unit 'model\.layers\.9'.*'model\.layers\.0'"):
            call("model.layers.9")


def test_protocol_misuse_is_reported():
    model, units, store = _setup("llama")
    with pytest.raises(ValueError, match="duplicate unit"):
        CheckpointStore([units[0], units[0]])
    store.save()
    store.about_to_change(units[0].name)
    with pytest.raises(RuntimeError, match="mark_changed"):
        store.save()
    store.mark_changed(units[0].name)
    store.save()
    with pytest.raises(RuntimeError, match="without about_to_change"):
        store.mark_changed(units[0].name)
    with pytest.raises(RuntimeError, match="cannot be restored"):
        store.restore(1)
