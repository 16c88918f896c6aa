"""Pure pruning kernels: tensors in, pruned tensors and masks out. No hooks, no models.

Every kernel takes a weight in ``(out_features, in_features)`` layout and returns a :class:`SparsifyResult`
(an fp32 pruned weight and a boolean mask, ``True`` = pruned).
"""

from .magnitude import magnitude_scores, magnitude_sparsify
from .patterns import NM, check_ratio, select
from .precision import full_fp32_precision
from .result import SparsifyResult
from .sparsegpt import sparsegpt_sparsify
from .wanda import wanda_scores, wanda_sparsify

METHODS = ("magnitude", "wanda", "sparsegpt")

__all__ = [
    "METHODS",
    "NM",
    "SparsifyResult",
    "check_ratio",
    "full_fp32_precision",
    "magnitude_scores",
    "magnitude_sparsify",
    "select",
    "sparsegpt_sparsify",
    "wanda_scores",
    "wanda_sparsify",
]
