"""The ``prune`` job: load a model and text, measure dense perplexity, prune, measure again, save."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from prune_env.models import DEFAULT_MODEL, load_model
from prune_env.perplexity import perplexity
from prune_env.pruner import make_spec, prune
from prune_env.saving import save_pruned
from prune_env.sparsify import NM, check_ratio
from prune_env.sparsity import sparsity_report
from prune_env.structure import discover
from prune_env.text import build_token_sets, default_seqlen, load_text

from .benchdoc import machine_description


@dataclass
class PruneJobConfig:
    """Everything one ``prune-gym prune`` run needs; ``None`` sizes pick device-dependent defaults."""

    model: str = DEFAULT_MODEL
    method: str = "wanda"
    sparsity: float | None = None
    nm: str | None = None
    mode: str = "sequential"
    text: str = "wiki"
    calib_samples: int = 64
    eval_samples: int = 32
    seqlen: int | None = None
    batch_size: int = 8
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    out: str | None = None

    def validate(self) -> None:
        """Cheap checks that need no model, so bad flags fail in milliseconds."""
        if self.nm is not None:
            NM.parse(self.nm)
        elif self.sparsity is None:
            raise ValueError("give --sparsity S (e.g. 0.5) or --nm N:M (e.g. 2:4)")
        else:
            check_ratio(self.sparsity)
        for name in ("calib_samples", "eval_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.seqlen is not None and self.seqlen < 2:
            raise ValueError(f"--seqlen must be >= 2, got {self.seqlen}")


def run_prune_job(config: PruneJobConfig, *, progress: bool = True, log=print) -> dict[str, Any]:
    """Run one prune job end to end and return its metrics (also written to ``<out>/prune_report.json``)."""
    config.validate()
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    loaded = load_model(config.model, device=config.device, dtype=config.dtype)
    model, structure = loaded.model, discover(loaded.model)
    spec = make_spec(structure, config.method, config.sparsity, config.nm, config.mode)
    seqlen = config.seqlen or default_seqlen(loaded.device)
    tokens = build_token_sets(
        loaded.tokenizer, load_text(config.text), seqlen=seqlen, n_calib=config.calib_samples,
        n_test=config.eval_samples, seed=config.seed, needs_bos=loaded.needs_bos,
    )
    log(f"model {loaded.source}: {structure.num_blocks} blocks, {len(structure.linears)} prunable linears "
        f"on {loaded.device} ({loaded.dtype}); {config.calib_samples} calibration and {config.eval_samples} "
        f"evaluation windows of {seqlen} tokens from {config.text!r}")
    dense = perplexity(model, tokens.eval, batch_size=config.batch_size, progress=progress)
    log(f"dense perplexity {dense.ppl:.3f}")
    result = prune(model, spec, tokens.calib, structure=structure, batch_size=config.batch_size, progress=progress)
    pruned = perplexity(model, tokens.eval, batch_size=config.batch_size, progress=progress)
    report = sparsity_report(model, structure)
    metrics: dict[str, Any] = {
        "model": loaded.source,
        "method": config.method,
        "target": spec.nm.sparsity if spec.nm else config.sparsity,
        "nm": str(spec.nm) if spec.nm else None,
        "mode": config.mode,
        "dense_ppl": dense.ppl,
        "ppl": pruned.ppl,
        "sparsity": report.global_sparsity,
        "sparsity_all_parameters": report.all_parameters.sparsity,
        "seconds": result.seconds,
        "total_seconds": time.perf_counter() - started,
        "eval_tokens": pruned.tokens,
        "tokens": tokens.describe(),
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "machine": machine_description(),
        "config": asdict(config),
    }
    log(f"{config.method} {metrics['nm'] or config.sparsity}: perplexity {pruned.ppl:.3f} "
        f"(dense {dense.ppl:.3f}), sparsity {report.global_sparsity:.4f} of prunable weights "
        f"({report.all_parameters.sparsity:.4f} of all), pruned in {result.seconds:.1f} s")
    if config.out:
        out = save_pruned(model, loaded.tokenizer, config.out, {**metrics, "sparsity_report": report.as_dict()})
        metrics["out"] = str(out)
        log(f"saved the pruned model and {Path(out, 'prune_report.json')}")
    return metrics


def dumps(metrics: dict[str, Any]) -> str:
    return json.dumps(metrics, sort_keys=True)
