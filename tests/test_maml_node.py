"""The MAML objective's C++ layer: the raw ops and the C++ autograd node, called directly.

``torch.ops.metakern.maml_fwd`` (the fused CPU kernel), ``metakern._C.maml_fwd_composed``
(the composition of the four ops that is CUDA's maml_fwd, run here on the CPU ops) and
``metakern._C.maml_loss`` (the autograd node of the cpp backend), against the torch
backend's maml_fwd, the Python ``_MamlFn`` and the float64 references. The public
``meta_loss`` on every backend is tests/test_meta_loss.py.
"""
import itertools

import pytest
import torch

import metakern.backends as B
import metakern.functional as MF
from metakern._contract import REDUCTIONS, pack_params
from metakern._validate import pack_lr
from helpers import (ACTS, DIMS, LOSSES, RTOL, assert_close, lr_leaves, make_problem,
                     poison_uninitialised_memory, seeded)  # noqa: F401 (autouse fixture)

needs_cpp = pytest.mark.skipif(bool(B.available()["cpp"]), reason="the cpp backend is not built (test_build checks "
                                                                  "it is in CI)")


# ------------------------------------------------------------------ the raw ops


@needs_cpp
@pytest.mark.parametrize("first_order", [False, True])
def test_raw_maml_op_without_lr_gradient(first_order):
    """need_lr=False drops g_lr (shape [0, P]) and leaves the losses and g_theta bit for bit."""
    g = torch.Generator().manual_seed(8)
    params, xs, ys, _ = make_problem(g, (3, 6, 4), 3, 5, "cross_entropy", torch.float64, [True, False])
    _, xq, yq, _ = make_problem(g, (3, 6, 4), 3, 4, "cross_entropy", torch.float64)
    theta = pack_params(params, [True, True, False, False], 3).contiguous()  # layer 1 per task, layer 2 shared
    lr = torch.rand(theta.shape[1], generator=g, dtype=torch.float64) * 0.2
    op = torch.ops.metakern.maml_fwd
    full = op(theta, lr, xs, ys, xq, yq, [3, 6, 4], 2, 1, 2, first_order, True)
    lean = op(theta, lr, xs, ys, xq, yq, [3, 6, 4], 2, 1, 2, first_order, True, False)
    assert full[2].shape == theta.shape and lean[2].shape == (0, theta.shape[1])
    assert torch.equal(full[0], lean[0]) and torch.equal(full[1], lean[1])
    assert full[2].abs().sum() > 0  # the lr gradient it dropped was not trivially zero


def _composed_cases():
    out = []
    for i, (dims, act, loss, fo) in enumerate(itertools.product(DIMS, ACTS, LOSSES, [False, True])):
        steps, shared = i % 4, i % 3 != 1
        need_grad, need_lr = i % 5 != 4, i % 7 != 6
        out.append(pytest.param(dims, act, loss, fo, steps, shared, need_grad, need_lr,
                                id=f"{'x'.join(map(str, dims))}-{act}-{loss}-{'fo' if fo else 'so'}-K{steps}"
                                   f"-{'sh' if shared else 'pt'}{'' if need_grad else '-nograd'}"
                                   f"{'' if need_lr else '-nolr'}"))
    return out


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("dims,act,loss,first_order,steps,shared,need_grad,need_lr", _composed_cases())
def test_composed_maml_fwd_matches_fused(request, dims, act, loss, first_order, steps, shared, need_grad, need_lr,
                                         dtype):
    """The C++ composition of adapt_fwd, mlp_fwd, mlp_bwd and adapt_bwd (the CUDA
    backend's maml_fwd, csrc/cuda/maml_composed.cpp), run on the CPU ops, against the fused
    CPU kernel and the torch backend's maml_fwd: losses, g_theta, g_lr and their shapes."""
    from metakern import _C
    from metakern.backends import torch_backend as TB

    g = seeded(request)
    T, Ns, Nq = 3, 5, 4
    params, xs, ys, lr = make_problem(g, dims, T, Ns, loss, dtype, per_task=not shared, lr_kind="per_param")
    _, xq, yq, _ = make_problem(g, dims, T, Nq, loss, dtype)
    theta = pack_params(params, [not shared] * len(params), T).contiguous()
    lr = torch.cat([l.reshape(-1) for l in lr]).to(dtype)
    codes = (list(dims), steps, LOSSES.index(loss), MF.ACTIVATIONS[act], first_order, need_grad, need_lr)
    got = _C.maml_fwd_composed(theta, lr, xs, ys, xq, yq, *codes)
    fused = torch.ops.metakern.maml_fwd(theta, lr, xs, ys, xq, yq, *codes)
    ref = TB.maml_fwd(theta, lr, xs, ys, xq, yq, *codes)
    P = theta.shape[-1]
    want = [(T,), (T, P) if need_grad else (0, P), (T, P) if need_grad and need_lr else (0, P)]
    for name, a, f, r, shape in zip(("losses", "g_theta", "g_lr"), got, fused, ref, want):
        assert tuple(a.shape) == shape and a.dtype == dtype, (name, a.shape, a.dtype)
        assert_close(a, f, RTOL[dtype], f"{name} vs the fused kernel")
        assert_close(a, r, RTOL[dtype], f"{name} vs the torch backend")


def _sum_cases():
    out = []
    for i, (loss, fo, lr_rows, weighted) in enumerate(itertools.product(LOSSES, [False, True], [False, True],
                                                                        [False, True])):
        T = (1, 7, 70, 130)[i % 4]  # one task, a few, and more than the cpp kernel's 64 blocks
        dims = ((3, 17, 5), (5, 3, 17, 4, 2), (1, 40, 40, 2))[i % 3]
        shared, need_lr = i % 3 != 2, i % 5 != 4
        out.append(pytest.param(dims, loss, fo, lr_rows, weighted, T, shared, need_lr,
                                id=f"{'x'.join(map(str, dims))}-{loss}-{'fo' if fo else 'so'}-"
                                   f"{'KP' if lr_rows else 'P'}{'-msl' if weighted else ''}-T{T}"
                                   f"-{'sh' if shared else 'pt'}{'' if need_lr else '-nolr'}"))
    return out


@needs_cpp
@pytest.mark.parametrize("dims,loss,first_order,lr_rows,weighted,T,shared,need_lr", _sum_cases())
def test_maml_fwd_sum_tasks(request, dims, loss, first_order, lr_rows, weighted, T, shared, need_lr):
    """sum_tasks: the fused CPU kernel, the C++ composition (CUDA's maml_fwd) and the
    torch backend return the shared inputs' gradients summed over tasks ([1, ...]: g_lr,
    and g_theta when theta is [P]; a per-task theta keeps [T, P]), equal to the sum of
    their per-task results in float64, the losses unchanged; the fused kernel's bits do
    not depend on the number of threads."""
    from metakern import _C
    from metakern.backends import torch_backend as TB

    g = seeded(request)
    Ns, Nq, K = 5, 4, 3
    params, xs, ys, _ = make_problem(g, dims, T, Ns, loss, torch.float64, per_task=not shared)
    _, xq, yq, _ = make_problem(g, dims, T, Nq, loss, torch.float64)
    theta = pack_params(params, [not shared] * len(params), T).contiguous()
    P = theta.shape[-1]
    lr = (0.05 + 0.2 * torch.rand((K, P) if lr_rows else (P,), generator=g, dtype=torch.float64))
    sw = torch.rand(K, generator=g, dtype=torch.float64) if weighted else None
    codes = (list(dims), K, LOSSES.index(loss), MF.ACTIVATIONS["tanh"], first_order, True, need_lr, sw)
    for name, fn in (("fused", torch.ops.metakern.maml_fwd), ("composed", _C.maml_fwd_composed),
                     ("torch", TB.maml_fwd)):
        per = fn(theta, lr, xs, ys, xq, yq, *codes, False)
        tot = fn(theta, lr, xs, ys, xq, yq, *codes, True)
        assert torch.equal(tot[0], per[0]), name
        want_theta = per[1].sum(0, keepdim=True) if shared else per[1]
        assert tot[1].shape == want_theta.shape, (name, tot[1].shape)
        assert_close(tot[1], want_theta, RTOL[torch.float64], f"{name} g_theta")
        if need_lr:
            assert tot[2].shape == (1, *lr.shape), (name, tot[2].shape)
            assert_close(tot[2], per[2].sum(0, keepdim=True), RTOL[torch.float64], f"{name} g_lr")
            assert tot[2].abs().sum() > 0
        else:
            assert tot[2].shape == (0, P), (name, tot[2].shape)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.metakern.maml_fwd(theta, lr, xs, ys, xq, yq, *codes, True)
        torch.set_num_threads(2)
        two = torch.ops.metakern.maml_fwd(theta, lr, xs, ys, xq, yq, *codes, True)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@needs_cpp
@pytest.mark.parametrize("impl", ["fused", "composed"])
def test_raw_maml_op_checks_its_arguments(impl):
    """The C++ objective validates the whole call itself, the query set too, and names
    the argument: the fused CPU kernel (torch.ops.metakern.maml_fwd) and the composition
    of the four ops (metakern._C.maml_fwd_composed, CUDA's maml_fwd)."""
    from metakern import _C

    op = torch.ops.metakern.maml_fwd if impl == "fused" else _C.maml_fwd_composed
    g = torch.Generator().manual_seed(0)
    params, xs, ys, _ = make_problem(g, (3, 5, 4), 2, 4, "cross_entropy", torch.float32)
    theta = torch.cat([p.reshape(-1) for p in params])
    lr = torch.full_like(theta, 0.1)
    xq, yq = torch.randn(2, 3, 3), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(RuntimeError, match="yq holds class index 7"):
        op(theta, lr, xs, ys, xq, torch.tensor([[0, 1, 7], [0, 0, 0]]), [3, 5, 4], 1, 1, 1, False, True)
    with pytest.raises(RuntimeError, match="xq must be \\[T, Nq, D\\]"):
        op(theta, lr, xs, ys, torch.randn(3, 3, 3), torch.zeros(3, 3, dtype=torch.long), [3, 5, 4], 1, 1, 1, False,
           True)
    with pytest.raises(RuntimeError, match="lr must have shape \\[44\\], got \\[43\\]"):
        op(theta, lr[:-1], xs, ys, xq, yq, [3, 5, 4], 1, 1, 1, False, True)
    losses, g_theta, g_lr = op(theta, lr, xs, ys, xq, yq, [3, 5, 4], 1, 1, 1, False, False)
    assert losses.shape == (2,) and g_theta.shape == (0, theta.numel()) and g_lr.shape == (0, theta.numel())
    empty = op(theta, lr, xs[:0], ys[:0], xq[:0], yq[:0], [3, 5, 4], 1, 1, 1, False, True)
    assert [tuple(t.shape) for t in empty] == [(0,), (0, theta.numel()), (0, theta.numel())]


# ------------------------------------------------------------------ the C++ autograd node

def _python_node(params, per_task, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, reduction):
    """The same objective through the Python autograd.Function on the cpp kernel."""
    from metakern import _ops
    spec = (tuple(dims), tuple(per_task), steps, loss, act, first_order, "cpp", reduction, None)
    return _ops._MamlFn.apply(spec, lr, xs, ys, xq, yq, *params)


@needs_cpp
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("per_task,lr_kind", [(False, "scalar"), (True, "per_param"), ([True, False], "scalar"),
                                            (False, "float")])
def test_cpp_node_matches_python_node(request, reduction, per_task, lr_kind):
    """metakern._C.maml_loss (the node cpp uses) gives the bits of the Python _MamlFn
    on the same kernel: values, parameter and lr gradients, for each reduction."""
    g = seeded(request)
    dims, T = (3, 11, 4), 5
    params, xs, ys, lr = make_problem(g, dims, T, 7, "cross_entropy", torch.float32, per_task, lr_kind)
    _, xq, yq, _ = make_problem(g, dims, T, 6, "cross_entropy", torch.float32)
    pt = [p.dim() == (3 if i % 2 == 0 else 2) for i, p in enumerate(params)]
    out_w = torch.randn(T, generator=g) if reduction == "none" else torch.randn((), generator=g)
    results = []
    for fn in (B.get("cpp").maml_loss, _python_node):
        ps = [p.clone().requires_grad_() for p in params]
        lr_leaf, lr_leaves_ = lr_leaves(lr, lr_kind, torch.float32, "cpu")
        lr_p = pack_lr(lr_leaf, dims, xs)
        out = fn(ps, pt, lr_p, xs, ys, xq, yq, dims, 2, 1, 2, False, REDUCTIONS[reduction])
        results.append([out.detach()] + list(torch.autograd.grad(out, ps + lr_leaves_, out_w)))
    assert results[0][0].shape == ((T,) if reduction == "none" else ())
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"output {i} differs between the C++ and the Python node"


@needs_cpp
def test_cpp_node_without_grad_and_for_lr_only():
    g = torch.Generator().manual_seed(3)
    params, xs, ys, _ = make_problem(g, (1, 9, 1), 4, 5, "mse", torch.float64)
    _, xq, yq, _ = make_problem(g, (1, 9, 1), 4, 5, "mse", torch.float64)
    ref = MF.meta_loss([p.requires_grad_() for p in params], xs, ys, xq, yq, lr=0.1, backend="torch")
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    frozen = [p.detach() for p in params]
    out = MF.meta_loss(frozen, xs, ys, xq, yq, lr=lr, backend="cpp")  # only lr needs a gradient
    assert out.grad_fn is not None
    assert_close(out, ref, 1e-12, "loss")
    (g_lr,) = torch.autograd.grad(out, lr)
    r_lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    (r_g,) = torch.autograd.grad(MF.meta_loss(frozen, xs, ys, xq, yq, lr=r_lr, backend="torch"), r_lr)
    assert_close(g_lr, r_g, 1e-9, "lr gradient")
    with torch.no_grad():
        quiet = MF.meta_loss(params, xs, ys, xq, yq, lr=lr, backend="cpp")
    assert quiet.grad_fn is None and torch.equal(quiet, out.detach())


@needs_cpp
def test_cpp_node_checks_its_arguments():
    from metakern import _C
    g = torch.Generator().manual_seed(6)
    params, xs, ys, _ = make_problem(g, (2, 5, 1), 3, 4, "mse", torch.float32)
    lr = torch.full((sum(p.numel() for p in params),), 0.1)
    args = (lr, xs, ys, xs, ys, [2, 5, 1], [False] * 4, 1, 0, 1, False)
    with pytest.raises(ValueError, match="reduction must be 0 \\(mean\\), 1 \\(sum\\) or 2 \\(none\\), got 3"):
        _C.maml_loss(params, *args, 3)
    with pytest.raises(ValueError, match="per_task has 3 entries for 4 params"):
        _C.maml_loss(params, *args[:6], [False] * 3, *args[7:], 0)
    with pytest.raises(ValueError, match="2 params do not match dims of 3 widths"):
        _C.maml_loss(params[:2], *args[:6], [False] * 2, *args[7:], 0)
    with pytest.raises(RuntimeError, match="metakern::maml_fwd"):  # the op's own checks: a bad query batch
        _C.maml_loss(params, lr, xs, ys, torch.randn(2, 4, 2), ys, [2, 5, 1], [False] * 4, 1, 0, 1, False, 0)
