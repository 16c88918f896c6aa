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


def _tiny_llama_dir(out: Path, tokenizer_dir: Path, layers: int, seed: int) -> Path:
    """Save a random Llama (hidden 64) with ``layers`` blocks and the tokenizer of ``tokenizer_dir`` into ``out``."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """A 2-block random Llama (hidden 64) with SmolLM2's real tokenizer: fast end-to-end runs on real text."""
    return _tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"), default_model_dir, layers=2, seed=0)


@pytest.fixture(scope="session")
def tiny_llm4_dir(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    """Like ``tiny_llm_dir`` with 4 blocks, so per-unit profiles and z-scores have some spread."""
    return _tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama4"), default_model_dir, layers=4, seed=1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: far faster than two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
