"""``uniform-<kernel>``: every unit at the same sparsity, reached in equal steps of the largest level."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..base import EnvView
from .planned import PlannedPolicy

KERNELS = ("magnitude", "wanda", "sparsegpt")


class UniformPolicy(PlannedPolicy):
    """Plan ``target`` for every unit. The env's ``method`` must be ``kernel`` (the registry builds it so)."""

    def __init__(self, kernel: str = "wanda") -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"uniform: kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.kernel = kernel
        self.name = f"uniform-{kernel}"

    def plan(self, view: EnvView, obs: dict[str, np.ndarray], info: dict[str, Any]) -> np.ndarray:
        check_method(self.name, self.kernel, view)
        return np.full(view.n_units, view.target_sparsity)


def check_method(policy: str, kernel: str, view: EnvView) -> None:
    """A kernel-named policy must run on an env that prunes with that kernel, or its name would lie."""
    if view.method != kernel:
        raise ValueError(f"{policy} needs an env with method={kernel!r}, got {view.method!r}: build the env with "
                         f"policies.registry.required_method({policy!r})")
