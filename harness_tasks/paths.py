"""Where the harness data and task YAMLs live: ``<prune-gym cache>/harness/``.

The cache root follows ``prune_env.models.cache_dir`` (``$PRUNE_GYM_CACHE`` or ``~/.cache/prune-gym``);
those two lines are repeated here so that resolving a path does not import ``prune_env`` (and torch).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["harness_root"]


def harness_root() -> Path:
    """``<cache>/harness`` where ``<cache>`` is ``$PRUNE_GYM_CACHE`` or ``~/.cache/prune-gym``."""
    env = os.environ.get("PRUNE_GYM_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "prune-gym"
    return root / "harness"
