"""Full fp32 precision for the kernels' matrix products (a pure utility, no global state left behind).

CUDA GPUs from Ampere on may run fp32 matmuls and convolutions in TF32 (a 10-bit mantissa), and oneDNN on
CPU may run them in bf16 or TF32, when the process allows it (``torch.backends.cuda.matmul.allow_tf32``,
``torch.set_float32_matmul_precision("high")``, the ``fp32_precision`` settings of PyTorch >= 2.9). The
reference SparseGPT and Wanda code turns TF32 off: the Hessian ``2 X X^T / N`` summed over many tokens and
SparseGPT's error propagation lose accuracy at TF32. :func:`full_fp32_precision` forces IEEE fp32 inside the
``with`` block and puts every setting back afterwards, also when the block raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_LEAVES = (("cuda", "matmul"), ("cudnn", "conv"), ("cudnn", "rnn"), ("mkldnn", "matmul"), ("mkldnn", "conv"),
           ("mkldnn", "rnn"))


def _precision_leaves() -> list[object] | None:
    """The per-operation ``fp32_precision`` settings of PyTorch >= 2.9, or ``None`` on older versions."""
    leaves = []
    for backend, op in _LEAVES:
        node = getattr(getattr(torch.backends, backend, None), op, None)
        if node is None or not hasattr(node, "fp32_precision"):
            return None
        leaves.append(node)
    return leaves


@contextmanager
def full_fp32_precision() -> Iterator[None]:
    """Run the block with TF32 (and oneDNN's bf16/TF32 fp32 mode) off; restore the caller's settings after.

    On PyTorch >= 2.9 only the new ``fp32_precision`` API is used (each operation's setting is set to
    ``"ieee"``): mixing it with the legacy flags makes PyTorch raise on later reads. Older versions get the
    legacy ``allow_tf32`` flags and ``torch.set_float32_matmul_precision("highest")``.
    """
    leaves = _precision_leaves()
    if leaves is not None:
        saved = [(node, node.fp32_precision) for node in leaves]
        try:
            for node, _ in saved:
                node.fp32_precision = "ieee"
            yield
        finally:
            for node, value in reversed(saved):
                node.fp32_precision = value
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn
        torch.backends.cuda.matmul.allow_tf32 = matmul


def fp32_precision_settings() -> dict[str, str]:
    """The current reduced-precision settings, by name (to check or log what a run used)."""
    leaves = _precision_leaves()
    if leaves is not None:
        return {f"{backend}.{op}": str(node.fp32_precision) for (backend, op), node in zip(_LEAVES, leaves)}
    return {"cuda.matmul.allow_tf32": str(torch.backends.cuda.matmul.allow_tf32),
            "cudnn.allow_tf32": str(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def is_full_fp32() -> bool:
    """Whether every fp32 matmul/convolution currently runs in IEEE fp32 (as inside :func:`full_fp32_precision`)."""
    settings = fp32_precision_settings()
    if _precision_leaves() is not None:
        return all(value == "ieee" for value in settings.values())
    return settings == {"cuda.matmul.allow_tf32": "False", "cudnn.allow_tf32": "False",
                        "float32_matmul_precision": "highest"}
