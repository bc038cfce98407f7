"""The ``torch`` backend: the readable reference of every fused kernel.

Pure PyTorch, any device, batched over tasks with ``bmm``. It works on the packed
representation of ``docs/kernels.md``: ``theta`` is ``[P]`` (shared) or ``[T, P]``
(per task), laid out as ``W_1, b_1, ..., W_L, b_L`` in ``nn.Linear`` layout.

Everything here runs without autograd: the forward pass keeps nothing, the
backward pass recomputes the inner trajectory ``theta_0 .. theta_{K-1}`` and runs
the reverse pass of ``docs/kernels.md`` with exact Hessian-vector products obtained from one
forward-over-reverse (R-operator) sweep through the MLP. The kernels in ``csrc/``
and ``metakern/triton`` mirror these functions stage by stage.

Notation (per task; ``a_0 = x``; layer ``l = 1..L``):

    z_l = a_{l-1} W_l^T + b_l,   a_l = s(z_l) (l < L),   out = z_L
    delta_L = dLoss/dout,        delta_{l-1} = (delta_l W_l) * s'(z_{l-1})
    dW_l = delta_l^T a_{l-1},    db_l = sum_n delta_l
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._contract import Act, Loss, unpack_params

# plain ints: compared on every call of the stages below
ACT_IDENTITY, ACT_RELU, ACT_TANH, ACT_SIGMOID = (int(a) for a in (Act.IDENTITY, Act.RELU, Act.TANH, Act.SIGMOID))
LOSS_MSE, LOSS_CE = int(Loss.MSE), int(Loss.CROSS_ENTROPY)


# ----------------------------------------------------------------------------- layout
def unpack(theta: Tensor, dims: Sequence[int], T: int) -> Tuple[List[Tensor], List[Tensor]]:
    """Views ``W_l`` and ``b_l`` of packed ``theta``.

    Per-task ``theta`` (``[T, P]``) gives ``[T, out, in]`` and ``[T, out]``; a shared
    one (``[P]``) gives ``[out, in]`` and ``[out]``, which the stages below apply to
    all ``T * N`` points in one matrix product instead of ``T`` small ones.
    """
    ps = unpack_params(theta, dims)
    return ps[0::2], ps[1::2]


def linear(a: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """``a W^T + b`` for ``a`` ``[T, N, in]``: per-task ``W`` ``[T, out, in]`` (``baddbmm``)
    or shared ``W`` ``[out, in]`` (one ``addmm`` over all ``T * N`` rows)."""
    if W.dim() == 2:
        return torch.nn.functional.linear(a, W, b)
    return torch.baddbmm(b.unsqueeze(1), a, W.transpose(1, 2))


def matmul_w(d: Tensor, W: Tensor) -> Tensor:
    """``d W`` for ``d`` ``[T, N, out]`` and a per-task or shared ``W``."""
    return torch.bmm(d, W) if W.dim() == 3 else torch.matmul(d, W)


def add_matmul_wt_(acc: Tensor, a: Tensor, W: Tensor) -> Tensor:
    """``acc += a W^T`` in place (``acc`` freshly computed, contiguous)."""
    if W.dim() == 3:
        return acc.baddbmm_(a, W.transpose(1, 2))
    acc.view(-1, acc.shape[-1]).addmm_(a.reshape(-1, a.shape[-1]), W.t())
    return acc


def pack(Ws: Sequence[Tensor], bs: Sequence[Tensor]) -> Tensor:
    """Inverse of :func:`unpack` for per-task tensors: ``[T, P]``."""
    T = Ws[0].shape[0]
    parts = []
    for W, b in zip(Ws, bs):
        parts.append(W.reshape(T, -1))
        parts.append(b.reshape(T, -1))
    return torch.cat(parts, dim=1)


# ------------------------------------------------------------------------ activations
def act_fn(z: Tensor, act: int) -> Tensor:
    """``a = s(z)``."""
    if act == ACT_RELU:
        return torch.relu(z)
    if act == ACT_TANH:
        return torch.tanh(z)
    if act == ACT_SIGMOID:
        return torch.sigmoid(z)
    return z


def mul_d1(g: Tensor, a: Tensor, act: int) -> Tensor:
    """``g * s'(z)`` from ``a = s(z)`` in one ATen call (the activations' own backward kernels)."""
    if act == ACT_RELU:
        return torch.ops.aten.threshold_backward(g, a, 0)
    if act == ACT_TANH:
        return torch.ops.aten.tanh_backward(g, a)
    if act == ACT_SIGMOID:
        return torch.ops.aten.sigmoid_backward(g, a)
    return g


def act_d2(a: Tensor, act: int) -> Optional[Tensor]:
    """``s''(z)`` from ``a = s(z)``; ``None`` means 0 (identity, relu).

    tanh: ``-2 a (1 - a^2)``, sigmoid: ``a (1 - a) (1 - 2a)``.
    """
    if act == ACT_TANH:
        return -2 * a * (1 - a * a)
    if act == ACT_SIGMOID:
        return a * (1 - a) * (1 - 2 * a)
    return None


# ---------------------------------------------------------------------------- stages
def mlp_forward(Ws: Sequence[Tensor], bs: Sequence[Tensor], x: Tensor, act: int) -> Tuple[List[Tensor], Tensor]:
    """Forward pass. Returns the layer inputs ``[a_0 = x, a_1, ..., a_{L-1}]`` and ``out = z_L``."""
    acts = [x]
    a = x
    L = len(Ws)
    for l in range(L):
        z = linear(a, Ws[l], bs[l])
        if l < L - 1:
            a = act_fn(z, act)
            acts.append(a)
        else:
            return acts, z
    raise AssertionError("unreachable")


def loss_grad(out: Tensor, y: Tensor, loss: int) -> Tuple[Tensor, Optional[Tensor]]:
    """``dLoss/dout`` of the task-mean loss, and the softmax ``p`` for cross-entropy.

    MSE ``mean((out - y)^2)`` over ``N*O`` entries: ``2 (out - y) / (N O)``.
    Cross-entropy ``mean_n CE(out_n, y_n)``: ``(softmax(out_n) - onehot(y_n)) / N``.
    """
    N = out.shape[1]
    if loss == LOSS_MSE:
        return (out - y) * (2.0 / (N * out.shape[2])), None
    p = torch.softmax(out, dim=-1)
    idx = y.unsqueeze(-1)
    g = p.scatter(-1, idx, p.gather(-1, idx) - 1)
    return g.mul_(1.0 / N), p


def loss_hvp(r_out: Tensor, p: Optional[Tensor], loss: int) -> Tensor:
    """``H_out R{out}``: MSE ``2/(N O) R``; cross-entropy per point ``(p*R - p (p.R)) / N``."""
    N = r_out.shape[1]
    if loss == LOSS_MSE:
        return r_out * (2.0 / (N * r_out.shape[2]))
    pr = p * r_out
    return (pr - p * pr.sum(-1, keepdim=True)).mul_(1.0 / N)


def backprop(Ws: Sequence[Tensor], acts: Sequence[Tensor], d_out: Tensor, act: int, need_x: bool):
    """Reverse sweep. Returns ``(dWs, dbs, deltas, backs, dx)``.

    ``deltas[l]`` is ``delta`` at layer ``l``'s output and ``backs[l] = delta_l W_l``
    (the gradient at layer ``l``'s input before the activation derivative), both
    kept for the R-operator; ``dx = backs[0]`` when ``need_x``.
    """
    L = len(Ws)
    dWs, dbs, deltas, backs = [None] * L, [None] * L, [None] * L, [None] * L
    delta = d_out
    for l in range(L - 1, -1, -1):
        deltas[l] = delta
        dWs[l] = torch.bmm(delta.transpose(1, 2), acts[l])
        dbs[l] = delta.sum(1)
        if l > 0 or need_x:
            backs[l] = matmul_w(delta, Ws[l])
        if l > 0:
            delta = mul_d1(backs[l], acts[l], act)
    return dWs, dbs, deltas, backs, backs[0] if need_x else None


def task_grad(theta: Tensor, x: Tensor, y: Tensor, dims, loss: int, act: int, need_x: bool = False):
    """``g = grad_theta L(theta; x, y)`` packed ``[T, P]``, with the cache the R-operator needs."""
    T = x.shape[0]
    Ws, bs = unpack(theta, dims, T)
    acts, out = mlp_forward(Ws, bs, x, act)
    d_out, p = loss_grad(out, y, loss)
    dWs, dbs, deltas, backs, _ = backprop(Ws, acts, d_out, act, need_x=False)
    cache = (Ws, acts, deltas, backs, p)
    return pack(dWs, dbs), cache


def hvp(cache, u: Tensor, dims, loss: int, act: int, need_x: bool):
    """One R-operator sweep: ``H u`` packed ``[T, P]`` and the mixed term ``R{delta_0}``.

    Forward (``R{a_0} = 0``): ``R{z_l} = R{a_{l-1}} W_l^T + a_{l-1} uW_l^T + ub_l``,
    ``R{a_l} = s'(z_l) R{z_l}``. Backward: ``R{delta_L} = H_out R{z_L}``,
    ``R{dW_l} = R{delta_l}^T a_{l-1} + delta_l^T R{a_{l-1}}``, ``R{db_l} = sum R{delta_l}``,
    ``R{delta_{l-1}} = (R{delta_l} W_l + delta_l uW_l) s'(z_{l-1}) + (delta_l W_l) s''(z_{l-1}) R{z_{l-1}}``,
    ``R{delta_0} = R{delta_1} W_1 + delta_1 uW_1`` (= d/dx of ``u . grad_theta L``).
    """
    Ws, acts, deltas, backs, p = cache
    T = u.shape[0]
    uWs, ubs = unpack(u, dims, T)
    L = len(Ws)
    r_z, r_a = [None] * L, [None] * L  # r_a[l] = R{a_l}, the tangent of layer l's input
    for l in range(L):
        rz = torch.baddbmm(ubs[l].unsqueeze(1), acts[l], uWs[l].transpose(1, 2))
        if l > 0:
            rz = add_matmul_wt_(rz, r_a[l], Ws[l])
        r_z[l] = rz
        if l < L - 1:
            r_a[l + 1] = mul_d1(rz, acts[l + 1], act)
    r_delta = loss_hvp(r_z[L - 1], p, loss)
    rWs, rbs = [None] * L, [None] * L
    r_dx = None
    for l in range(L - 1, -1, -1):
        rW = torch.bmm(r_delta.transpose(1, 2), acts[l])
        if l > 0:
            rW = torch.baddbmm(rW, deltas[l].transpose(1, 2), r_a[l])
        rWs[l], rbs[l] = rW, r_delta.sum(1)
        if l > 0 or need_x:
            back = matmul_w(r_delta, Ws[l]).baddbmm_(deltas[l], uWs[l])
        if l > 0:
            a = acts[l]
            d2 = act_d2(a, act)
            r_delta = mul_d1(back, a, act)
            if d2 is not None:
                r_delta = r_delta + backs[l] * d2 * r_z[l - 1]
        elif need_x:
            r_dx = back
    return pack(rWs, rbs), r_dx


def _per_task(theta: Tensor, T: int) -> Tensor:
    return theta.unsqueeze(0).expand(T, -1) if theta.dim() == 1 else theta


# ----------------------------------------------------------------------- fused ops
def lr_row(lr: Tensor, k: int) -> Tensor:
    """Inner step ``k``'s rates: ``lr`` itself when it is ``[P]`` (every step's), row
    ``k`` when it is ``[K, P]`` (per-step rates)."""
    return lr if lr.dim() == 1 else lr[k]


def _g_lr_buffer(v: Tensor, lr: Tensor) -> Tensor:
    """Per-task rate gradient: ``[T, P]`` for ``[P]`` rates, ``[T, K, P]`` for ``[K, P]``."""
    return v.new_zeros((v.shape[0], *lr.shape))


def _g_lr_row(g_lr: Tensor, lr: Tensor, k: int) -> Tensor:
    return g_lr if lr.dim() == 1 else g_lr[:, k]


@torch.no_grad()
def adapt_fwd(theta: Tensor, lr: Tensor, x: Tensor, y: Tensor, dims, steps: int, loss: int, act: int) -> Tensor:
    """``theta_{k+1} = theta_k - lr_k * grad L(theta_k)`` for ``k < steps`` (``lr_k``: see
    :func:`lr_row`); returns ``theta_K`` ``[T, P]``."""
    T = x.shape[0]
    if steps == 0:
        return _per_task(theta, T).clone(memory_format=torch.contiguous_format)
    th = theta  # shared ([P]) until the first step makes it per task
    for k in range(steps):
        g, _ = task_grad(th, x, y, dims, loss, act)
        rate = lr_row(lr, k)
        th = torch.addcmul(th, g, rate, value=-1.0) if k == 0 else th.addcmul_(g, rate, value=-1.0)
    return th


@torch.no_grad()
def adapt_bwd(grad: Tensor, theta: Tensor, lr: Tensor, x: Tensor, y: Tensor, dims, steps: int, loss: int,
              act: int, first_order: bool, need_x: bool):
    """Reverse pass of ``docs/kernels.md`` with ``v_K = grad``; returns per-task ``(v_0, g_lr, g_x)``.

    For ``k = K-1 .. 0``: ``u = lr_k * v_{k+1}``; ``g_lr[k] -= g_k * v_{k+1}`` (one
    ``[T, P]`` sum over k for ``[P]`` rates, a ``[T, K, P]`` row per step for ``[K, P]``);
    second order: ``v_k = v_{k+1} - H_k u`` and ``g_x -= R{delta_0}``.
    """
    th = theta  # shared ([P]) theta_0 keeps the one-matrix-product path of the stages
    traj = []  # theta_0 .. theta_{K-1}: parameters only, no activations
    for k in range(steps):
        traj.append(th)
        if k < steps - 1:
            g, _ = task_grad(th, x, y, dims, loss, act)
            th = torch.addcmul(th, g, lr_row(lr, k), value=-1.0)
    v = grad.clone(memory_format=torch.contiguous_format)
    g_lr = _g_lr_buffer(v, lr)
    g_x = torch.zeros_like(x)
    for k in range(steps - 1, -1, -1):
        g, cache = task_grad(traj[k], x, y, dims, loss, act)
        _g_lr_row(g_lr, lr, k).addcmul_(g, v, value=-1.0)
        if not first_order:
            hu, r_dx = hvp(cache, v * lr_row(lr, k), dims, loss, act, need_x)
            v.sub_(hu)
            if need_x:
                g_x.sub_(r_dx)
    return v, g_lr, g_x


def loss_value(out: Tensor, y: Tensor, loss: int) -> Tensor:
    """Per-task mean loss ``[T]``: MSE over ``N*O`` entries, cross-entropy over ``N`` points."""
    if loss == LOSS_MSE:
        return (out - y).square().mean((1, 2))
    T, N, O = out.shape
    return torch.nn.functional.cross_entropy(out.reshape(T * N, O), y.reshape(-1), reduction="none").view(T, N).mean(1)


def _query(theta: Tensor, xq: Tensor, yq: Tensor, dims, loss: int, act: int, need_grad: bool):
    """Per-task query loss ``[T]`` at ``theta`` and, with ``need_grad``, its gradient ``[T, P]``."""
    Ws, bs = unpack(theta, dims, xq.shape[0])
    acts, out = mlp_forward(Ws, bs, xq, act)
    losses = loss_value(out, yq, loss)
    if not need_grad:
        return losses, None
    d_out, _ = loss_grad(out, yq, loss)
    dWs, dbs, _, _, _ = backprop(Ws, acts, d_out, act, need_x=False)
    return losses, pack(dWs, dbs)


@torch.no_grad()
def maml_fwd(theta: Tensor, lr: Tensor, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, dims, steps: int, loss: int,
             act: int, first_order: bool, need_grad: bool, need_lr: bool = True,
             step_weights: Optional[Tensor] = None, sum_tasks: bool = False):
    """The MAML objective and its gradient in one pass (``metakern::maml_fwd``).

    See :func:`_maml_fwd_tasks` for the per-task results. With ``sum_tasks`` the
    gradients of shared inputs come summed over tasks with a leading axis of 1:
    ``g_lr`` always, ``g_theta`` when ``theta`` is ``[P]``.
    """
    losses, g_theta, g_lr = _maml_fwd_tasks(theta, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order,
                                            need_grad, need_lr, step_weights)
    if sum_tasks and need_grad:
        if theta.dim() == 1:
            g_theta = g_theta.sum(0, keepdim=True)
        if need_lr:
            g_lr = g_lr.sum(0, keepdim=True)
    return losses, g_theta, g_lr


def _maml_fwd_tasks(theta: Tensor, lr: Tensor, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, dims, steps: int,
                    loss: int, act: int, first_order: bool, need_grad: bool, need_lr: bool,
                    step_weights: Optional[Tensor]):
    """The per-task results of :func:`maml_fwd`.

    Walks ``theta_0 .. theta_K`` on the support set, evaluates the per-task query
    loss ``l_t = L_q(theta_K)`` (with ``step_weights`` ``w`` ``[K]``, the multi-step
    loss ``l_t = sum_{k=1..K} w[k-1] L_q(theta_k)``) and, when ``need_grad``, runs the
    reverse pass of :func:`adapt_bwd` from ``v_K = w[K-1] grad L_q(theta_K)``, adding
    ``w[k-1] grad L_q(theta_k)`` to ``v_k`` on the way back. Unlike ``adapt_fwd`` +
    ``adapt_bwd`` the last inner step's activations are not recomputed: its cache is
    still at hand. ``lr`` is ``[P]`` or ``[K, P]`` (:func:`lr_row`). Returns
    ``(losses [T], g_theta [T, P], g_lr)`` with ``g_lr`` ``[T, P]`` or ``[T, K, P]``
    like ``lr`` (the two gradients ``[0, P]`` without ``need_grad``; ``g_lr`` is
    ``[0, P]`` too when ``need_lr`` is false).
    """
    T, P = xs.shape[0], theta.shape[-1]
    w = step_weights
    traj, cache, g = [theta], None, None
    need_lr = need_lr and need_grad
    # first order: the support gradients are all g_lr needs; their sum when v stays v_K
    # (one rate row, no step weights), each of them otherwise
    keep_g = need_lr and first_order
    summed = w is None and lr.dim() == 1
    gs, g_sum = [], None
    for k in range(steps):
        g, cache = task_grad(traj[k], xs, ys, dims, loss, act)
        if keep_g and summed:
            g_sum = g if g_sum is None else g_sum.add_(g)
        elif keep_g:
            gs.append(g)
        traj.append(torch.addcmul(traj[k], g, lr_row(lr, k), value=-1.0))
    none = theta.new_empty((0, P))  # a gradient not asked for
    losses, v = _query(traj[steps], xq, yq, dims, loss, act, need_grad)
    gq = {}  # the earlier steps' weighted query gradients, added to v_k on the way back
    if w is not None:
        losses = losses * w[steps - 1]
        if need_grad:
            v.mul_(w[steps - 1])
        for k in range(1, steps):
            l_k, g_k = _query(traj[k], xq, yq, dims, loss, act, need_grad)
            losses = losses + w[k - 1] * l_k
            if need_grad:
                gq[k] = g_k.mul_(w[k - 1])
    if not need_grad:
        return losses, none, none
    if first_order and summed:  # v stays v_K: one product for g_lr
        if not need_lr:
            return losses, v, none
        return losses, v, (-(g_sum * v) if g_sum is not None else torch.zeros_like(v))
    g_lr = _g_lr_buffer(v, lr) if need_lr else none
    for k in range(steps - 1, -1, -1):
        if first_order:
            g = gs[k] if need_lr else None
        elif k < steps - 1:
            g, cache = task_grad(traj[k], xs, ys, dims, loss, act)
        if need_lr:
            _g_lr_row(g_lr, lr, k).addcmul_(g, v, value=-1.0)
        if not first_order:
            hu, _ = hvp(cache, v * lr_row(lr, k), dims, loss, act, False)
            v.sub_(hu)
        if k in gq:
            v.add_(gq.pop(k))
    return losses, v, g_lr


def mlp_apply(theta: Tensor, x: Tensor, dims, act: int) -> Tensor:
    """Batched MLP forward ``[T, N, O]`` with packed parameters, differentiable by autograd.

    In eager mode the torch backend's fused forward is exactly this (autograd keeps
    the activations of this single forward, which the backward needs anyway).
    """
    Ws, bs = unpack(theta, dims, x.shape[0])
    return mlp_forward(Ws, bs, x, act)[1]


mlp_fwd = torch.no_grad()(mlp_apply)
mlp_fwd.__doc__ = """Batched MLP forward ``[T, N, O]`` with packed parameters (no graph)."""


@torch.no_grad()
def mlp_bwd(grad_out: Tensor, theta: Tensor, x: Tensor, dims, act: int, need_x: bool):
    """Backward of :func:`mlp_fwd`: per-task ``(g_theta [T, P], g_x [T, N, D])``."""
    Ws, bs = unpack(theta, dims, x.shape[0])
    acts, _ = mlp_forward(Ws, bs, x, act)
    dWs, dbs, _, _, dx = backprop(Ws, acts, grad_out, act, need_x)
    return pack(dWs, dbs), dx if need_x else torch.zeros_like(x)
