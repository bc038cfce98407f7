"""The MAML objective (``functional.meta_loss``, ``MAML.meta_loss``) against ground truth.

Ground truth: autograd through the unrolled inner loop on the support set, then the
query loss per task (float64). Every backend runs; ``torch``, ``cpp`` and ``cuda`` take
their ``maml_fwd`` (one pass; for cuda its ops composed in C++), ``triton`` the
composed path. The incoming
gradient of the per-task losses is random, so the weighting of each task's gradient
in the backward is checked too.
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

import metakern as mk
import metakern.backends as B
import metakern.functional as MF
import reference as R
from helpers import (ACTS, DIMS, LOSSES, LR_KINDS, SLOW, RTOL, assert_close, backends_under_test, devices_for, leaf,
                     lr_leaves, make_problem, poison_uninitialised_memory, primary_dtype, seeded)  # noqa: F401 (autouse fixture)


def _cases(backend):
    out = []
    for i, (dims, act, loss, fo) in enumerate(itertools.product(DIMS, ACTS, LOSSES, [False, True])):
        if backend in SLOW and i % 4:
            continue
        steps, lr_kind, per_task = i % 4, LR_KINDS[i % 3], (i // 2) % 2 == 1
        out.append(pytest.param(backend, dims, act, loss, fo, steps, lr_kind, per_task,
                                id=f"{backend}-{'x'.join(map(str, dims))}-{act}-{loss}-{'fo' if fo else 'so'}"
                                   f"-K{steps}-{lr_kind}-{'pt' if per_task else 'sh'}"))
    return out


def reference_losses(params, xs, ys, xq, yq, lr, steps, loss, act, first_order):
    """Per-task query losses ``[T]`` after the unrolled inner loop (autograd all the way)."""
    fast = R.adapt(params, xs, ys, lr, steps, loss, act, first_order)
    out = R.mlp(fast, xq, act)
    if loss == "mse":
        return ((out - yq) ** 2).mean(dim=(1, 2))
    T, N, O = out.shape
    return F.cross_entropy(out.reshape(T * N, O), yq.reshape(-1), reduction="none").view(T, N).mean(1)


def run_case(backend, dims, act, loss, first_order, steps, lr_kind, per_task, dtype, g, T=3, Ns=6, Nq=8,
             x_grad=False):
    device = devices_for(backend)[0]
    params, xs, ys, lr = make_problem(g, dims, T, Ns, loss, torch.float64, per_task, lr_kind)
    _, xq, yq, _ = make_problem(g, dims, T, Nq, loss, torch.float64)
    w = torch.randn(T, generator=g, dtype=torch.float64)  # dL/dl_t

    r_params = [leaf(p, torch.float64, "cpu") for p in params]
    r_lr, r_lr_leaves = lr_leaves(lr, lr_kind, torch.float64, "cpu")
    r_xs, r_xq = (leaf(xs, torch.float64, "cpu"), leaf(xq, torch.float64, "cpu")) if x_grad else (xs, xq)
    ref = reference_losses(r_params, r_xs, ys, r_xq, yq, r_lr, steps, loss, act, first_order)
    r_inputs = r_params + r_lr_leaves + ([r_xs, r_xq] if x_grad else [])
    r_grads = torch.autograd.grad(ref, r_inputs, w, allow_unused=True)

    k_params = [leaf(p, dtype, device) for p in params]
    k_lr, k_lr_leaves = lr_leaves(lr, lr_kind, dtype, device)
    k_xs, k_xq = xs.to(device, dtype), xq.to(device, dtype)
    if x_grad:
        k_xs, k_xq = k_xs.requires_grad_(), k_xq.requires_grad_()
    cast = (lambda y: y.to(device, dtype)) if loss == "mse" else (lambda y: y.to(device))
    out = MF.meta_loss(k_params, k_xs, cast(ys), k_xq, cast(yq), lr=k_lr, steps=steps, loss=loss, activation=act,
                       first_order=first_order, backend=backend, reduction="none")
    k_inputs = k_params + k_lr_leaves + ([k_xs, k_xq] if x_grad else [])
    k_grads = torch.autograd.grad(out, k_inputs, w.to(device, dtype), allow_unused=True)

    rtol = RTOL[dtype]
    assert out.shape == (T,)
    assert_close(out, ref, rtol, "per-task losses")
    for i, (kg, rg, inp) in enumerate(zip(k_grads, r_grads, r_inputs)):
        rg = torch.zeros_like(inp) if rg is None else rg
        kg = torch.zeros(inp.shape, dtype=dtype) if kg is None else kg
        assert_close(kg, rg, rtol, f"gradient {i} of {len(r_inputs)}")


@pytest.mark.parametrize("backend,dims,act,loss,first_order,steps,lr_kind,per_task",
                         [c for b in backends_under_test() for c in _cases(b)])
def test_meta_loss_grid(request, backend, dims, act, loss, first_order, steps, lr_kind, per_task):
    run_case(backend, dims, act, loss, first_order, steps, lr_kind, per_task, primary_dtype(backend),
             seeded(request))


@pytest.mark.parametrize("backend", backends_under_test())
@pytest.mark.parametrize("loss,first_order", [("mse", False), ("cross_entropy", True)])
def test_meta_loss_float32(request, backend, loss, first_order):
    run_case(backend, (3, 17, 5), "tanh", loss, first_order, 2, "per_param", False, torch.float32, seeded(request))


@pytest.mark.parametrize("backend", backends_under_test())
def test_meta_loss_input_gradients(request, backend):
    """xs and xq requiring grad (as ANIL's features do) take the composed path, exactly."""
    run_case(backend, (3, 17, 5), "sigmoid", "cross_entropy", False, 2, "scalar", True, primary_dtype(backend),
             seeded(request), x_grad=True)


@pytest.mark.parametrize("backend", backends_under_test())
@pytest.mark.parametrize("T,Ns,Nq", [(1, 1, 1), (5, 13, 2)])
def test_meta_loss_odd_sizes(request, backend, T, Ns, Nq):
    if backend in SLOW and T > 1:
        T, Ns, Nq = 2, 9, 3
    run_case(backend, (2, 7, 3), "relu", "cross_entropy", False, 3, "per_param", [True, False],
             primary_dtype(backend), seeded(request), T=T, Ns=Ns, Nq=Nq)


@pytest.mark.parametrize("backend", [b for b in backends_under_test() if b in ("torch", "cpp")])
def test_meta_loss_many_points(request, backend):
    """2000 support points, K = 3, float64: the cpp kernel's per-thread budget for
    keeping every step's activations (4 MiB) is exceeded, so it recomputes them in the
    reverse loop instead (the grid above, with small tasks, keeps them)."""
    run_case(backend, (3, 17, 13), "tanh", "mse", False, 3, "scalar", False, torch.float64, seeded(request), T=2,
             Ns=2000, Nq=5)


@pytest.mark.parametrize("backend", backends_under_test())
def test_meta_loss_matches_two_op_path(request, backend):
    """meta_loss == loss(forward(adapt(...))) with the same backend, values and gradients, and the reductions."""
    g = seeded(request)
    device, dtype = devices_for(backend)[0], primary_dtype(backend)
    params, xs, ys, _ = make_problem(g, (1, 40, 40, 1), 4, 10, "mse", dtype)
    _, xq, yq, _ = make_problem(g, (1, 40, 40, 1), 4, 10, "mse", dtype)
    xs, ys, xq, yq = (t.to(device) for t in (xs, ys, xq, yq))
    a = [p.to(device).requires_grad_() for p in params]
    b = [p.to(device).requires_grad_() for p in params]
    fused = MF.meta_loss(a, xs, ys, xq, yq, lr=0.01, backend=backend)
    two = F.mse_loss(MF.forward(MF.adapt(b, xs, ys, lr=0.01, backend=backend), xq, backend=backend), yq)
    assert_close(fused, two, RTOL[dtype], "loss")
    for i, (ga, gb) in enumerate(zip(torch.autograd.grad(fused, a), torch.autograd.grad(two, b))):
        assert_close(ga, gb, RTOL[dtype], f"grad {i}")
    per_task = MF.meta_loss(a, xs, ys, xq, yq, lr=0.01, backend=backend, reduction="none")
    total = MF.meta_loss(a, xs, ys, xq, yq, lr=0.01, backend=backend, reduction="sum")
    assert_close(total, per_task.sum(), RTOL[dtype], "sum")
    assert_close(fused, per_task.mean(), RTOL[dtype], "mean")


@pytest.mark.parametrize("backend", backends_under_test())
def test_meta_loss_without_grad(request, backend):
    """Evaluation: no input needs a gradient, nothing is kept, the value is exact."""
    g = seeded(request)
    device, dtype = devices_for(backend)[0], primary_dtype(backend)
    params, xs, ys, _ = make_problem(g, (3, 17, 5), 3, 6, "cross_entropy", torch.float64)
    _, xq, yq, _ = make_problem(g, (3, 17, 5), 3, 4, "cross_entropy", torch.float64)
    ref = reference_losses([p.requires_grad_() for p in params], xs, ys, xq, yq, 0.2, 2, "cross_entropy", "relu",
                           False).detach()
    k = [p.detach().to(device, dtype) for p in params]
    with torch.no_grad():
        out = MF.meta_loss(k, xs.to(device, dtype), ys.to(device), xq.to(device, dtype), yq.to(device), lr=0.2,
                           steps=2, loss="cross_entropy", backend=backend, reduction="none")
    assert not out.requires_grad
    assert_close(out, ref, RTOL[dtype], "losses")


@pytest.mark.parametrize("backend", [b for b in backends_under_test() if b not in SLOW])
def test_meta_loss_gradcheck(request, backend):
    g = seeded(request)
    device = devices_for(backend)[0]
    params, xs, ys, lr = make_problem(g, (2, 3, 2), 2, 3, "cross_entropy", torch.float64, False, "scalar")
    _, xq, yq, _ = make_problem(g, (2, 3, 2), 2, 4, "cross_entropy", torch.float64)
    inputs = [p.to(device).requires_grad_() for p in params] + [lr.to(device).requires_grad_()]

    def f(*a):
        return MF.meta_loss(list(a[:4]), xs.to(device), ys.to(device), xq.to(device), yq.to(device), lr=a[4],
                            steps=2, loss="cross_entropy", activation="tanh", backend=backend, reduction="none")

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", backends_under_test())
def test_meta_loss_deterministic(request, backend):
    g = seeded(request)
    device = devices_for(backend)[0]
    params, xs, ys, _ = make_problem(g, (3, 17, 5), 6, 9, "cross_entropy", torch.float32)
    _, xq, yq, _ = make_problem(g, (3, 17, 5), 6, 5, "cross_entropy", torch.float32)

    def once():
        ps = [p.to(device).requires_grad_() for p in params]
        out = MF.meta_loss(ps, xs.to(device), ys.to(device), xq.to(device), yq.to(device), lr=0.1, steps=2,
                           loss="cross_entropy", backend=backend)
        return [out.detach().cpu()] + [t.cpu() for t in torch.autograd.grad(out, ps)]

    for u, v in zip(once(), once()):
        assert torch.equal(u, v)


# ------------------------------------------------------------------ learners


@pytest.mark.parametrize("learner", ["maml", "metasgd", "fomaml", "generic"])
def test_learner_meta_loss_equals_adapt_then_loss(request, learner):
    """MAML.meta_loss is loss(adapt(xs, ys)(xq), yq): same value, same meta-gradient (lr included)."""
    g = seeded(request)
    torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=g)))
    if learner == "generic":
        model = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.LayerNorm(16), torch.nn.Tanh(),
                                    torch.nn.Linear(16, 1)).double()
    else:
        model = mk.MLP(1, [16, 16], 1, activation="tanh").double()
    cls = mk.MetaSGD if learner == "metasgd" else mk.MAML
    kw = {} if learner == "metasgd" else dict(learn_lr=True, first_order=learner == "fomaml")
    a = cls(model, lr=0.05, steps=2, **kw)
    b = cls(model, lr=0.05, steps=2, **kw)
    b.load_state_dict(a.state_dict())
    xs, ys, xq, yq = (t.double() for t in mk.tasks.Sinusoid(shots=5, queries=7).sample(4, g))
    la = a.meta_loss(xs, ys, xq, yq)
    lb = F.mse_loss(b.adapt(xs, ys)(xq), yq)
    assert_close(la, lb, 1e-9, "loss")
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        ga, gb = torch.autograd.grad(la, pa, retain_graph=True), torch.autograd.grad(lb, pb, retain_graph=True)
        assert_close(ga[0], gb[0], 1e-9, n)
    assert a.meta_loss(xs, ys, xq, yq, reduction="none").shape == (4,)


def test_anil_meta_loss_reaches_the_body():
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    anil = mk.ANIL(mk.MLP(1, [8], 8, activation="tanh").double(), torch.nn.Linear(8, 1).double(), lr=0.1, steps=2)
    xs, ys, xq, yq = (t.double() for t in mk.tasks.Sinusoid(shots=5, queries=5).sample(3, g))
    la = anil.meta_loss(xs, ys, xq, yq)
    lb = F.mse_loss(anil.adapt(xs, ys)(xq), yq)
    assert_close(la, lb, 1e-9, "loss")
    body = list(anil.body.parameters())
    for ga, gb in zip(torch.autograd.grad(la, body, retain_graph=True), torch.autograd.grad(lb, body)):
        assert ga.abs().max() > 0
        assert_close(ga, gb, 1e-9, "body grad")


# ------------------------------------------------------------------ bad input


def _ok(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    params, xs, ys, _ = make_problem(g, (3, 5, 2), 2, 4, "mse", dtype)
    _, xq, yq, _ = make_problem(g, (3, 5, 2), 2, 6, "mse", dtype)
    return params, xs, ys, xq, yq


@pytest.mark.parametrize("change,exc,match", [
    (dict(xq=torch.zeros(3, 6, 3)), ValueError, "xq must be \\[T, Nq, D\\]"),
    (dict(xq=torch.zeros(2, 6, 4)), ValueError, "xq must be \\[T, Nq, D\\]"),
    (dict(xq=torch.zeros(2, 6, 3, dtype=torch.float64)), TypeError, "xq has dtype"),
    (dict(xq=[1.0]), TypeError, "xq must be a tensor"),
    (dict(yq=torch.zeros(2, 5, 2)), ValueError, "yq for loss='mse' must have shape"),
    (dict(yq=torch.zeros(2, 6, 2, dtype=torch.float64)), TypeError, "yq for loss='mse' must have xq's dtype"),
    (dict(ys=torch.zeros(2, 4, 3)), ValueError, "ys for loss='mse' must have shape"),
    (dict(reduction="avg"), ValueError, "reduction must be"),
])
def test_meta_loss_bad_input(change, exc, match):
    params, xs, ys, xq, yq = _ok()
    kw = dict(xs=xs, ys=ys, xq=xq, yq=yq, reduction="mean")
    kw.update(change)
    with pytest.raises(exc, match=match):
        MF.meta_loss(params, kw["xs"], kw["ys"], kw["xq"], kw["yq"], lr=0.1, reduction=kw["reduction"])


def test_meta_loss_class_index_out_of_range():
    g = torch.Generator().manual_seed(0)
    params, xs, ys, _ = make_problem(g, (3, 5, 4), 2, 4, "cross_entropy", torch.float32)
    xq, yq = torch.randn(2, 3, 3), torch.tensor([[0, 1, 4], [0, 0, 0]])
    with pytest.raises(ValueError, match="yq holds class indices in \\[0, 4\\]"):
        MF.meta_loss(params, xs, ys, xq, yq, lr=0.1, loss="cross_entropy")


@pytest.mark.skipif(bool(B.available()["cpp"]), reason="the cpp backend is not built (test_build checks it is in CI)")
@pytest.mark.parametrize("first_order", [False, True])
def test_raw_maml_op_without_lr_gradient(first_order):
    """need_lr=False drops g_lr (shape [0, P]) and leaves the losses and g_theta bit for bit."""
    g = torch.Generator().manual_seed(8)
    from metakern import _ops
    params, xs, ys, _ = make_problem(g, (3, 6, 4), 3, 5, "cross_entropy", torch.float64, [True, False])
    _, xq, yq, _ = make_problem(g, (3, 6, 4), 3, 4, "cross_entropy", torch.float64)
    theta = _ops.pack_params(params, [True, True, False, False], 3).contiguous()  # layer 1 per task, layer 2 shared
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


@pytest.mark.skipif(bool(B.available()["cpp"]), reason="the cpp backend is not built (test_build checks it is in CI)")
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
    from metakern import _ops
    theta = _ops.pack_params(params, [not shared] * len(params), T).contiguous()
    lr = torch.cat([l.reshape(-1) for l in lr]).to(dtype)
    codes = (list(dims), steps, LOSSES.index(loss), MF.ACTIVATIONS[act], first_order, need_grad, need_lr)
    got = _C.maml_fwd_composed(theta, lr, xs, ys, xq, yq, *codes)
    fused = torch.ops.metakern.maml_fwd(theta, lr, xs, ys, xq, yq, *codes)
    ref = TB.maml_fwd(theta, lr, xs, ys, xq, yq, *codes)
    P = theta.shape[-1]
    want = [(T,), (T, P) if need_grad else (0, P), (T, P) if need_grad and need_lr else (0, P)]
    for name, a, f, r, shape in zip(("losses", "g_theta", "g_lr"), got, fused, ref, want):
        assert tuple(a.shape) == shape and a.dtype == dtype, (name, a.shape, a.dtype)
        if a.numel():
            assert_close(a, f, RTOL[dtype], f"{name} vs the fused kernel")
            assert_close(a, r, RTOL[dtype], f"{name} vs the torch backend")


@pytest.mark.skipif(bool(B.available()["cpp"]), reason="the cpp backend is not built (test_build checks it is in CI)")
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


def test_fixed_lr_change_is_seen():
    """The packed copy of a fixed inner rate follows in-place changes of the buffer."""
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    maml = mk.MAML(mk.MLP(1, [8], 1).double(), lr=0.01)
    xs, ys, xq, yq = (t.double() for t in mk.tasks.Sinusoid(shots=5, queries=5).sample(3, g))
    first = maml.meta_loss(xs, ys, xq, yq)
    with torch.no_grad():
        maml.lr.fill_(0.3)
    changed = maml.meta_loss(xs, ys, xq, yq)
    ref = F.mse_loss(R.mlp(R.adapt(list(maml.module.parameters()), xs, ys, 0.3, 1), xq, "relu"), yq)
    assert_close(changed, ref, 1e-9, "loss after the rate changed")
    assert not torch.equal(first, changed)
    maml.lr.data.fill_(0.2)  # .data does not move the version counter
    ref = F.mse_loss(R.mlp(R.adapt(list(maml.module.parameters()), xs, ys, 0.2, 1), xq, "relu"), yq)
    assert_close(maml.meta_loss(xs, ys, xq, yq), ref, 1e-9, "loss after a .data change")


# ------------------------------------------------------------------ the C++ autograd node

needs_cpp = pytest.mark.skipif(bool(B.available()["cpp"]), reason="the cpp backend is not built (test_build checks "
                                                                  "it is in CI)")


def _python_node(params, per_task, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, reduction):
    """The same objective through the Python autograd.Function on the cpp kernel."""
    from metakern import _ops
    spec = (tuple(dims), tuple(per_task), steps, loss, act, first_order, "cpp", reduction)
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
        lr_p = MF._pack_lr(lr_leaf, MF._shared_shapes(ps, pt), xs)
        out = fn(ps, pt, lr_p, xs, ys, xq, yq, dims, 2, 1, 2, False, reduction)
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
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_fused_node_refuses_double_backward(backend):
    """As @once_differentiable: a gradient of the gradient raises instead of being silently zero."""
    g = torch.Generator().manual_seed(4)
    params, xs, ys, _ = make_problem(g, (2, 5, 1), 3, 4, "mse", torch.float64)
    _, xq, yq, _ = make_problem(g, (2, 5, 1), 3, 4, "mse", torch.float64)
    ps = [p.requires_grad_() for p in params]
    first = torch.autograd.grad(MF.meta_loss(ps, xs, ys, xq, yq, lr=0.1, backend=backend), ps)
    v = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)  # an incoming gradient that needs one itself
    grads = torch.autograd.grad(MF.meta_loss(ps, xs, ys, xq, yq, lr=0.1, backend=backend), ps, v, create_graph=True)
    for a, b in zip(grads, first):  # the first derivative itself is still right
        assert torch.equal(a.detach(), b)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        sum((gr ** 2).sum() for gr in grads).backward()
    plain = torch.autograd.grad(MF.meta_loss(ps, xs, ys, xq, yq, lr=0.1, backend=backend), ps, create_graph=True)
    assert not any(gr.requires_grad for gr in plain)  # nothing to differentiate: autograd itself refuses


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
