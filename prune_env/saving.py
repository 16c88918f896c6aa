"""Save a pruned model (safetensors, loadable by ``from_pretrained``) with a JSON sparsity report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

REPORT_FILE = "prune_report.json"


def save_pruned(model: nn.Module, tokenizer: Any, out_dir: str | Path, report: dict[str, Any]) -> Path:
    """Write ``model`` and ``tokenizer`` with ``save_pretrained`` and ``report`` as ``prune_report.json``.

    Zeros are stored as ordinary dense safetensors, so any tool that reads a Hugging Face checkpoint
    (``from_pretrained``, lm-eval's ``hf`` model, vLLM) loads the pruned model unchanged.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return out


def load_report(model_dir: str | Path) -> dict[str, Any]:
    """The sparsity report saved next to a pruned model."""
    path = Path(model_dir) / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {model_dir} was not saved by prune-gym (no {REPORT_FILE})")
    return json.loads(path.read_text())
