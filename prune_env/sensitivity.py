"""Measure the gradient part of the sensitivity profile on a model (orchestration: backward passes, hooks).

Only the prunable linear weights get gradients; each weight's gradient is consumed by a post-accumulate
hook as soon as it is ready and then freed, so peak memory stays at one layer's gradient plus activations.
"""

from __future__ import annotations

import torch
from torch import nn

from .calibration import model_device
from .profiles import TaylorAccumulator
from .structure import ModelStructure


def gradient_importance(model: nn.Module, structure: ModelStructure, token_ids: torch.Tensor) -> TaylorAccumulator:
    """Per-linear ``sum |W * dL_i/dW|`` over the windows in ``token_ids`` (one backward pass per window).

    ``requires_grad`` flags and any existing ``.grad`` are restored afterwards; the weights are not changed.
    """
    acc = TaylorAccumulator()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    prunable = {id(lin.module.weight): lin for lin in structure.linears}
    saved_grads = {name: p.grad for name, p in model.named_parameters()}
    handles = []
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in prunable)
            p.grad = None
        for lin in structure.linears:
            def consume(param: torch.Tensor, lin=lin) -> None:
                grad = param.grad.t() if lin.transposed else param.grad
                acc.add(lin.name, lin.weight_matrix(), grad)
                param.grad = None

            handles.append(lin.module.weight.register_post_accumulate_grad_hook(consume))
        device = model_device(model)
        was_training = model.training
        model.eval()
        with torch.enable_grad():
            for window in token_ids:
                ids = window.unsqueeze(0).to(device)
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                if not torch.isfinite(loss):
                    raise FloatingPointError("non-finite loss while measuring gradient importance")
                loss.backward()
                acc.samples += 1
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = saved_grads[name]
    return acc
