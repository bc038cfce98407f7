"""Every autograd formula and every ``torch.library`` registration of metakern.

* ``metakern_py::adapt`` and ``metakern_py::mlp`` are custom ops whose
  implementation hands the packed tensors to the chosen backend (``torch``, ``cpp``,
  ``triton`` or ``cuda``). Registered with the dispatcher, with fake (meta)
  implementations and ``register_autograd``, they let a whole second-order MAML step
  run under ``torch.compile(fullgraph=True)``: the compiler sees one opaque op
  forward and one backward instead of an unrolled double-backward graph.
* The ops that ``metakern._C`` defines in C++ (``torch.ops.metakern.*``, schemas in
  ``csrc/schema/``) get their fake kernels here, for ``torch.compile`` and
  ``opcheck``, and autograd formulas: ``adapt_fwd`` is differentiated exactly
  (second order) through ``adapt_bwd``, ``mlp_fwd`` through ``mlp_bwd``; the
  first-order variant is a choice of the caller, made through ``metakern_py::adapt``.
  ``maml_fwd`` returns its own gradients (it is differentiated by :class:`_MamlFn` or
  the C++ node ``metakern._C.maml_loss``, which call it below the Autograd key), so
  it only gets a fake kernel. These registrations run when this module is imported,
  never inside a trace.
* In eager mode :func:`adapt_op` and :func:`mlp_op` skip the custom-op layer (whose
  Python dispatch costs tens of microseconds a call, which matters at small T) and
  use plain ``autograd.Function``s around the same backend calls and the same
  gradient formulas; under ``torch.compile`` they go through the registered ops.

The backward ops return per-task gradients; the formulas here reduce them over
tasks (``sum(0)``, deterministic) where ``theta`` or ``lr`` were shared.

:func:`adapt`, :func:`meta_loss` and :func:`forward` run a problem validated by
``metakern._validate`` (a :class:`metakern._contract.Problem`).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from . import backends as _backends
from ._contract import Problem, Reduction, is_compiling, pack_params, reduce_losses, split_sizes
from .backends import torch_backend


# --------------------------------------------------------- gradients with a graph
# The kernels compute exact first derivatives, not a graph of them. When a backward
# runs with create_graph=True (grad mode on inside it: a Hessian, a gradient penalty,
# a derivative of the meta-gradient), the formulas below recompute the same quantity
# with autograd instead: the inner loop unrolled in the torch backend's differentiable
# ops, then torch.autograd.grad(create_graph=True). Exact to all orders, on any
# device; it costs the unrolled graph that the fused path otherwise avoids, and only
# when a graph of the gradient is asked for.
def unrolled_path(theta, lr, x, y, dims, steps, loss, act, first_order):
    """``[theta_0, ..., theta_K]`` (each ``[T, P]``) differentiable by autograd
    (``first_order``: the inner gradients detached, as first-order MAML defines them;
    ``lr`` ``[P]`` or ``[K, P]``)."""
    T = x.shape[0]
    th = theta.unsqueeze(0).expand(T, -1) if theta.dim() == 1 else theta
    path = [th]
    for k in range(steps):
        with torch.enable_grad():
            inner = torch_backend.loss_value(torch_backend.mlp_apply(th, x, dims, act), y, loss).sum()
            (g,) = torch.autograd.grad(inner, th, create_graph=not first_order)
        th = th - torch_backend.lr_row(lr, k) * (g.detach() if first_order else g)
        path.append(th)
    return path


def unrolled_adapt(theta, lr, x, y, dims, steps, loss, act, first_order):
    """``theta_K`` ``[T, P]`` differentiable by autograd (see :func:`unrolled_path`)."""
    th = unrolled_path(theta, lr, x, y, dims, steps, loss, act, first_order)[-1]
    return th if steps else th + 0  # a fresh tensor, as the kernels return


def unrolled_losses(theta, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, step_weights=None):
    """Per-task losses ``[T]`` of the MAML objective (with ``step_weights``, the
    multi-step loss), differentiable by autograd."""
    path = unrolled_path(theta, lr, xs, ys, dims, steps, loss, act, first_order)

    def query(th):
        return torch_backend.loss_value(torch_backend.mlp_apply(th, xq, dims, act), yq, loss)

    if step_weights is None:
        return query(path[-1])
    return sum(step_weights[k - 1] * query(path[k]) for k in range(1, steps + 1))


def grads_with_graph(output, inputs, grad_output, needs):
    """``d<output, grad_output>/d inputs`` with ``create_graph=True``; ``None`` where not needed.

    An input that ``output`` does not depend on gets zeros with a graph to it (that is
    its true derivative), so a further derivative of them is zero, not an error.
    """
    want = [t for t, n in zip(inputs, needs) if n]
    got = iter(torch.autograd.grad(output, want, grad_output, create_graph=True, allow_unused=True) if want else ())
    out = []
    for t, n in zip(inputs, needs):
        g = next(got) if n else None
        out.append(t * 0 if n and g is None else g)
    return tuple(out)


def adapt_grads_with_graph(theta, lr, x, y, dims, steps, loss, act, first_order, grad, needs):
    """``(theta, lr, x)`` gradients of ``<theta_K, grad>`` with a graph (the adapt formulas)."""
    out = unrolled_adapt(theta, lr, x, y, dims, steps, loss, act, first_order)
    return grads_with_graph(out, (theta, lr, x), grad, needs[:3])


def mlp_grads_with_graph(theta, x, dims, act, grad_out, needs):
    """``(theta, x)`` gradients of ``<mlp(theta, x), grad_out>`` with a graph (the mlp formulas)."""
    return grads_with_graph(torch_backend.mlp_apply(theta, x, dims, act), (theta, x), grad_out, needs[:2])


def maml_losses_with_graph(params, per_task, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, reduction,
                           step_weights=None):
    """The reduced MAML objective of a parameter list, differentiable by autograd."""
    theta = pack_params(params, per_task, xs.shape[0])
    losses = unrolled_losses(theta, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, step_weights)
    return reduce_losses(losses, reduction)


# The C++ node metakern._C.maml_loss calls this op from its backward when
# create_graph=True. CompositeImplicitAutograd: autograd records the ops inside it.
_graph_lib = torch.library.Library("metakern_py", "FRAGMENT")
_graph_lib.define("maml_loss_grads_with_graph(Tensor[] params, Tensor lr, Tensor xs, Tensor ys, Tensor xq, "
                  "Tensor yq, Tensor g_out, int[] dims, int[] per_task, int steps, int loss, int act, "
                  "bool first_order, int reduction, int[] needs, Tensor? step_weights=None) -> Tensor[]")


def _maml_loss_grads_with_graph(params, lr, xs, ys, xq, yq, g_out, dims, per_task, steps, loss, act, first_order,
                                reduction, needs, step_weights=None):
    per_task = [bool(b) for b in per_task]
    out = maml_losses_with_graph(params, per_task, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order,
                                 Reduction(reduction), step_weights)
    grads = grads_with_graph(out, (lr, *params), g_out, [bool(n) for n in needs])
    return [g_out.new_empty(0) if g is None else g for g in grads]  # Tensor[] holds no None


_graph_lib.impl("maml_loss_grads_with_graph", _maml_loss_grads_with_graph, "CompositeImplicitAutograd")


def reduce_adapt_grads(theta, g_theta, g_lr, g_x, needs):
    """Per-task backward outputs to the inputs' gradients ``(theta, lr, x)``.

    Sums over tasks (``sum(0)``, deterministic) where ``theta`` was shared; ``lr`` is
    always shared (``[T, P]`` or ``[T, K, P]`` per task to ``[P]`` or ``[K, P]``).
    Entries whose input needs no gradient are ``None``.
    """
    if theta.dim() == 1:
        g_theta = g_theta.sum(0)
    return (g_theta if needs[0] else None, g_lr.sum(0) if needs[1] else None, g_x if needs[2] else None)


def reduce_mlp_grads(theta, g_theta, g_x, needs):
    """As :func:`reduce_adapt_grads` for the fused forward: ``(theta, x)``."""
    if theta.dim() == 1:
        g_theta = g_theta.sum(0)
    return (g_theta if needs[0] else None, g_x if needs[1] else None)


@torch.library.custom_op("metakern_py::adapt", mutates_args=())
def adapt_custom(theta: Tensor, lr: Tensor, x: Tensor, y: Tensor, dims: List[int], steps: int, loss: int, act: int,
          first_order: bool, backend: str) -> Tensor:
    """``theta_K`` ``[T, P]`` after ``steps`` inner SGD steps (docs/kernels.md)."""
    return _backends.get(backend).adapt_fwd(theta, lr, x, y, dims, steps, loss, act)


@adapt_custom.register_fake
def _(theta, lr, x, y, dims, steps, loss, act, first_order, backend):
    return theta.new_empty((x.shape[0], theta.shape[-1]))


@torch.library.custom_op("metakern_py::adapt_backward", mutates_args=())
def adapt_backward(grad: Tensor, theta: Tensor, lr: Tensor, x: Tensor, y: Tensor, dims: List[int], steps: int,
                   loss: int, act: int, first_order: bool, need_x: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-task ``(dl/dtheta, dl/dlr, dl/dx)`` given ``grad = dl/dtheta_K``."""
    return tuple(_backends.get(backend).adapt_bwd(grad, theta, lr, x, y, dims, steps, loss, act, first_order, need_x))


@adapt_backward.register_fake
def _(grad, theta, lr, x, y, dims, steps, loss, act, first_order, need_x, backend):
    return grad.new_empty(grad.shape), grad.new_empty((grad.shape[0], *lr.shape)), x.new_empty(x.shape)


def _adapt_setup(ctx, inputs, output):
    theta, lr, x, y, dims, steps, loss, act, first_order, backend = inputs
    ctx.save_for_backward(theta, lr, x, y)
    ctx.args = (dims, steps, loss, act, first_order, backend)


def _adapt_grad(ctx, grad, bwd=None):
    theta, lr, x, y = ctx.saved_tensors
    dims, steps, loss, act, first_order, backend = ctx.args
    if torch.is_grad_enabled():  # create_graph=True
        return adapt_grads_with_graph(theta, lr, x, y, dims, steps, loss, act, first_order, grad,
                                      ctx.needs_input_grad) + (None,) * 7
    need_x = ctx.needs_input_grad[2]
    bwd = bwd or adapt_backward
    g = bwd(grad.contiguous(), theta, lr, x, y, dims, steps, loss, act, first_order, need_x, backend)
    return reduce_adapt_grads(theta, *g, ctx.needs_input_grad) + (None,) * 7


adapt_custom.register_autograd(_adapt_grad, setup_context=_adapt_setup)


@torch.library.custom_op("metakern_py::mlp", mutates_args=())
def mlp_custom(theta: Tensor, x: Tensor, dims: List[int], act: int, backend: str) -> Tensor:
    """Batched MLP forward ``[T, N, O]`` with packed parameters."""
    return _backends.get(backend).mlp_fwd(theta, x, dims, act)


@mlp_custom.register_fake
def _(theta, x, dims, act, backend):
    return x.new_empty((x.shape[0], x.shape[1], dims[-1]))


@torch.library.custom_op("metakern_py::mlp_backward", mutates_args=())
def mlp_backward(grad_out: Tensor, theta: Tensor, x: Tensor, dims: List[int], act: int, need_x: bool,
                 backend: str) -> Tuple[Tensor, Tensor]:
    """Per-task ``(dl/dtheta, dl/dx)`` of :func:`mlp`."""
    return tuple(_backends.get(backend).mlp_bwd(grad_out, theta, x, dims, act, need_x))


@mlp_backward.register_fake
def _(grad_out, theta, x, dims, act, need_x, backend):
    return x.new_empty((x.shape[0], theta.shape[-1])), x.new_empty(x.shape)


def _mlp_setup(ctx, inputs, output):
    theta, x, dims, act, backend = inputs
    ctx.save_for_backward(theta, x)
    ctx.args = (dims, act, backend)


def _mlp_grad(ctx, grad_out, bwd=None):
    theta, x = ctx.saved_tensors
    dims, act, backend = ctx.args
    if torch.is_grad_enabled():  # create_graph=True
        return mlp_grads_with_graph(theta, x, dims, act, grad_out, ctx.needs_input_grad) + (None,) * 3
    need_x = ctx.needs_input_grad[1]
    bwd = bwd or mlp_backward
    g_theta, g_x = bwd(grad_out.contiguous(), theta, x, dims, act, need_x, backend)
    return reduce_mlp_grads(theta, g_theta, g_x, ctx.needs_input_grad) + (None,) * 3


mlp_custom.register_autograd(_mlp_grad, setup_context=_mlp_setup)


# ------------------------------------------------------------------ eager fast path
def _adapt_bwd_direct(grad, theta, lr, x, y, dims, steps, loss, act, first_order, need_x, backend):
    return _backends.get(backend).adapt_bwd(grad, theta, lr, x, y, dims, steps, loss, act, first_order, need_x)


def _mlp_bwd_direct(grad_out, theta, x, dims, act, need_x, backend):
    return _backends.get(backend).mlp_bwd(grad_out, theta, x, dims, act, need_x)


class _AdaptFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta, lr, x, y, dims, steps, loss, act, first_order, backend):
        _adapt_setup(ctx, (theta, lr, x, y, dims, steps, loss, act, first_order, backend), None)
        return _backends.get(backend).adapt_fwd(theta, lr, x, y, dims, steps, loss, act)

    @staticmethod
    def backward(ctx, grad):
        return _adapt_grad(ctx, grad, _adapt_bwd_direct)


class _MlpFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta, x, dims, act, backend):
        _mlp_setup(ctx, (theta, x, dims, act, backend), None)
        return _backends.get(backend).mlp_fwd(theta, x, dims, act)

    @staticmethod
    def backward(ctx, grad_out):
        return _mlp_grad(ctx, grad_out, _mlp_bwd_direct)


class _MamlFn(torch.autograd.Function):
    """The MAML objective from a backend's fused ``maml_fwd``, reduced over tasks.

    Inputs: the packed inner rates ``lr``, the data, and the model's parameters
    themselves (packed here, so autograd sees one node, not a ``cat`` and a view per
    parameter). The forward computes the per-task losses and, when a parameter or
    ``lr`` needs a gradient, the per-task gradients ``dl_t/dtheta`` and ``dl_t/dlr``
    in the same pass (the kernel walks the inner loop once); the backward weights
    them by ``dL/dl_t`` and sums over tasks for shared tensors.
    """

    @staticmethod
    def forward(ctx, spec, lr, xs, ys, xq, yq, *params):
        dims, per_task, steps, loss, act, first_order, backend, reduction, step_weights = spec
        T = xs.shape[0]
        need_lr = bool(ctx.needs_input_grad[1])
        need = need_lr or any(ctx.needs_input_grad[6:])
        theta = pack_params(params, per_task, T)
        # mean and sum weigh every task alike: the kernel sums the shared inputs' gradients
        losses, g_theta, g_lr = _backends.get(backend).maml_fwd(theta, lr, xs, ys, xq, yq, dims, steps, loss, act,
                                                                first_order, need, need_lr, step_weights,
                                                                reduction != Reduction.NONE)
        # the inputs too, for a backward with create_graph=True (references, no copies)
        ctx.save_for_backward(g_theta, g_lr, lr, xs, ys, xq, yq, *params)
        ctx.spec, ctx.shapes = spec, [p.shape for p in params]
        return reduce_losses(losses, reduction)

    @staticmethod
    def backward(ctx, g_out):
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients
            _, _, lr, xs, ys, xq, yq, *params = ctx.saved_tensors
            dims, per_task, steps, loss, act, first_order, _, reduction, step_weights = ctx.spec
            out = maml_losses_with_graph(params, per_task, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order,
                                         reduction, step_weights)
            grads = grads_with_graph(out, (lr, *params), g_out, (ctx.needs_input_grad[1], *ctx.needs_input_grad[6:]))
            return (None, grads[0]) + (None,) * 4 + grads[1:]
        g_theta, g_lr, _, xs = ctx.saved_tensors[:4]
        dims, per_task, _, _, _, _, _, reduction, _ = ctx.spec
        T, none = xs.shape[0], reduction == Reduction.NONE
        # dL/dl_t: g_out per task, or one factor for every task (mean, sum), whose
        # gradients of shared tensors (lr; theta when no tensor is per task) the kernel summed
        c = g_out / T if reduction == Reduction.MEAN else g_out
        w = g_out if none else c.expand(T)
        g_lr_in = None
        if ctx.needs_input_grad[1]:
            g_lr_in = (w @ g_lr.flatten(1)).view(g_lr.shape[1:]) if none else g_lr[0] * c
        needs = ctx.needs_input_grad[6:]
        if not any(needs):
            return (None, g_lr_in) + (None,) * (4 + len(needs))
        sizes = split_sizes(tuple(dims))
        if not any(per_task):  # shared theta: one weighted sum over tasks, then views
            parts = ((w @ g_theta) if none else g_theta[0] * c).split(sizes)
            grads = [g.view(shape) for g, shape in zip(parts, ctx.shapes)]
        else:
            parts = (g_theta * w.unsqueeze(1)).split(sizes, dim=1)
            grads = [g.reshape(shape) if pt else g.sum(0).view(shape)
                     for g, pt, shape in zip(parts, per_task, ctx.shapes)]
        return (None, g_lr_in) + (None,) * 4 + tuple(g if n else None for g, n in zip(grads, needs))


def maml_op(params, per_task, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, backend, reduction,
            step_weights=None):
    """The MAML objective (per-task query losses after ``steps`` inner steps, or with
    ``step_weights`` ``w`` the multi-step loss ``sum_k w[k-1] L_q(theta_k)``, reduced
    over tasks by ``reduction``), differentiable w.r.t. ``params``, ``lr`` and
    (composed path) ``xs`` / ``xq``.

    Takes the backend's fused ``maml_fwd`` in eager mode when it has one and no input
    batch needs a gradient (differentiated by the backend's C++ node ``maml_loss``
    where it has one, else by :class:`_MamlFn`); otherwise composes :func:`adapt_op`
    and :func:`mlp_op` (also under ``torch.compile``, where those are registered ops):
    one adaptation of ``steps`` steps, or, for the multi-step loss, one single-step
    adaptation per inner step with the query loss after each.
    """
    b = _backends.get(backend)
    fused = b.maml_fwd is not None and not is_compiling()
    if fused and not (torch.is_grad_enabled() and (xs.requires_grad or xq.requires_grad)):
        if b.maml_loss is not None:  # the same node, in C++
            return b.maml_loss(params, per_task, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, reduction,
                               step_weights)
        spec = (tuple(dims), tuple(per_task), steps, loss, act, first_order, backend, reduction, step_weights)
        return _MamlFn.apply(spec, lr, xs, ys, xq, yq, *params)
    theta = pack_params(params, per_task, xs.shape[0])

    def query(th):
        return torch_backend.loss_value(mlp_op(th, xq, list(dims), act, backend), yq, loss)

    if step_weights is None:
        losses = query(adapt_op(theta, lr, xs, ys, list(dims), steps, loss, act, first_order, backend))
    else:  # one single-step adaptation per step, the query loss after each
        losses, th = 0, theta
        for k in range(steps):
            rate = lr if lr.dim() == 1 else lr[k].contiguous()
            th = adapt_op(th, rate, xs, ys, list(dims), 1, loss, act, first_order, backend)
            losses = losses + step_weights[k] * query(th)
    return reduce_losses(losses, reduction)


# Backends whose adaptation kernels take one rate row for every step ([P]): per-step
# rates ([K, P]) run there as one single-step adaptation per step.
_ONE_RATE_ROW = ("triton",)


def adapt_op(theta, lr, x, y, dims, steps, loss, act, first_order, backend):
    """The fused adaptation with autograd: registered op when compiling, Function in eager mode."""
    if lr.dim() == 2 and backend in _ONE_RATE_ROW:
        for k in range(steps):
            theta = adapt_op(theta, lr[k].contiguous(), x, y, dims, 1, loss, act, first_order, backend)
        return theta if steps else adapt_op(theta, lr.new_zeros(lr.shape[1]), x, y, dims, 0, loss, act,
                                            first_order, backend)
    if is_compiling():
        return adapt_custom(theta, lr, x, y, dims, steps, loss, act, first_order, backend)
    return _AdaptFn.apply(theta, lr, x, y, dims, steps, loss, act, first_order, backend)


def mlp_op(theta, x, dims, act, backend):
    """The fused batched MLP forward with autograd (see :func:`adapt_op`)."""
    if is_compiling():
        return mlp_custom(theta, x, dims, act, backend)
    if backend == "torch":  # plain ATen ops: autograd's own backward, no recompute
        return torch_backend.mlp_apply(theta, x, dims, act)
    return _MlpFn.apply(theta, x, dims, act, backend)


# ------------------------------------------------------------------ a validated problem
def adapt(p: Problem) -> Tensor:
    """``theta_K`` ``[T, P]`` of a validated adaptation problem."""
    theta = pack_params(p.params, p.per_task, p.xs.shape[0])
    return adapt_op(theta, p.lr, p.xs, p.ys, list(p.dims), p.steps, p.loss, p.act, p.first_order, p.backend)


def meta_loss(p: Problem) -> Tensor:
    """The MAML objective of a validated problem with a query set."""
    return maml_op(p.params, p.per_task, p.lr, p.xs, p.ys, p.xq, p.yq, p.dims, p.steps, p.loss, p.act,
                   p.first_order, p.backend, p.reduction, p.step_weights)


def forward(theta: Tensor, x: Tensor, dims, act: int, backend: str) -> Tensor:
    """The fused MLP forward of packed ``theta`` (``[P]`` or ``[T, P]``) on validated ``x``."""
    return mlp_op(theta, x, list(dims), act, backend)


# ------------------------------------------------------- the ops of metakern._C
def _register_compiled_ops():
    """Fake kernels and autograd formulas of ``torch.ops.metakern.*`` (see the module docstring)."""
    ops = torch.ops.metakern

    @torch.library.register_fake("metakern::adapt_fwd")
    def _(theta, lr, x, y, dims, steps, loss, act):
        return theta.new_empty((x.shape[0], theta.shape[-1]))

    @torch.library.register_fake("metakern::adapt_bwd")
    def _(grad, theta, lr, x, y, dims, steps, loss, act, first_order, need_x):
        return grad.new_empty(grad.shape), grad.new_empty((grad.shape[0], *lr.shape)), x.new_empty(x.shape)

    @torch.library.register_fake("metakern::mlp_fwd")
    def _(theta, x, dims, act):
        return x.new_empty((x.shape[0], x.shape[1], dims[-1]))

    @torch.library.register_fake("metakern::mlp_bwd")
    def _(grad_out, theta, x, dims, act, need_x):
        return x.new_empty((x.shape[0], theta.shape[-1])), x.new_empty(x.shape)

    @torch.library.register_fake("metakern::maml_fwd")
    def _(theta, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, need_grad, need_lr=True, step_weights=None,
          sum_tasks=False):
        n = (1 if sum_tasks else xs.shape[0]) if need_grad else 0
        n_theta = xs.shape[0] if need_grad and theta.dim() == 2 else n
        g_lr_shape = (n, *lr.shape) if need_grad and need_lr else (0, theta.shape[-1])
        return theta.new_empty((xs.shape[0],)), theta.new_empty((n_theta, theta.shape[-1])), theta.new_empty(g_lr_shape)

    def adapt_setup(ctx, inputs, output):
        theta, lr, x, y, dims, steps, loss, act = inputs
        ctx.save_for_backward(theta, lr, x, y)
        ctx.args = (dims, steps, loss, act)

    def adapt_grad(ctx, grad):
        theta, lr, x, y = ctx.saved_tensors
        dims, steps, loss, act = ctx.args
        if torch.is_grad_enabled():  # create_graph=True
            return adapt_grads_with_graph(theta, lr, x, y, dims, steps, loss, act, False, grad,
                                          ctx.needs_input_grad) + (None,) * 5
        g = ops.adapt_bwd(grad.contiguous(), theta, lr, x, y, dims, steps, loss, act, False, ctx.needs_input_grad[2])
        return reduce_adapt_grads(theta, *g, ctx.needs_input_grad) + (None,) * 5

    torch.library.register_autograd("metakern::adapt_fwd", adapt_grad, setup_context=adapt_setup)

    def mlp_setup(ctx, inputs, output):
        theta, x, dims, act = inputs
        ctx.save_for_backward(theta, x)
        ctx.args = (dims, act)

    def mlp_grad(ctx, grad_out):
        theta, x = ctx.saved_tensors
        dims, act = ctx.args
        if torch.is_grad_enabled():  # create_graph=True
            return mlp_grads_with_graph(theta, x, dims, act, grad_out, ctx.needs_input_grad) + (None,) * 2
        g_theta, g_x = ops.mlp_bwd(grad_out.contiguous(), theta, x, dims, act, ctx.needs_input_grad[1])
        return reduce_mlp_grads(theta, g_theta, g_x, ctx.needs_input_grad) + (None,) * 2

    torch.library.register_autograd("metakern::mlp_fwd", mlp_grad, setup_context=mlp_setup)


if _backends.load_extension()[0] is not None:
    _register_compiled_ops()
