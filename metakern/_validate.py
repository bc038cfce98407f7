"""Validation: every check of a user's call, and the validated :class:`Problem` it becomes.

The Python twin of ``csrc/common/checks.h``: the public modules (``functional``,
``learners``, ``tasks``) check their arguments here, with errors that name the
argument and the fix (``TypeError`` / ``ValueError``; ``RuntimeError`` from the
backend choice), and hand the result to ``metakern._ops``. Below this layer nothing
checks user input again.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _NormBase  # the base of nn.BatchNorm* and nn.InstanceNorm*

from . import backends as _backends
from ._contract import (ACTIVATIONS, FLOAT_DTYPES, LOSSES, REDUCTIONS, AdaptedParams, Loss, Problem, is_compiling,
                        num_params, pack_params, param_shapes)

LrLike = Union[float, Tensor, Sequence[Tensor]]


# ----------------------------------------------------------------------- scalars
def check_int(name: str, value, minimum=None) -> int:
    """``value`` as an int (``bool`` refused), at least ``minimum`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}; pass an int >= {minimum}")
    return value


def check_real(name: str, value, minimum=None, *, tensors: bool = False) -> float:
    """``value`` as a finite float, at least ``minimum`` when given; ``tensors``
    accepts a one-element tensor too."""
    ok = isinstance(value, numbers.Real) or (tensors and isinstance(value, Tensor) and value.numel() == 1)
    if isinstance(value, bool) or not ok:
        kind = "a real number or a one-element tensor" if tensors else "a real number"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}; pass a finite number")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}; pass a number >= {minimum}")
    return value


def check_range(name: str, value, minimum=None) -> Tuple[float, float]:
    """A ``(low, high)`` pair of finite numbers with ``low <= high``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a (low, high) pair of numbers, got {value!r}")
    low, high = check_real(f"{name}[0]", value[0], minimum), check_real(f"{name}[1]", value[1], minimum)
    if low > high:
        raise ValueError(f"{name} must have low <= high, got {value!r}; swap the two ends")
    return (low, high)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def choice(name: str, value, choices) -> int:
    """The code of ``value`` in ``choices`` (``{"name": code}``), as a plain int."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return int(choices[value])


def check_backend_type(backend):
    """``backend`` is a string (its name is checked when the backend is chosen)."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")


def check_backend(backend) -> str:
    """A backend name: ``"auto"`` or one of ``metakern.backends.BACKENDS``."""
    check_backend_type(backend)
    if backend != "auto":
        _backends.get(backend)  # ValueError naming the choices
    return backend


def check_options(loss, activation, steps, first_order, backend) -> Tuple[int, int, int]:
    """The keyword options of the fused calls: ``(loss code, activation code, steps)``."""
    loss_c = choice("loss", loss, LOSSES)
    act_c = choice("activation", activation, ACTIVATIONS)
    steps = check_int("steps", steps, 0)
    check_bool("first_order", first_order)
    check_backend_type(backend)
    return loss_c, act_c, steps


# ------------------------------------------------------------------------ batches
def check_batch(x, y, name_x: str = "x", name_y: str = "y"):
    """Any model's batch: ``x`` ``[T, N, ...]`` and, when given, ``y`` starting with ``[T, N]``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name_x} must be a tensor [T, N, ...], got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(f"{name_x} must have shape [T, N, ...] (tasks, points, features), got {tuple(x.shape)}")
    if y is not None:
        if not isinstance(y, Tensor):
            raise TypeError(f"{name_y} must be a tensor, got {type(y).__name__}")
        if tuple(y.shape[:2]) != tuple(x.shape[:2]):
            raise ValueError(f"{name_y} must start with [T, N] = {tuple(x.shape[:2])} like {name_x}, "
                             f"got {tuple(y.shape)}")


def check_x(x, name: str = "x"):
    """Inputs of the fused kernels: a float tensor ``[T, N, D]``, nothing empty."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor [T, N, D], got {type(x).__name__}")
    if x.dim() != 3:
        hint = f"; flatten each point with {name}.flatten(2)" if x.dim() > 3 else ""
        raise ValueError(f"{name} must have shape [T, N, D] (tasks, points, features), got {tuple(x.shape)}{hint}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if 0 in x.shape:
        raise ValueError(f"{name} must have at least one task, point and feature, got shape {tuple(x.shape)}")


def flatten_points(x, in_features: int, name: str = "x"):
    """A fused model's batch with each point flattened: ``x`` ``[T, N, D]`` is returned as
    it is; ``[T, N, *shape]`` (images ``[T, N, C, H, W]``, ...) becomes ``[T, N, D]`` when
    ``shape`` holds the model's ``in_features = D`` values, as ``nn.Flatten`` would lay
    them out. Anything else is left to :func:`check_x`, except a point shape of the
    wrong size, refused here."""
    if not isinstance(x, Tensor) or x.dim() <= 3:
        return x
    size = math.prod(x.shape[2:])
    if size != in_features:
        raise ValueError(f"{name} has points of shape {tuple(x.shape[2:])} ({size} values) but the model's first "
                         f"layer takes {in_features} features; pass {name} as [T, N, {in_features}] (or points of "
                         f"{in_features} values), or build the model for points of {size} values")
    return x.flatten(2)


def check_y(y, x: Tensor, loss: int, out_features: int, name: str = "y", x_name: str = "x"):
    """Targets beside validated inputs ``x``: ``[T, N, O]`` floats (MSE) or ``[T, N]``
    int64 class indices in ``[0, O)`` (cross-entropy; the range is not checked while
    compiling, where it would be a data-dependent branch)."""
    T, N = x.shape[:2]
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(y).__name__}")
    if y.device != x.device:
        raise ValueError(f"{name} is on {y.device} but {x_name} is on {x.device}; move them to one device")
    if loss == Loss.MSE:
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
        if not is_compiling():
            check_class_indices(y, out_features, name, on_host=y.device.type == "cpu")


def check_class_indices(y: Tensor, out_features: int, name: str, on_host: bool):
    """Class indices ``y`` must lie in ``[0, out_features)``.

    ``on_host`` (CPU tensors): a ``ValueError`` naming the range found. Otherwise (a
    GPU) the check runs on the device with ``torch._assert_async``: reading its result
    back would stall the host at every call and break CUDA-graph capture. A bad index
    then fails the stream as a device-side assert at the next synchronisation, as
    ``F.cross_entropy`` does on a GPU (a ``RuntimeError`` carrying this message where
    the assert runs on the host).
    """
    bad = (y < 0) | (y >= out_features)
    msg = (f"{name} holds class indices outside [0, {out_features - 1}] but the model has {out_features} outputs; "
           "pass class indices in that range")
    if not on_host:
        torch._assert_async(~bad.any(), msg)
    elif bool(bad.any()):
        lo, hi = int(y.min()), int(y.max())
        raise ValueError(f"{name} holds class indices in [{lo}, {hi}] but the model has {out_features} outputs; "
                         f"indices must lie in [0, {out_features - 1}]")


def check_no_target_grad(y: Tensor, name: str):
    """The fused ops give no gradient to the targets: refuse targets that want one (the
    generic path, which differentiates them, does not call this)."""
    if y.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} requires a gradient, but the fused ops do not differentiate the targets "
                         f"(only parameters, inner rates and inputs); pass {name}.detach(), or compute the loss "
                         "on the adapted model's outputs yourself (fast = learner.adapt(xs, ys); loss(fast(xq), yq))")


def check_vmap_exact(module: torch.nn.Module, first_order: bool):
    """``generic_mode="vmap"``, asked for explicitly: refused where torch.func's ``vmap``
    over ``grad`` gives a wrong second-order meta-gradient. With torch 2.14 that is the
    case through a normalisation layer: one that uses its batch's statistics
    (``nn.BatchNorm*`` and ``nn.InstanceNorm*`` in training mode, or without running
    statistics), and ``nn.LayerNorm``. The value is right, the meta-gradient is off by
    around 1% (a few % for LayerNorm)."""
    if first_order or not torch.is_grad_enabled():
        return
    for name, m in module.named_modules():
        if isinstance(m, _NormBase) and (m.training or not m.track_running_stats):
            how = "normalises with its batch's statistics"
        elif isinstance(m, torch.nn.LayerNorm):
            how = "normalises each point with its own statistics"
        else:
            continue
        where = f"{type(m).__name__} {name!r}" if name else type(m).__name__
        raise ValueError(f"generic_mode='vmap' gives a wrong second-order meta-gradient through {where}, which "
                         f"{how}; use generic_mode='auto' or 'loop' (exact), first_order=True, or, for batch "
                         "norm, the running statistics (model.eval())")


def check_step_layers(module: torch.nn.Module, steps: int, mode: str, exact_steps: bool = False):
    """The step-aware layers of ``module`` (a class with ``step_aware = True`` and rows for
    ``steps`` inner steps, ``metakern.nn.PerStepBatchNorm2d``) fit a call of ``steps``
    inner steps in generic ``mode`` (``exact_steps``: the layers must be built for
    exactly ``steps``, as MAML++'s per-step rates are)."""
    for name, m in module.named_modules():
        if not getattr(type(m), "step_aware", False):
            continue
        where = f"{type(m).__name__} {name!r}" if name else type(m).__name__
        if steps > m.steps or (exact_steps and steps != m.steps):
            need = f"exactly {steps}" if exact_steps else f"{steps} or more"
            raise ValueError(f"steps={steps}, but {where} has rows for {m.steps} inner steps (0..{m.steps}) and "
                             f"needs to be built for {need}; build the model for the learner's steps "
                             f"(Conv4(per_step_bn={steps})) or use steps={m.steps}")
        if mode == "vmap" and m.training:
            raise ValueError(f"generic_mode='vmap' cannot run {where} in training mode (it normalises each task "
                             "with its batch's statistics and updates its per-step running statistics in place); "
                             "use generic_mode='auto' or 'loop', or the running statistics (model.eval())")


def check_query(xq, xs: Tensor):
    """``xq`` ``[T, Nq, D]`` beside the validated support inputs ``xs`` ``[T, N, D]``."""
    check_x(xq, "xq")
    if xq.dtype != xs.dtype:
        raise TypeError(f"xq has dtype {xq.dtype} but xs has {xs.dtype}; use one dtype")
    if xq.device != xs.device:
        raise ValueError(f"xq is on {xq.device} but xs is on {xs.device}; move them to one device")
    if xq.shape[0] != xs.shape[0] or xq.shape[2] != xs.shape[2]:
        raise ValueError(f"xq must be [T, Nq, D] with the T and D of xs {tuple(xs.shape)}, got {tuple(xq.shape)}")


def check_params(params, x: Tensor, where: str = "params"):
    """Validate an MLP parameter list against validated inputs ``x``.

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
    return tuple(dims), tuple(per_task)


# --------------------------------------------------------------------------- rates
def _check_lr_tensor(l: Tensor, name: str, ref: Tensor):
    if not l.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {l.dtype}")
    if l.device != ref.device:
        raise ValueError(f"{name} is on {l.device} but x is on {ref.device}; move it to x's device")


@functools.lru_cache(maxsize=32)
def _filled(value: float, P: int, dtype, device) -> Tensor:
    """A fixed rate packed once per value (read-only: no op writes its ``lr``)."""
    return torch.full((P,), value, dtype=dtype, device=device)


def pack_lr(lr: LrLike, dims, ref: Tensor, steps: int = None) -> Tensor:
    """The inner learning rates packed: ``[P]`` (one rate per parameter element, the
    same at every step) or ``[K, P]`` (row k: inner step k's rates), contiguous.

    ``lr``: a float; a 0-dim tensor (learnable, or a fixed rate that may change in
    place: a CPU one is read at each call, and its packed copy reused while its value
    stays); a 1-D ``[K]`` tensor (one rate per inner step, ``K == steps``); or a list
    with one entry per parameter, each a float or 0-dim tensor (one rate for the
    tensor), a tensor of the parameter's shape (Meta-SGD), a ``[K]`` tensor (one rate
    per step for the tensor: MAML++'s LSLR) or a ``[K, *shape]`` tensor (per step and
    per element). A ``[K]`` entry for a parameter whose own shape is ``(K,)`` reads as
    the parameter's shape (Meta-SGD); give it as ``[K, K]`` for per-step rates.
    """
    P = num_params(dims)
    if isinstance(lr, bool) or (not isinstance(lr, (numbers.Real, Tensor, list, tuple))):
        raise TypeError("lr must be a float, a 0-dim tensor, a [K] tensor (one rate per step), or a list with "
                        f"one tensor per parameter, got {type(lr).__name__}")
    # the cached copy is made outside inference mode, so autograd may save it
    fresh = is_compiling() or torch.is_inference_mode_enabled()
    if isinstance(lr, numbers.Real):
        if not math.isfinite(lr):
            raise ValueError(f"lr must be finite, got {lr}")
        if fresh:
            return torch.full((P,), float(lr), dtype=ref.dtype, device=ref.device)
        return _filled(float(lr), P, ref.dtype, ref.device)
    if isinstance(lr, Tensor):
        if lr.dim() == 1:
            _check_lr_tensor(lr, "lr", ref)
            _check_steps_axis(lr, "lr", steps, "[K] (one rate per inner step)")
            return lr.to(ref.dtype).unsqueeze(1).expand(lr.shape[0], P).contiguous()
        if lr.dim() != 0:
            raise ValueError(f"a tensor lr must be 0-dim (one rate for all parameters) or [K] with K = steps (one "
                             f"rate per inner step), got shape {tuple(lr.shape)}; pass a list with one tensor per "
                             "parameter for per-parameter rates (Meta-SGD, LSLR)")
        _check_lr_tensor(lr, "lr", ref)
        if not fresh and not lr.requires_grad and lr.device.type == "cpu" and ref.device.type == "cpu":
            # reading a CPU tensor is free; on a GPU it would be a sync
            return _filled(float(lr), P, ref.dtype, ref.device)
        return lr.to(ref.dtype).reshape(1).expand(P).contiguous()
    shapes = param_shapes(dims)
    if len(lr) != len(shapes):
        raise ValueError(f"lr as a list needs one tensor per parameter ({len(shapes)}), got {len(lr)}")
    parts, per_step = [], False  # parts: (tensor, has a leading step axis)
    for i, (l, s) in enumerate(zip(lr, shapes)):
        name = f"lr[{i}]"
        if isinstance(l, numbers.Real) and not isinstance(l, bool):
            l = torch.tensor(float(l), dtype=ref.dtype, device=ref.device)
        if not isinstance(l, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(l).__name__}")
        _check_lr_tensor(l, name, ref)
        l = l.to(ref.dtype)
        n = math.prod(s)
        if tuple(l.shape) == s:
            parts.append((l.reshape(-1), False))
        elif l.dim() == 0:
            parts.append((l.reshape(1).expand(n), False))
        elif l.dim() == 1:
            _check_steps_axis(l, name, steps, f"[K] (one rate per inner step), or its parameter's shape {s}")
            parts.append((l.unsqueeze(1).expand(l.shape[0], n), True))
        elif tuple(l.shape[1:]) == s:
            _check_steps_axis(l, name, steps, f"[K, *{s}] (per step and element)")
            parts.append((l.reshape(l.shape[0], n), True))
        else:
            raise ValueError(f"{name} must have its parameter's shape {s}, be 0-dim, [K] or [K, *{s}] with "
                             f"K = steps, got {tuple(l.shape)}")
        per_step = per_step or parts[-1][1]
    if not per_step:
        return torch.cat([t for t, _ in parts])
    return torch.cat([t if stepped else t.unsqueeze(0).expand(steps, -1) for t, stepped in parts], dim=1)


def _check_steps_axis(l: Tensor, name: str, steps, form: str):
    if steps is None:
        raise ValueError(f"{name} of shape {tuple(l.shape)} has a step axis, which needs the number of steps")
    if l.shape[0] != steps:
        raise ValueError(f"{name} as {form} needs K = steps = {steps} rows, got shape {tuple(l.shape)}; a 0-dim "
                         "tensor gives one rate for every step")


def check_step_weights(step_weights, steps: int, ref: Tensor):
    """The multi-step loss's weights ``[K]`` (``K == steps >= 1``) as a tensor of
    ``ref``'s dtype and device, or ``None``. A list or tuple of floats, or a 1-D
    tensor; finite; a constant (no gradient: MAML++ schedules them)."""
    if step_weights is None:
        return None
    if isinstance(step_weights, (list, tuple)):
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in step_weights):
            raise TypeError("step_weights as a list must hold floats")
        step_weights = torch.tensor([float(v) for v in step_weights], dtype=ref.dtype, device=ref.device)
    if not isinstance(step_weights, Tensor):
        raise TypeError(f"step_weights must be a [K] tensor or a list of K floats, got {type(step_weights).__name__}")
    if not step_weights.is_floating_point():
        raise TypeError(f"step_weights must be a floating-point tensor, got {step_weights.dtype}")
    if step_weights.requires_grad and torch.is_grad_enabled():
        raise ValueError("step_weights must not require a gradient (the multi-step loss takes them as constants); "
                         "pass step_weights.detach()")
    if steps < 1:
        raise ValueError(f"step_weights needs steps >= 1 (one weight per inner step), got steps = {steps}")
    if step_weights.shape != (steps,):
        raise ValueError(f"step_weights must be [K] with K = steps = {steps}, got shape {tuple(step_weights.shape)}")
    if step_weights.device != ref.device:
        raise ValueError(f"step_weights is on {step_weights.device} but xs is on {ref.device}; move it to xs's device")
    if step_weights.device.type == "cpu" and not is_compiling() and not bool(torch.isfinite(step_weights).all()):
        raise ValueError("step_weights must be finite")
    return step_weights.detach().to(ref.dtype).contiguous()


# ----------------------------------------------------------------------- problems
def select_backend(backend: str, x: Tensor, dims, points: int, steps: int = 0) -> str:
    """The backend that runs a call on ``x``'s device and dtype (``RuntimeError`` for an
    explicit one that cannot; see :func:`metakern.backends.select`)."""
    call = _backends.Call(x.device, x.dtype, tuple(dims), x.shape[0], points, steps)
    return _backends.select(backend, call).name


def adapt_problem(params, x, y, *, lr: LrLike, steps, loss, activation, first_order, backend,
                  where: str = "params") -> Problem:
    """A validated adaptation: ``steps`` inner steps of the MLP ``params`` on ``(x, y)``."""
    check_x(x)
    dims, per_task = check_params(params, x, where)
    loss_c, act_c, steps = check_options(loss, activation, steps, first_order, backend)
    check_y(y, x, loss_c, dims[-1])
    check_no_target_grad(y, "y")
    lr_p = pack_lr(lr, dims, x, steps)
    name = select_backend(backend, x, dims, x.shape[1], steps)
    return Problem(tuple(params), per_task, dims, lr_p, x.contiguous(), y.contiguous(), steps, loss_c, act_c,
                   first_order, name)


def maml_problem(params, xs, ys, xq, yq, *, lr: LrLike, steps, loss, activation, first_order, backend,
                 reduction, where: str = "params", step_weights=None) -> Problem:
    """A validated MAML objective: adapt on ``(xs, ys)``, loss on ``(xq, yq)``, reduced over tasks."""
    check_x(xs, "xs")
    check_query(xq, xs)
    dims, per_task = check_params(params, xs, where)
    loss_c, act_c, steps = check_options(loss, activation, steps, first_order, backend)
    red = check_reduction(reduction)
    check_y(ys, xs, loss_c, dims[-1], "ys", "xs")
    check_y(yq, xq, loss_c, dims[-1], "yq", "xq")
    check_no_target_grad(ys, "ys")
    check_no_target_grad(yq, "yq")
    lr_p = pack_lr(lr, dims, xs, steps)
    w = check_step_weights(step_weights, steps, xs)
    name = select_backend(backend, xs, dims, max(xs.shape[1], xq.shape[1]), steps)
    return Problem(tuple(params), per_task, dims, lr_p, xs.contiguous(), ys.contiguous(), steps, loss_c, act_c,
                   first_order, name, xq.contiguous(), yq.contiguous(), red, w)


def check_reduction(reduction) -> int:
    """The :class:`~metakern._contract.Reduction` code of ``"mean"``, ``"sum"`` or ``"none"``."""
    red = REDUCTIONS.get(reduction) if isinstance(reduction, str) else None
    if red is None:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return int(red)


def forward_activation(params, activation) -> str:
    """The activation of a batched forward: the one given, else the one an
    :class:`AdaptedParams` list carries; a plain list has none to offer."""
    carried = params.activation if isinstance(params, AdaptedParams) else None
    if activation is None:
        if carried is None:
            names = ", ".join(repr(a) for a in list(ACTIVATIONS)[:-1]) + f" or {list(ACTIVATIONS)[-1]!r}"
            raise TypeError(f"forward() needs activation= ({names}) for a plain list of parameters; "
                            f"the list functional.adapt returns, and a fast model's .params, carry their own")
        return carried
    if carried is not None and activation != carried:
        raise ValueError(f"activation={activation!r}, but these parameters were adapted with "
                         f"activation={carried!r}: pass {carried!r} or leave activation out")
    return activation


def forward_call(params, x, *, activation, backend) -> Tuple[Tensor, Tensor, tuple, int, str]:
    """A validated batched MLP forward: ``(packed theta, x, dims, act code, backend name)``;
    ``activation`` None takes the one ``params`` carries (:func:`forward_activation`)."""
    check_x(x)
    dims, per_task = check_params(params, x)
    act_c = choice("activation", forward_activation(params, activation), ACTIVATIONS)
    check_backend_type(backend)
    theta = pack_params(params, per_task, x.shape[0])
    return theta, x.contiguous(), dims, act_c, select_backend(backend, x, dims, x.shape[1])


def packed_forward_call(theta: Tensor, x, dims, backend: str) -> Tuple[Tensor, str]:
    """Inputs of an adapted fast model (packed ``theta`` ``[T, P]``): ``(x, backend name)``."""
    check_batch(x, None)
    if x.shape[0] != theta.shape[0]:
        raise ValueError(f"x has {x.shape[0]} tasks but this fast model was adapted on {theta.shape[0]}")
    x = flatten_points(x, dims[0])
    if x.dim() != 3 or x.shape[-1] != dims[0] or x.dtype != theta.dtype:
        raise ValueError(f"x must be [T, N, {dims[0]}] of dtype {theta.dtype}, got {tuple(x.shape)} {x.dtype}")
    return x.contiguous(), select_backend(backend, x, dims, x.shape[1])


# -------------------------------------------------------------- across processes
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_LAUNCH_HINT = ("launch every process with torchrun (e.g. `torchrun --nproc_per_node 2 -m metakern train ...`), "
                "which sets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT, or unset "
                "them all to run in one process")


def _env_int(env, name: str, minimum: int) -> int:
    raw = env[name]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer; {_LAUNCH_HINT}") from None
    if value < minimum:
        raise ValueError(f"environment variable {name}={value} must be >= {minimum}; {_LAUNCH_HINT}")
    return value


def check_launch_env(env) -> "dict | None":
    """The process's place in a launch, from torchrun's variables in ``env``.

    ``None`` when neither ``RANK`` nor ``WORLD_SIZE`` is set (one process); otherwise
    ``{"rank", "size", "local_rank", "local_size"}``. An incomplete or inconsistent
    environment (``WORLD_SIZE`` without ``RANK``, a rank outside the world, no
    ``MASTER_ADDR``) is a ``ValueError`` naming the variable.
    """
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return None
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            present = ", ".join(f"{n}={env[n]}" for n in LAUNCH_VARS if env.get(n))
            raise ValueError(f"environment variable {name} is not set (set: {present}); {_LAUNCH_HINT}")
    size, rank = _env_int(env, "WORLD_SIZE", 1), _env_int(env, "RANK", 0)
    if rank >= size:
        raise ValueError(f"environment variable RANK={rank} must be < WORLD_SIZE={size}; {_LAUNCH_HINT}")
    port = _env_int(env, "MASTER_PORT", 1)
    if port > 65535:
        raise ValueError(f"environment variable MASTER_PORT={port} is not a TCP port (1-65535)")
    local_rank = _env_int(env, "LOCAL_RANK", 0) if env.get("LOCAL_RANK") else rank
    local_size = _env_int(env, "LOCAL_WORLD_SIZE", 1) if env.get("LOCAL_WORLD_SIZE") else size
    if local_rank >= local_size:
        raise ValueError(f"environment variable LOCAL_RANK={local_rank} must be < LOCAL_WORLD_SIZE={local_size}; "
                         f"{_LAUNCH_HINT}")
    return dict(rank=rank, size=size, local_rank=local_rank, local_size=local_size)


def check_shard(tasks: int, size: int, *, allow_empty: bool = False):
    """A batch of ``tasks`` tasks can be split over ``size`` processes (each gets at least
    one task unless ``allow_empty``)."""
    tasks = check_int("the number of tasks", tasks, 0 if allow_empty else 1)
    if not allow_empty and tasks < size:
        raise ValueError(f"a global batch of {tasks} task(s) cannot be split over {size} processes: each process "
                         f"needs at least one task; use a meta-batch of at least {size} tasks, or fewer processes")
    return tasks


def check_task_batch(tensors, names):
    """Tensors of one task batch (``None`` allowed): each ``[T, ...]`` with the same ``T``.
    Returns ``T``."""
    T = None
    for t, name in zip(tensors, names):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor [T, ...] or None, got {type(t).__name__}")
        if t.dim() == 0:
            raise ValueError(f"{name} must have a leading task dimension [T, ...], got a 0-dim tensor")
        if T is None:
            T, first = t.shape[0], name
        elif t.shape[0] != T:
            raise ValueError(f"{name} has {t.shape[0]} tasks but {first} has {T}: every tensor of a task batch "
                             "starts with the same T")
    if T is None:
        raise TypeError(f"{names[0]} must be a tensor [T, ...], got None")
    return T


def check_timeout(name: str, value) -> float:
    """A timeout in seconds: a finite number > 0."""
    value = check_real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value}")
    return value
