"""Functional API: fused batched adaptation and the batched MLP forward.

>>> import torch, metakern.functional as MF
>>> T, N = 4, 10
>>> params = [torch.randn(40, 1), torch.zeros(40), torch.randn(1, 40) * 0.1, torch.zeros(1)]
>>> x, y = torch.randn(T, N, 1), torch.randn(T, N, 1)
>>> fast = MF.adapt(params, x, y, lr=0.01, steps=2, activation="tanh")  # [T, 40, 1], [T, 40], [T, 1, 40], [T, 1]
>>> fast.activation                                       # remembered: forward runs the same network
'tanh'
>>> MF.forward(fast, x).shape
torch.Size([4, 10, 1])
>>> MF.forward(params, x, activation="tanh").shape        # a plain list needs the activation
torch.Size([4, 10, 1])
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from . import _ops
from . import _validate as V
from ._contract import ACTIVATIONS, LOSSES, AdaptedParams, unpack_params
from ._validate import LrLike


def adapt(params: Sequence[Tensor], x: Tensor, y: Tensor, *, lr: LrLike, steps: int = 1, loss: str = "mse",
          activation: str = "relu", first_order: bool = False, backend: str = "auto") -> AdaptedParams:
    """Run ``steps`` inner SGD steps for every task at once.

    Args:
        params: ``[W1, b1, W2, b2, ...]`` of an MLP in ``nn.Linear`` layout; each
            shared (``[out, in]`` / ``[out]``) or per task (leading ``T``).
        x: ``[T, N, D]`` support inputs.
        y: ``[T, N, O]`` float targets (``loss="mse"``) or ``[T, N]`` int64 class
            indices (``loss="cross_entropy"``).
        lr: inner learning rates, learnable when given as tensors: a float; a 0-dim
            tensor; a ``[K]`` tensor (one rate per inner step, ``K == steps``); or a
            list with one entry per parameter, each a float or 0-dim tensor (one
            rate for that tensor), a tensor of the parameter's shared shape
            (Meta-SGD), a ``[K]`` tensor (one rate per tensor and step: MAML++'s
            LSLR) or a ``[K, *shape]`` tensor (per step and element). A ``[K]``
            entry for a parameter whose shape is itself ``(K,)`` is read as that
            shape (Meta-SGD); pass ``[K, K]`` for per-step rates there.
        steps: number of inner steps ``K >= 0``.
        loss: ``"mse"`` or ``"cross_entropy"``, the per-task mean over its points.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"identity"``, between
            layers (none after the last).
        first_order: treat inner gradients as constants (FOMAML).
        backend: ``"auto"``, ``"torch"``, ``"cpp"``, ``"triton"`` or ``"cuda"``.

    Returns:
        The adapted parameters, each ``[T, *shape]``; differentiable with respect to
        ``params``, ``lr`` and ``x`` (exact second order unless ``first_order``). The
        list is an :class:`AdaptedParams`: its ``activation`` attribute remembers
        ``activation``, and :func:`forward` uses it.
    """
    p = V.adapt_problem(params, x, y, lr=lr, steps=steps, loss=loss, activation=activation,
                        first_order=first_order, backend=backend)
    return AdaptedParams(unpack_params(_ops.adapt(p), p.dims), activation)


def meta_loss(params: Sequence[Tensor], xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, *, lr: LrLike,
              steps: int = 1, loss: str = "mse", activation: str = "relu", first_order: bool = False,
              backend: str = "auto", reduction: str = "mean", step_weights=None) -> Tensor:
    """The MAML objective: adapt on the support set, evaluate on the query set.

    Equal to ``loss(forward(adapt(params, xs, ys, ...), xq), yq)`` per task, reduced
    over tasks (``"mean"``, ``"sum"`` or ``"none"`` for the ``[T]`` per-task losses;
    each task's loss is the mean over its query points). Where the backend has a
    fused kernel for it (``cpp``, ``torch``) it is one op that computes the losses
    and their gradient in a single walk of the inner loop, with no recomputation in
    the backward; elsewhere, or when ``xs`` / ``xq`` need a gradient, it composes
    :func:`adapt` and :func:`forward`. Arguments as :func:`adapt`; ``xq`` is
    ``[T, Nq, D]`` and ``yq`` its targets.

    ``step_weights`` (MAML++'s multi-step loss): ``None`` (the default) for the query
    loss after the last step alone, or ``K`` weights (a ``[K]`` tensor or a list of
    floats, constants) for ``sum_{k=1..K} w[k-1] * L_query(theta_k)`` per task, the
    query loss after every inner step weighted; its exact meta-gradient comes from
    the same single walk of the inner loop on ``cpp`` and ``torch`` (the other
    backends compose one single-step adaptation per step).

    >>> import torch, metakern.functional as MF
    >>> params = [torch.randn(40, 1), torch.zeros(40), torch.randn(1, 40) * 0.1, torch.zeros(1)]
    >>> xs, ys, xq, yq = torch.randn(4, 5, 1), torch.randn(4, 5, 1), torch.randn(4, 7, 1), torch.randn(4, 7, 1)
    >>> MF.meta_loss(params, xs, ys, xq, yq, lr=0.01, reduction="none").shape
    torch.Size([4])
    """
    p = V.maml_problem(params, xs, ys, xq, yq, lr=lr, steps=steps, loss=loss, activation=activation,
                       first_order=first_order, backend=backend, reduction=reduction, step_weights=step_weights)
    return _ops.meta_loss(p)


def forward(params: Sequence[Tensor], x: Tensor, *, activation: Optional[str] = None,
            backend: str = "auto") -> Tensor:
    """Batched MLP forward: ``[T, N, O]`` for ``x`` ``[T, N, D]``.

    ``params`` as in :func:`adapt` (shared or per task). ``activation`` has no default:
    the list :func:`adapt` returns (and a fast model's ``params``) carries the one it
    was adapted with, which is used when ``activation`` is left out (giving another
    one is a ``ValueError``); a plain list needs it (``TypeError`` without). One fused
    op forward and one backward.
    """
    theta, x, dims, act, name = V.forward_call(params, x, activation=activation, backend=backend)
    return _ops.forward(theta, x, dims, act, name)


__all__ = ["adapt", "forward", "meta_loss", "AdaptedParams", "ACTIVATIONS", "LOSSES"]
