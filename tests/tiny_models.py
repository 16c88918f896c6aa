"""Tiny randomly initialised causal LMs of several architectures, built from configs (no downloads)."""

from __future__ import annotations

import math

import torch
import transformers as tf

VOCAB = 128
HIDDEN = 32
LAYERS = 3


def _configs() -> dict[str, tf.PretrainedConfig]:
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return {
        "llama": tf.LlamaConfig(**common),
        "qwen2": tf.Qwen2Config(**common),
        "qwen3": tf.Qwen3Config(**common, head_dim=8),
        "gemma3": tf.Gemma3TextConfig(**common, head_dim=8, sliding_window=8, query_pre_attn_scalar=8,
                                      layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
        "gpt2": tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=256,
                              bos_token_id=0, eos_token_id=0),
        "gpt_neox": tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64,
                                     num_hidden_layers=LAYERS, num_attention_heads=4, max_position_embeddings=256),
        "opt": tf.OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=64, num_hidden_layers=LAYERS,
                            num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=HIDDEN),
    }


ARCHITECTURES = tuple(_configs())


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A tiny fp32 causal LM of ``arch`` with seeded random weights, in eval mode."""
    config = _configs()[arch]
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.use_cache = False
    return model.eval()


def random_tokens(n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, seqlen), generator=gen)


def correlated_layer(rows: int, cols: int, tokens: int, seed: int, *, outliers: int,
                     scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``(rows, cols)`` weight and ``[tokens, cols]`` correlated inputs whose ``outliers`` features are
    ``scale`` times larger, like real LLM activations (the kernels' test layer)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen)
    mix = torch.randn(cols, cols, generator=gen) / math.sqrt(cols)
    gain = torch.ones(cols)
    gain[torch.randperm(cols, generator=gen)[:outliers]] = scale
    x = (torch.randn(tokens, cols, generator=gen) @ (torch.eye(cols) + 0.8 * mix)) * gain
    return weight, x
