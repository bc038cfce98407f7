"""Functional API: fused batched adaptation and the batched MLP forward.

>>> import torch, metakern.functional as MF
>>> T, N = 4, 10
>>> params = [torch.randn(40, 1), torch.zeros(40), torch.randn(1, 40) * 0.1, torch.zeros(1)]
>>> x, y = torch.randn(T, N, 1), torch.randn(T, N, 1)
>>> fast = MF.adapt(params, x, y, lr=0.01, steps=2)      # [T, 40, 1], [T, 40], [T, 1, 40], [T, 1]
>>> MF.forward(fast, x).shape
torch.Size([4, 10, 1])
"""
from __future__ import annotations

import math
import numbers
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import _ops
from . import backends as _backends

ACTIVATIONS = {"identity": 0, "relu": 1, "tanh": 2, "sigmoid": 3}
LOSSES = {"mse": 0, "cross_entropy": 1}
FLOAT_DTYPES = (torch.float32, torch.float64)

LrLike = Union[float, Tensor, Sequence[Tensor]]


def _choice(name: str, value, choices) -> int:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return choices[value]


def _is_compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # older torch
        return False


def check_params(params, x: Tensor, where: str = "params"):
    """Validate an MLP parameter list against ``x``.

    Returns ``(dims, per_task)`` where ``per_task[i]`` says whether ``params[i]``
    carries a leading task dimension.
    """
    if isinstance(params, Tensor) or not isinstance(params, (list, tuple)):
        raise TypeError(f"{where} must be a list [W1, b1, W2, b2, ...] of tensors, got {type(params).__name__}")
    if len(params) < 2 or len(params) % 2:
        raise ValueError(f"{where} must hold (weight, bias) pairs [W1, b1, ...]; got {len(params)} tensors "
                         "(bias-free layers take the generic path: use mk.MAML with the module)")
    T = x.shape[0]
    dims = [None]
    per_task = []
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{where}[{i}] must be a tensor, got {type(p).__name__}")
        if p.dtype != x.dtype:
            raise TypeError(f"{where}[{i}] has dtype {p.dtype} but x has {x.dtype}; use one dtype (float32 or float64)")
        if p.device != x.device:
            raise ValueError(f"{where}[{i}] is on {p.device} but x is on {x.device}; move them to one device")
        is_w = i % 2 == 0
        base = 2 if is_w else 1
        if p.dim() == base + 1:
            if p.shape[0] != T:
                raise ValueError(f"{where}[{i}] has shape {tuple(p.shape)}: a per-task parameter needs a leading "
                                 f"dimension equal to the number of tasks T={T}")
            shape = p.shape[1:]
            per_task.append(True)
        elif p.dim() == base:
            shape = p.shape
            per_task.append(False)
        else:
            kind = "weight [out, in] or [T, out, in]" if is_w else "bias [out] or [T, out]"
            raise ValueError(f"{where}[{i}] must be a {kind}, got shape {tuple(p.shape)}")
        if is_w:
            out_f, in_f = shape
            expect_in = x.shape[-1] if i == 0 else dims[-1]
            if in_f != expect_in:
                src = "x's last dimension" if i == 0 else f"the output width of {where}[{i - 2}]"
                raise ValueError(f"{where}[{i}] has {in_f} input features but {src} is {expect_in}")
            if out_f < 1:
                raise ValueError(f"{where}[{i}] has no outputs (shape {tuple(p.shape)})")
            if i == 0:
                dims[0] = in_f
            dims.append(out_f)
        elif shape[0] != dims[-1]:
            raise ValueError(f"{where}[{i}] (bias) has {shape[0]} entries but its weight has {dims[-1]} outputs")
    return tuple(dims), per_task


def _check_x(x, name="x"):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor [T, N, D], got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape [T, N, D] (tasks, points, features), got {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if 0 in x.shape:
        raise ValueError(f"{name} must have at least one task, point and feature, got shape {tuple(x.shape)}")


def _check_y(y, x: Tensor, loss: int, out_features: int, name: str = "y", x_name: str = "x"):
    T, N = x.shape[:2]
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(y).__name__}")
    if y.device != x.device:
        raise ValueError(f"{name} is on {y.device} but {x_name} is on {x.device}; move them to one device")
    if loss == LOSSES["mse"]:
        if y.dtype != x.dtype:
            raise TypeError(f"{name} for loss='mse' must have {x_name}'s dtype {x.dtype}, got {y.dtype}")
        if tuple(y.shape) != (T, N, out_features):
            raise ValueError(f"{name} for loss='mse' must have shape [T, N, O] = {(T, N, out_features)}, "
                             f"got {tuple(y.shape)}")
    else:
        if y.dtype != torch.int64:
            raise TypeError(f"{name} for loss='cross_entropy' must be int64 class indices, got {y.dtype}")
        if tuple(y.shape) != (T, N):
            raise ValueError(f"{name} for loss='cross_entropy' must have shape [T, N] = {(T, N)}, "
                             f"got {tuple(y.shape)}")
        if not _is_compiling() and bool(((y < 0) | (y >= out_features)).any()):
            lo, hi = int(y.min()), int(y.max())
            raise ValueError(f"{name} holds class indices in [{lo}, {hi}] but the model has {out_features} outputs; "
                             f"indices must lie in [0, {out_features - 1}]")


def _check_query(xq, xs: Tensor):
    """``xq`` ``[T, Nq, D]`` beside the support inputs ``xs`` ``[T, N, D]``."""
    _check_x(xq, "xq")
    if xq.dtype != xs.dtype:
        raise TypeError(f"xq has dtype {xq.dtype} but xs has {xs.dtype}; use one dtype")
    if xq.device != xs.device:
        raise ValueError(f"xq is on {xq.device} but xs is on {xs.device}; move them to one device")
    if xq.shape[0] != xs.shape[0] or xq.shape[2] != xs.shape[2]:
        raise ValueError(f"xq must be [T, Nq, D] with the T and D of xs {tuple(xs.shape)}, got {tuple(xq.shape)}")


def _check_reduction(reduction):
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


_reduce = _ops.reduce_losses


_pack_params = _ops.pack_params


def _shared_shapes(params, per_task):
    return [tuple(p.shape[1:]) if pt else tuple(p.shape) for p, pt in zip(params, per_task)]


def _pack_lr(lr: LrLike, shapes, ref: Tensor) -> Tensor:
    """One learning rate per packed element, ``[P]`` contiguous."""
    P = sum(math.prod(s) for s in shapes)
    if isinstance(lr, bool) or (not isinstance(lr, (numbers.Real, Tensor, list, tuple))):
        raise TypeError("lr must be a float, a 0-dim tensor, or a list with one tensor per parameter, "
                        f"got {type(lr).__name__}")
    if isinstance(lr, numbers.Real):
        if not math.isfinite(lr):
            raise ValueError(f"lr must be finite, got {lr}")
        return torch.full((P,), float(lr), dtype=ref.dtype, device=ref.device)
    if isinstance(lr, Tensor):
        if lr.dim() != 0:
            raise ValueError(f"a tensor lr must be 0-dim (one rate for all parameters), got shape {tuple(lr.shape)}; "
                             "pass a list with one tensor per parameter for per-parameter rates (Meta-SGD)")
        _check_lr_tensor(lr, "lr", ref)
        return lr.to(ref.dtype).reshape(1).expand(P).contiguous()
    if len(lr) != len(shapes):
        raise ValueError(f"lr as a list needs one tensor per parameter ({len(shapes)}), got {len(lr)}")
    parts = []
    for i, (l, s) in enumerate(zip(lr, shapes)):
        name = f"lr[{i}]"
        if isinstance(l, numbers.Real) and not isinstance(l, bool):
            l = torch.tensor(float(l), dtype=ref.dtype, device=ref.device)
        if not isinstance(l, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(l).__name__}")
        _check_lr_tensor(l, name, ref)
        l = l.to(ref.dtype)
        if tuple(l.shape) == s:
            parts.append(l.reshape(-1))
        elif l.dim() == 0:
            parts.append(l.reshape(1).expand(math.prod(s)))
        else:
            raise ValueError(f"{name} must have its parameter's shape {s} (or be 0-dim), got {tuple(l.shape)}")
    return torch.cat(parts)


def _check_lr_tensor(l: Tensor, name: str, ref: Tensor):
    if not l.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {l.dtype}")
    if l.device != ref.device:
        raise ValueError(f"{name} is on {l.device} but x is on {ref.device}; move it to x's device")


def _check_int(name, v, low):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    return int(v)


def _check_options(loss, activation, steps, first_order, backend) -> Tuple[int, int, int]:
    """The keyword options of :func:`adapt` / :func:`meta_loss`: ``(loss code, activation code, steps)``."""
    loss_c = _choice("loss", loss, LOSSES)
    act_c = _choice("activation", activation, ACTIVATIONS)
    steps = _check_int("steps", steps, 0)
    if not isinstance(first_order, bool):
        raise TypeError(f"first_order must be a bool, got {type(first_order).__name__}")
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    return loss_c, act_c, steps


def adapt_packed(theta: Tensor, dims, lr_packed: Tensor, x: Tensor, y: Tensor, *, steps: int,
                 loss: int, act: int, first_order: bool, backend: str) -> Tuple[Tensor, str]:
    """Run the fused op on already validated, packed inputs. Returns ``(theta_K [T, P], backend name)``."""
    call = _backends.Call(x.device, x.dtype, tuple(dims), x.shape[0], x.shape[1], steps)
    b = _backends.select(backend, call)
    thetaK = _ops.adapt_op(theta, lr_packed, x.contiguous(), y.contiguous(), list(dims), steps, loss, act,
                        bool(first_order), b.name)
    return thetaK, b.name


def unpack_params(theta: Tensor, dims) -> List[Tensor]:
    """``[T, P]`` packed parameters to ``[W1, b1, ...]`` views with a leading task dim."""
    T = theta.shape[0]
    sizes, shapes = [], []
    for i, o in zip(dims[:-1], dims[1:]):
        sizes += [o * i, o]
        shapes += [(T, o, i), (T, o)]
    return [t.view(s) for t, s in zip(torch.split(theta, sizes, dim=1), shapes)]


def adapt(params: Sequence[Tensor], x: Tensor, y: Tensor, *, lr: LrLike, steps: int = 1, loss: str = "mse",
          activation: str = "relu", first_order: bool = False, backend: str = "auto") -> List[Tensor]:
    """Run ``steps`` inner SGD steps for every task at once.

    Args:
        params: ``[W1, b1, W2, b2, ...]`` of an MLP in ``nn.Linear`` layout; each
            shared (``[out, in]`` / ``[out]``) or per task (leading ``T``).
        x: ``[T, N, D]`` support inputs.
        y: ``[T, N, O]`` float targets (``loss="mse"``) or ``[T, N]`` int64 class
            indices (``loss="cross_entropy"``).
        lr: inner learning rate: a float; a 0-dim tensor (learnable); or a list of
            one tensor per parameter with that parameter's shared shape (Meta-SGD).
        steps: number of inner steps ``K >= 0``.
        loss: ``"mse"`` or ``"cross_entropy"``, the per-task mean over its points.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"identity"``, between
            layers (none after the last).
        first_order: treat inner gradients as constants (FOMAML).
        backend: ``"auto"``, ``"torch"``, ``"cpp"``, ``"triton"`` or ``"cuda"``.

    Returns:
        The adapted parameters, each ``[T, *shape]``; differentiable with respect to
        ``params``, ``lr`` and ``x`` (exact second order unless ``first_order``).
    """
    _check_x(x)
    dims, per_task = check_params(params, x)
    loss_c, act_c, steps = _check_options(loss, activation, steps, first_order, backend)
    _check_y(y, x, loss_c, dims[-1])
    theta = _pack_params(params, per_task, x.shape[0])
    lr_p = _pack_lr(lr, _shared_shapes(params, per_task), x)
    thetaK, _ = adapt_packed(theta, dims, lr_p, x, y, steps=steps, loss=loss_c, act=act_c,
                             first_order=first_order, backend=backend)
    return unpack_params(thetaK, dims)


def maml_loss_validated(params: Sequence[Tensor], per_task, dims, lr_packed: Tensor, xs: Tensor, ys: Tensor,
                        xq: Tensor, yq: Tensor, *, steps: int, loss: int, act: int, first_order: bool, backend: str,
                        reduction: str) -> Tensor:
    """The MAML objective on already validated inputs (``lr`` packed, ``params`` not)."""
    call = _backends.Call(xs.device, xs.dtype, tuple(dims), xs.shape[0], max(xs.shape[1], xq.shape[1]), steps)
    b = _backends.select(backend, call)
    return _ops.maml_op(params, per_task, lr_packed, xs.contiguous(), ys.contiguous(), xq.contiguous(),
                        yq.contiguous(), dims, steps, loss, act, bool(first_order), b.name, reduction)


def meta_loss(params: Sequence[Tensor], xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, *, lr: LrLike,
              steps: int = 1, loss: str = "mse", activation: str = "relu", first_order: bool = False,
              backend: str = "auto", reduction: str = "mean") -> Tensor:
    """The MAML objective: adapt on the support set, evaluate on the query set.

    Equal to ``loss(forward(adapt(params, xs, ys, ...), xq), yq)`` per task, reduced
    over tasks (``"mean"``, ``"sum"`` or ``"none"`` for the ``[T]`` per-task losses;
    each task's loss is the mean over its query points). Where the backend has a
    fused kernel for it (``cpp``, ``torch``) it is one op that computes the losses
    and their gradient in a single walk of the inner loop, with no recomputation in
    the backward; elsewhere, or when ``xs`` / ``xq`` need a gradient, it composes
    :func:`adapt` and :func:`forward`. Arguments as :func:`adapt`; ``xq`` is
    ``[T, Nq, D]`` and ``yq`` its targets.

    >>> import torch, metakern.functional as MF
    >>> params = [torch.randn(40, 1), torch.zeros(40), torch.randn(1, 40) * 0.1, torch.zeros(1)]
    >>> xs, ys, xq, yq = torch.randn(4, 5, 1), torch.randn(4, 5, 1), torch.randn(4, 7, 1), torch.randn(4, 7, 1)
    >>> MF.meta_loss(params, xs, ys, xq, yq, lr=0.01, reduction="none").shape
    torch.Size([4])
    """
    _check_x(xs, "xs")
    _check_query(xq, xs)
    dims, per_task = check_params(params, xs)
    loss_c, act_c, steps = _check_options(loss, activation, steps, first_order, backend)
    _check_reduction(reduction)
    _check_y(ys, xs, loss_c, dims[-1], "ys", "xs")
    _check_y(yq, xq, loss_c, dims[-1], "yq", "xq")
    lr_p = _pack_lr(lr, _shared_shapes(params, per_task), xs)
    return maml_loss_validated(list(params), per_task, dims, lr_p, xs, ys, xq, yq, steps=steps, loss=loss_c,
                               act=act_c, first_order=first_order, backend=backend, reduction=reduction)


def forward_packed(theta: Tensor, x: Tensor, dims, act: int, backend: str = "auto") -> Tensor:
    """Fused batched MLP forward on packed parameters (``[P]`` or ``[T, P]``)."""
    call = _backends.Call(x.device, x.dtype, tuple(dims), x.shape[0], x.shape[1], 0)
    b = _backends.select(backend, call)
    return _ops.mlp_op(theta, x.contiguous(), list(dims), act, b.name)


def forward(params: Sequence[Tensor], x: Tensor, *, activation: str = "relu", backend: str = "auto") -> Tensor:
    """Batched MLP forward: ``[T, N, O]`` for ``x`` ``[T, N, D]``.

    ``params`` as in :func:`adapt` (shared or per task). One fused op forward and
    one backward.
    """
    _check_x(x)
    dims, per_task = check_params(params, x)
    act_c = _choice("activation", activation, ACTIVATIONS)
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    theta = _pack_params(params, per_task, x.shape[0])
    return forward_packed(theta, x, dims, act_c, backend)


__all__ = ["adapt", "forward", "meta_loss", "ACTIVATIONS", "LOSSES"]
