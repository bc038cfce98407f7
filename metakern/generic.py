"""The generic (model-agnostic) path: any ``nn.Module``, through torch.func.

Adaptation runs per task under ``vmap`` with ``functional_call`` and ``grad``;
the outer autograd differentiates through it, so second-order MAML works for
models the fused kernels do not cover (CNNs, bias-free layers, normalisation).
It keeps the whole unrolled graph, as torch.func always does; the fused path
exists to avoid exactly that.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap


def task_loss(pred: Tensor, y: Tensor, loss: str) -> Tensor:
    """Mean loss of one task."""
    if loss == "mse":
        return F.mse_loss(pred, y)
    return F.cross_entropy(pred, y)


def adapt(module: nn.Module, params: Dict[str, Tensor], buffers: Dict[str, Tensor], lrs: Dict[str, Tensor],
          x: Tensor, y: Tensor, *, steps: int, loss: str, first_order: bool) -> Dict[str, Tensor]:
    """Adapted parameters ``{name: [T, *shape]}`` after ``steps`` inner SGD steps per task.

    ``params`` are shared (no task dimension); ``lrs[name]`` is a 0-dim tensor or a
    tensor of that parameter's shape.
    """

    def one_task(xt: Tensor, yt: Tensor):
        def inner_loss(p):
            return task_loss(functional_call(module, (p, buffers), (xt,)), yt, loss)

        p = params
        for _ in range(steps):
            g = grad(inner_loss)(p)
            if first_order:
                g = {n: v.detach() for n, v in g.items()}
            p = {n: p[n] - lrs[n] * g[n] for n in p}
        # A fresh tensor per task even for steps == 0 (vmap needs batched outputs).
        return {n: v + torch.zeros_like(xt.reshape(-1)[:1]).sum() for n, v in p.items()}

    return vmap(one_task, randomness="different")(x, y)


def forward(module: nn.Module, params: Dict[str, Tensor], buffers: Dict[str, Tensor], x: Tensor) -> Tensor:
    """``module`` applied per task with its own parameters: ``x`` ``[T, N, ...]``."""

    def one_task(p, xt):
        return functional_call(module, (p, buffers), (xt,))

    return vmap(one_task, randomness="different")(params, x)
