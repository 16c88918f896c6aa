"""Shared fixtures: a tiny random Llama that carries the real SmolLM2 tokenizer, saved as a local model dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from prune_env.models import DEFAULT_MODEL, materialize_preset


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The converted default preset (converted once per machine, then cached)."""
    return materialize_preset(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """A 2-block random Llama (hidden 64) with SmolLM2's real tokenizer: fast end-to-end runs on real text."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llm4_dir(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """Like ``tiny_llm_dir`` with 4 blocks, so per-unit profiles and z-scores have some spread."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama4")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
