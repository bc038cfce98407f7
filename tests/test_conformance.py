"""Every backend against ground truth: autograd through the unrolled inner loop, float64.

The grid covers depth 1-4 with odd widths, every activation and loss, both
orders, K = 0..3, every kind of learning rate, shared and per-task parameters,
gradients to parameters, learning rates and inputs, in float64 and float32.
Adding a backend to ``metakern.backends`` adds it here.
"""
import itertools

import pytest
import torch

import metakern.functional as MF
import reference as R
from helpers import (ACTS, DIMS, LOSSES, LR_KINDS, SLOW, RTOL, assert_close, backends_under_test, devices_for, leaf,
                     lr_leaves, make_problem, poison_uninitialised_memory, primary_dtype, seeded)  # noqa: F401 (autouse fixture)


def _cases(backend):
    grid = list(itertools.product(DIMS, ACTS, LOSSES, [False, True]))
    out = []
    for i, (dims, act, loss, fo) in enumerate(grid):
        steps = i % 4
        lr_kind = LR_KINDS[i % 3]
        per_task = (i // 2) % 2 == 1
        out.append(pytest.param(backend, dims, act, loss, fo, steps, lr_kind, per_task,
                                id=f"{backend}-{'x'.join(map(str, dims))}-{act}-{loss}-{'fo' if fo else 'so'}-K{steps}-{lr_kind}-{'pt' if per_task else 'sh'}"))
    return out


ALL_CASES = [c for b in backends_under_test() for c in _cases(b)]


def run_case(backend, dims, act, loss, first_order, steps, lr_kind, per_task, dtype, g, T=3, N=7, device=None):
    device = device or devices_for(backend)[0]
    params, x, y, lr = make_problem(g, dims, T, N, loss, torch.float64, per_task, lr_kind)
    # ground truth, float64 on the CPU
    r_params = [leaf(p, torch.float64, "cpu") for p in params]
    r_x = leaf(x, torch.float64, "cpu")
    r_lr, r_lr_leaves = lr_leaves(lr, lr_kind, torch.float64, "cpu")
    ref = R.adapt(r_params, r_x, y, r_lr, steps, loss, act, first_order)
    vs = [torch.randn(r.shape, generator=g, dtype=torch.float64) for r in ref]
    r_inputs = r_params + r_lr_leaves + [r_x]
    r_grads = torch.autograd.grad(ref, r_inputs, vs, allow_unused=True)

    # the backend under test
    k_params = [leaf(p, dtype, device) for p in params]
    k_x = leaf(x, dtype, device)
    k_lr, k_lr_leaves = lr_leaves(lr, lr_kind, dtype, device)
    k_y = y.to(device=device, dtype=dtype if loss == "mse" else torch.int64)
    out = MF.adapt(k_params, k_x, k_y, lr=k_lr, steps=steps, loss=loss, activation=act, first_order=first_order,
                   backend=backend)
    k_inputs = k_params + k_lr_leaves + [k_x]
    k_grads = torch.autograd.grad(out, k_inputs, [v.to(dtype=dtype, device=device) for v in vs], allow_unused=True)

    rtol = RTOL[dtype]
    for i, (o, r) in enumerate(zip(out, ref)):
        assert o.shape == r.shape
        assert_close(o, r, rtol, f"adapted params[{i}]")
    names = [f"d params[{i}]" for i in range(len(r_params))] + [f"d lr[{i}]" for i in range(len(r_lr_leaves))] + ["d x"]
    for name, kg, rg, inp in zip(names, k_grads, r_grads, r_inputs):
        rg = torch.zeros_like(inp) if rg is None else rg
        kg = torch.zeros(inp.shape, dtype=dtype) if kg is None else kg
        assert_close(kg, rg, rtol, name)


@pytest.mark.parametrize("backend,dims,act,loss,first_order,steps,lr_kind,per_task", ALL_CASES)
def test_adapt_grid(request, backend, dims, act, loss, first_order, steps, lr_kind, per_task):
    """float64 for the backends that support it, float32 (against the float64 truth) otherwise."""
    run_case(backend, dims, act, loss, first_order, steps, lr_kind, per_task, primary_dtype(backend), seeded(request))


def _f32_cases():
    out = []
    for b in backends_under_test():
        for i, (dims, loss, fo) in enumerate(itertools.product(DIMS, LOSSES, [False, True])):
            if b in SLOW and i % 3:
                continue
            act = ACTS[i % 4]
            out.append(pytest.param(b, dims, act, loss, fo, 1 + i % 3, LR_KINDS[i % 3], i % 2 == 0,
                                    id=f"{b}-{'x'.join(map(str, dims))}-{act}-{loss}-{'fo' if fo else 'so'}"))
    return out


@pytest.mark.parametrize("backend,dims,act,loss,first_order,steps,lr_kind,per_task", _f32_cases())
def test_adapt_float32(request, backend, dims, act, loss, first_order, steps, lr_kind, per_task):
    run_case(backend, dims, act, loss, first_order, steps, lr_kind, per_task, torch.float32, seeded(request))


@pytest.mark.parametrize("backend", backends_under_test())
@pytest.mark.parametrize("T,N", [(1, 1), (5, 13)])
def test_adapt_odd_sizes(request, backend, T, N):
    """One task, one point; and more tasks and points than the usual small grid."""
    if backend in SLOW and T > 1:
        T, N = 2, 9
    run_case(backend, (3, 17, 2), "tanh", "cross_entropy", False, 2, "per_param", [True, False],
             primary_dtype(backend), seeded(request), T=T, N=N)


@pytest.mark.parametrize("backend", [b for b in backends_under_test() if b in ("torch", "cpp")])
def test_adapt_many_points(request, backend):
    """2000 points, K = 3, float64, input gradients: past the cpp kernels' 4 MiB
    per-thread budget for keeping each step's activations, so its second-order
    reverse loop recomputes them (the small problems above keep them)."""
    run_case(backend, (3, 17, 13), "tanh", "mse", False, 3, "scalar", False, torch.float64, seeded(request), T=2,
             N=2000)


@pytest.mark.parametrize("backend", backends_under_test())
@pytest.mark.parametrize("dims,act", [((4, 6, 3), "relu"), ((2, 5, 5, 2), "tanh"), ((5, 3), "identity")])
def test_forward(request, backend, dims, act):
    """MF.forward and its gradients against autograd, shared and per-task parameters."""
    g = seeded(request)
    device = devices_for(backend)[0]
    dtype = primary_dtype(backend)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5  # one forward/backward: a few ulps
    for per_task in (False, True):
        params, x, _, _ = make_problem(g, dims, 3, 7, "mse", torch.float64, per_task)
        r_params = [leaf(p, torch.float64, "cpu") for p in params]
        r_x = leaf(x, torch.float64, "cpu")
        ref = R.mlp(r_params, r_x, act)
        v = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        r_grads = torch.autograd.grad(ref, r_params + [r_x], v)
        k_params = [leaf(p, dtype, device) for p in params]
        k_x = leaf(x, dtype, device)
        out = MF.forward(k_params, k_x, activation=act, backend=backend)
        assert_close(out, ref, rtol, "forward")
        k_grads = torch.autograd.grad(out, k_params + [k_x], v.to(device=device, dtype=dtype))
        for i, (a, b) in enumerate(zip(k_grads, r_grads)):
            assert_close(a, b, rtol, f"forward grad {i}")


@pytest.mark.parametrize("backend", backends_under_test())
def test_no_grad_adaptation(request, backend):
    """Plain adaptation at test time: nothing requires grad, the result has no graph."""
    g = seeded(request)
    device = devices_for(backend)[0]
    dtype = primary_dtype(backend)
    params, x, y, _ = make_problem(g, (1, 40, 40, 1), 4, 10, "mse")
    k_params = [p.to(device=device, dtype=dtype) for p in params]
    with torch.no_grad():
        out = MF.adapt(k_params, x.to(device, dtype), y.to(device, dtype), lr=0.1, steps=3, backend=backend)
    ref = R.adapt([p.detach().requires_grad_() for p in params], x, y, 0.1, 3)
    for o, r in zip(out, ref):
        assert not o.requires_grad
        assert_close(o, r, RTOL[dtype])


@pytest.mark.parametrize("backend", [b for b in backends_under_test() if b not in SLOW])
def test_gradcheck(request, backend):
    """torch.autograd.gradcheck on a small float64 problem through the public op."""
    g = seeded(request)
    device = devices_for(backend)[0]
    params, x, y, lr = make_problem(g, (2, 3, 2), 2, 3, "cross_entropy", torch.float64, False, "scalar")
    inputs = [p.to(device).requires_grad_() for p in params] + [lr.to(device).requires_grad_(), x.to(device).requires_grad_()]

    def f(*a):
        return tuple(MF.adapt(list(a[:4]), a[5], y.to(device), lr=a[4], steps=2, loss="cross_entropy",
                              activation="tanh", backend=backend))

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", backends_under_test())
def test_deterministic(request, backend):
    """Same inputs, same bits (shared-parameter gradients are reduced without atomics)."""
    g = seeded(request)
    device = devices_for(backend)[0]
    params, x, y, _ = make_problem(g, (3, 17, 5), 6, 9, "cross_entropy", torch.float32)

    def once():
        ps = [p.to(device).requires_grad_() for p in params]
        out = MF.adapt(ps, x.to(device), y.to(device), lr=0.1, steps=2, loss="cross_entropy", backend=backend)
        loss = sum((o ** 2).sum() for o in out)
        return [t.detach().cpu() for t in list(out) + list(torch.autograd.grad(loss, ps))]

    a, b = once(), once()
    for u, w in zip(a, b):
        assert torch.equal(u, w)
