"""``random:<shape>`` models: seeded random weights of a known architecture and a byte tokenizer, no download."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from prune_env.models import RANDOM_SHAPES, byte_tokenizer, load_model, random_model_config
from prune_env.structure import discover


def test_tiny_shape_loads_seeded_on_the_cpu_and_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = load_model("random:qwen3-tiny", device="cpu")
    assert torch.equal(torch.rand(3), expected_next)  # the build ran under its own generator state
    again = load_model("random:qwen3-tiny", device="cpu")
    for (name, pa), pb in zip(a.model.named_parameters(), again.model.parameters()):
        assert torch.equal(pa, pb), name  # seeded: the same weights every time
    assert a.source == "random:qwen3-tiny" and a.weights_dir is None and a.needs_bos is False
    assert a.dtype == torch.float32 and a.model.config.use_cache is False
    assert len(discover(a.model).blocks) == 4
    b = load_model("random:qwen3-tiny", device="cpu", dtype="bfloat16")
    assert {p.dtype for p in b.model.parameters()} == {torch.bfloat16}


def test_byte_tokenizer_round_trips_utf8_bytes():
    tok = byte_tokenizer()
    text = "Zürich: 3 µm — naïve\n\n\tend."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert len(tok) == 257 and tok.eos_token_id == tok.pad_token_id == 256


def test_qwen3_4b_shape_matches_the_published_model():
    config = random_model_config("qwen3-4b")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.head_dim, config.intermediate_size, config.vocab_size) == (2560, 36, 32, 8, 128, 9728, 151936)
    assert config.tie_word_embeddings
    with torch.device("meta"):  # shapes only: no memory, no time
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    assert params == 4_022_468_096  # Qwen3-4B: 4.02 B parameters with the embedding tied to the LM head


def test_unknown_shape_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown random shape 'llama-9b'.*qwen3-4b, qwen3-tiny"):
        load_model("random:llama-9b", device="cpu")
    assert set(RANDOM_SHAPES) >= {"qwen3-4b", "qwen3-tiny"}
