"""Write benchmark results into one marked section of ``docs/BENCHMARKS.md`` (other sections untouched)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def machine_description() -> str:
    """CPU architecture, torch threads, GPU (if any) and torch version: the 'machine' line of a result."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}"


def write_section(path: Path, name: str, heading: str, body: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` (append it under
    ``heading`` if the markers are missing), reading the file right before writing it."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + f"\n\n## {heading}\n\n{block}\n"
    path.write_text(doc)
    print(f"wrote {path}")
