"""A pruned model saved by prune-gym loads back bitwise with from_pretrained, with its report."""

from __future__ import annotations

import pytest
import torch
from tiny_models import random_tokens, tiny_model
from transformers import AutoModelForCausalLM

from prune_env.pruner import make_spec, prune
from prune_env.saving import REPORT_FILE, load_report, save_pruned
from prune_env.sparsity import sparsity_report
from prune_env.structure import discover


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_save_load_round_trip_is_exact(arch, tmp_path):
    model = tiny_model(arch)
    structure = discover(model)
    prune(model, make_spec(structure, "wanda", 0.5), random_tokens(4, 16), progress=False)
    report = sparsity_report(model, structure).as_dict()
    save_pruned(model, None, tmp_path, {"sparsity_report": report})
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / REPORT_FILE).is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    original = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert sparsity_report(loaded, discover(loaded)).as_dict() == report
    assert load_report(tmp_path)["sparsity_report"]["global_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_load_report_of_a_foreign_directory_says_why(tmp_path):
    with pytest.raises(FileNotFoundError, match="not saved by prune-gym"):
        load_report(tmp_path)
