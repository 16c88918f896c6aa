"""Hugging Face offline mode for the duration of an evaluation of offline tasks.

``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` are read by huggingface_hub and datasets when they are
imported, so setting the environment is not enough once they are loaded: their module-level flags are
switched too, and everything is restored afterwards (an online evaluation later in the same process is
unaffected).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator

__all__ = ["offline_mode"]

_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_FLAGS = (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
          ("datasets.config", "HF_DATASETS_OFFLINE"))


@contextlib.contextmanager
def offline_mode() -> Iterator[None]:
    """No hub or dataset downloads inside the block (they fail fast instead of hanging on a network)."""
    saved_env = {name: os.environ.get(name) for name in _ENV}
    saved_flags = []
    for module_name, attr in _FLAGS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, attr):
            saved_flags.append((module, attr, getattr(module, attr)))
            setattr(module, attr, True)
    os.environ.update({name: "1" for name in _ENV})
    try:
        yield
    finally:
        for module, attr, value in saved_flags:
            setattr(module, attr, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
