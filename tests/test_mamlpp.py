"""MAML++ in the fused op: per-step inner rates (every ``lr`` form), the multi-step
loss (``step_weights``), the schedule of :class:`metakern.MAMLPlusPlus`, and bad input.

Ground truth: autograd through the unrolled inner loop, one task at a time, in float64,
with the rates of every step written out per parameter (:func:`_rates_per_step`), and
the query loss after every step weighted. Every backend that runs here is checked
(``torch`` and ``cpp`` fuse the multi-step loss into one walk; the others compose one
single-step adaptation per step); the composed path of every backend is forced too
(``xs`` needing a gradient). The raw ops are tested in tests/test_per_step_cpp.py.
"""
import itertools

import pytest
import torch

import metakern as mk
import metakern.functional as MF
import reference as R
from helpers import (RTOL, SLOW, assert_close, backends_under_test, devices_for, poison_uninitialised_memory,  # noqa: F401
                     primary_dtype, seeded)
from metakern.learners import msl_weights

FORMS = ["steps", "lslr", "step_elem", "mixed", "plain"]


def _params(g, dims, dtype):
    out = []
    for i, o in zip(dims[:-1], dims[1:]):
        out.append(torch.randn(o, i, generator=g, dtype=dtype) * (2.0 / (i + o)) ** 0.5)
        out.append(torch.randn(o, generator=g, dtype=dtype) * 0.1)
    return out


def _rate(g, shape, dtype):
    return 0.05 + 0.25 * torch.rand(shape, generator=g, dtype=dtype)


def _lr_form(form, g, params, K, dtype):
    """An ``lr`` argument of the given form (every tensor a leaf that needs a gradient)."""
    if form == "steps":
        lr = _rate(g, (K,), dtype)
    elif form == "lslr":
        lr = [_rate(g, (K,), dtype) for _ in params]
    elif form == "step_elem":
        lr = [_rate(g, (K, *p.shape), dtype) for p in params]
    elif form == "mixed":  # 0-dim, parameter-shaped, [K], [K, *shape], ... in turn
        makers = [lambda p: _rate(g, (), dtype), lambda p: _rate(g, p.shape, dtype),
                  lambda p: _rate(g, (K,), dtype), lambda p: _rate(g, (K, *p.shape), dtype)]
        lr = [makers[i % 4](p) for i, p in enumerate(params)]
    else:  # "plain": the forms without a step axis still work with step weights
        lr = [_rate(g, p.shape, dtype) for p in params]
    leaves = lr if isinstance(lr, list) else [lr]
    for t in leaves:
        t.requires_grad_()
    return lr, leaves


def _rates_per_step(form, lr, params, K):
    """``rates[k][i]``: the rate of parameter i at step k, broadcastable to it."""
    out = []
    for k in range(K):
        row = []
        for i, p in enumerate(params):
            r = lr if form == "steps" else lr[i]
            if form == "steps" or (r.dim() == 1 and tuple(r.shape) != tuple(p.shape)):
                row.append(r[k])
            elif r.dim() == p.dim() + 1:
                row.append(r[k])
            else:
                row.append(r)
        out.append(row)
    return out


def _reference(params, rates, xs, ys, xq, yq, K, loss, act, first_order, w):
    """Per-task losses ``[T]``: one task at a time, autograd through the unrolled loop."""
    out = []
    for t in range(xs.shape[0]):
        cur, total = list(params), 0
        for k in range(K):
            inner = R.task_losses([c.unsqueeze(0) for c in cur], xs[t:t + 1], ys[t:t + 1], loss, act)
            gs = torch.autograd.grad(inner, cur, create_graph=not first_order)
            if first_order:
                gs = [g.detach() for g in gs]
            cur = [c - r * gr for c, r, gr in zip(cur, rates[k], gs)]
            if w is not None or k == K - 1:
                q = R.task_losses([c.unsqueeze(0) for c in cur], xq[t:t + 1], yq[t:t + 1], loss, act)
                total = total + (w[k] * q if w is not None else q)
        out.append(total)
    return torch.stack(out)


def _data(g, dims, T, N, Nq, loss, dtype):
    xs = torch.randn(T, N, dims[0], generator=g, dtype=dtype)
    xq = torch.randn(T, Nq, dims[0], generator=g, dtype=dtype)
    if loss == "mse":
        ys = torch.randn(T, N, dims[-1], generator=g, dtype=dtype)
        yq = torch.randn(T, Nq, dims[-1], generator=g, dtype=dtype)
    else:
        ys = torch.randint(0, dims[-1], (T, N), generator=g)
        yq = torch.randint(0, dims[-1], (T, Nq), generator=g)
    return xs, ys, xq, yq


def _weights(kind, g, K, dtype):
    if kind == "none":
        return None
    w = 0.1 + torch.rand(K, generator=g, dtype=dtype)
    if kind == "zeros" and K > 1:
        w[0] = 0.0
    return w


def _cases(backend):
    out = []
    grid = itertools.product(FORMS, ["none", "random", "zeros"], [False, True], ["mse", "cross_entropy"])
    for i, (form, wk, fo, loss) in enumerate(grid):
        if backend in SLOW and i % 6:
            continue
        K = 1 + i % 3
        act = ["tanh", "relu", "sigmoid"][i % 3]
        dims = [(3, 7, 5, 2), (4, 6, 3), (2, 5, 1)][(i // 3) % 3]
        if loss == "cross_entropy" and dims[-1] == 1:
            dims = (2, 5, 3)
        out.append(pytest.param(backend, form, wk, fo, loss, K, act, dims,
                                id=f"{backend}-{form}-w{wk}-{'fo' if fo else 'so'}-{loss}-K{K}-{act}"))
    return out


@pytest.mark.parametrize("backend,form,wk,fo,loss,K,act,dims",
                         [c for b in backends_under_test() for c in _cases(b)])
@pytest.mark.parametrize("composed", [False, True], ids=["fused", "composed"])
def test_meta_loss_per_step_rates_and_step_weights(request, backend, form, wk, fo, loss, K, act, dims, composed):
    """Value and exact meta-gradient (params and every rate tensor) against ground truth,
    with a random incoming gradient of the per-task losses (``reduction="none"``)."""
    g = seeded(request)
    dt = primary_dtype(backend)
    dev = devices_for(backend)[0]
    T, N, Nq = 3, 5, 4
    params = [p.requires_grad_() for p in _params(g, dims, torch.float64)]
    lr, lr_leaves = _lr_form(form, g, params, K, torch.float64)
    w = _weights(wk, g, K, torch.float64)
    xs, ys, xq, yq = _data(g, dims, T, N, Nq, loss, torch.float64)
    g_out = torch.randn(T, generator=g, dtype=torch.float64)
    ref = _reference(params, _rates_per_step(form, lr, params, K), xs, ys, xq, yq, K, loss, act, fo, w)
    ref_grads = torch.autograd.grad(ref, params + lr_leaves, g_out)

    def to(t):
        return t.detach().to(dev, dt if t.is_floating_point() else t.dtype)

    p_in = [to(p).requires_grad_() for p in params]
    lr_in = [to(t).requires_grad_() for t in lr_leaves]
    lr_arg = lr_in if isinstance(lr, list) else lr_in[0]
    xs_in = to(xs).requires_grad_(composed)
    got = MF.meta_loss(p_in, xs_in, to(ys), to(xq), to(yq), lr=lr_arg, steps=K, loss=loss, activation=act,
                       first_order=fo, backend=backend, reduction="none",
                       step_weights=None if w is None else to(w))
    grads = torch.autograd.grad(got, p_in + lr_in, to(g_out))
    rtol = RTOL[dt]
    assert_close(got, ref, rtol, "losses")
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert_close(a, b, rtol, f"gradient {i}")


def test_step_weights_list_and_reductions(request):
    """``step_weights`` as a list of floats equals the tensor; mean and sum reduce the
    weighted per-task losses; a last-step-only weight vector is plain MAML."""
    g = seeded(request)
    dims, K = (3, 6, 2), 3
    params = _params(g, dims, torch.float64)
    xs, ys, xq, yq = _data(g, dims, 4, 5, 6, "mse", torch.float64)
    kw = dict(lr=0.1, steps=K, activation="tanh", backend="torch")
    none = MF.meta_loss(params, xs, ys, xq, yq, reduction="none", step_weights=[0.2, 0.3, 0.5], **kw)
    assert_close(none, MF.meta_loss(params, xs, ys, xq, yq, reduction="none",
                                    step_weights=torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), **kw), 0)
    assert_close(MF.meta_loss(params, xs, ys, xq, yq, step_weights=[0.2, 0.3, 0.5], **kw), none.mean(), 1e-12)
    assert_close(MF.meta_loss(params, xs, ys, xq, yq, reduction="sum", step_weights=[0.2, 0.3, 0.5], **kw),
                 none.sum(), 1e-12)
    assert_close(MF.meta_loss(params, xs, ys, xq, yq, reduction="none", step_weights=[0.0, 0.0, 1.0], **kw),
                 MF.meta_loss(params, xs, ys, xq, yq, reduction="none", **kw), 1e-12)


@pytest.mark.parametrize("first_order", [False, True])
def test_second_derivatives_with_per_step_rates_and_weights(request, first_order):
    """``create_graph=True`` through the fused op with per-step rates and step weights:
    a Hessian-vector product in the parameters and the rates against ground truth."""
    g = seeded(request)
    dims, K = (3, 5, 2), 2
    params = [p.requires_grad_() for p in _params(g, dims, torch.float64)]
    lr, leaves = _lr_form("mixed", g, params, K, torch.float64)
    w = _weights("random", g, K, torch.float64)
    xs, ys, xq, yq = _data(g, dims, 3, 4, 5, "mse", torch.float64)
    inputs = params + leaves
    vec = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in inputs]

    def hvp(value):
        grads = torch.autograd.grad(value, inputs, create_graph=True)
        return torch.autograd.grad(sum((a * v).sum() for a, v in zip(grads, vec)), inputs)

    ref = _reference(params, _rates_per_step("mixed", lr, params, K), xs, ys, xq, yq, K, "mse", "tanh",
                     first_order, w).mean()
    want = hvp(ref)
    for backend in backends_under_test():
        if backend not in ("torch", "cpp"):
            continue
        got = hvp(MF.meta_loss(params, xs, ys, xq, yq, lr=lr, steps=K, activation="tanh", first_order=first_order,
                               backend=backend, step_weights=w))
        for i, (a, b) in enumerate(zip(got, want)):
            assert_close(a, b, 1e-9, f"{backend} hvp {i}")


def test_adapt_with_per_step_rates(request):
    """``functional.adapt`` with LSLR rates equals the unrolled loop, in value and
    gradient (params, rates and x)."""
    g = seeded(request)
    dims, K = (4, 6, 3), 3
    params = [p.requires_grad_() for p in _params(g, dims, torch.float64)]
    lr, leaves = _lr_form("lslr", g, params, K, torch.float64)
    xs, ys, _, _ = _data(g, dims, 3, 5, 1, "cross_entropy", torch.float64)
    xs.requires_grad_()
    rates = _rates_per_step("lslr", lr, params, K)
    cur = [p.unsqueeze(0).expand(3, *p.shape) for p in params]
    for k in range(K):
        inner = R.task_losses(cur, xs, ys, "cross_entropy", "relu")
        gs = torch.autograd.grad(inner, cur, create_graph=True)
        cur = [c - r * gr for c, r, gr in zip(cur, rates[k], gs)]
    vec = [torch.randn(c.shape, generator=g, dtype=torch.float64) for c in cur]
    want = torch.autograd.grad(sum((c * v).sum() for c, v in zip(cur, vec)), params + leaves + [xs])
    for backend in backends_under_test():
        if backend not in ("torch", "cpp"):
            continue
        fast = MF.adapt(params, xs, ys, lr=lr, steps=K, loss="cross_entropy", activation="relu", backend=backend)
        for a, b in zip(fast, cur):
            assert_close(a, b, 1e-12, f"{backend} adapted")
        got = torch.autograd.grad(sum((c * v).sum() for c, v in zip(fast, vec)), params + leaves + [xs])
        for i, (a, b) in enumerate(zip(got, want)):
            assert_close(a, b, 1e-9, f"{backend} gradient {i}")


# ------------------------------------------------------------------ the schedule
@pytest.mark.parametrize("K,epochs", [(1, 3), (2, 4), (5, 10), (7, 2)])
def test_msl_weights_follow_the_formula(K, epochs):
    """The weights at several epochs, against the formula written out by hand, and their
    known limits: uniform at epoch 0, and from ``msl_epochs`` on the floor ``0.03/K``
    everywhere but the last step (which takes the rest)."""
    floor = 0.03 / K
    for epoch in range(0, 2 * epochs + 2):
        got = msl_weights(epoch, K, epochs)
        decay = 1.0 / K / epochs
        want = [max(1.0 / K - epoch * decay, floor)] * (K - 1)
        want.append(min(1.0 / K + epoch * (K - 1) * decay, 1.0 - (K - 1) * floor))
        assert got == pytest.approx(want, abs=1e-15)
        if epoch == 0:
            assert got == pytest.approx([1.0 / K] * K)
        if epoch >= epochs:
            assert got[:-1] == pytest.approx([floor] * (K - 1))
            assert got[-1] == pytest.approx(1.0 - (K - 1) * floor)
    assert msl_weights(2, 5, 10) == pytest.approx([0.16, 0.16, 0.16, 0.16, 0.36])


def test_mamlpp_schedule_and_objective(request):
    """``set_epoch`` drives the order (DA) and the weights (MSL); ``meta_loss`` equals the
    functional multi-step loss with the learner's per-step rates at each epoch."""
    g = seeded(request)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    net = mk.MLP(2, [9], 3, activation="tanh").double()
    pp = mk.MAMLPlusPlus(net, lr=0.2, steps=3, loss="cross_entropy", msl_epochs=2, first_order_epochs=1)
    assert [tuple(l.shape) for l in pp.lrs] == [(3,)] * 4
    xs, ys, xq, yq = _data(g, (2, 9, 3), 4, 5, 6, "cross_entropy", torch.float64)
    seen = []
    for epoch in range(4):
        pp.set_epoch(epoch)
        w = pp.step_weights()
        seen.append((pp.first_order, None if w is None else w.tolist()))
        got = pp.meta_loss(xs, ys, xq, yq)
        want = MF.meta_loss(list(net.parameters()), xs, ys, xq, yq, lr=list(pp.lrs), steps=3, loss="cross_entropy",
                            activation="tanh", first_order=pp.first_order, step_weights=w, backend="torch")
        assert_close(got, want, 1e-12, f"epoch {epoch}")
        a = torch.autograd.grad(got, list(pp.parameters()))
        b = torch.autograd.grad(want, list(pp.parameters()))
        for i, (u, v) in enumerate(zip(a, b)):
            assert_close(u, v, 1e-9, f"epoch {epoch} gradient {i}")
    assert [fo for fo, _ in seen] == [True, False, False, False]
    assert seen[0][1] == pytest.approx([1 / 3] * 3) and seen[1][1] == pytest.approx(msl_weights(1, 3, 2))
    assert seen[2][1] is None and seen[3][1] is None


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_mamlpp_generic_path(request, mode):
    """A model off the fused path (a LayerNorm in it): per-step rates and the multi-step
    loss through torch.func / the loop, against ground truth (first order: vmap is exact
    there; the loop at second order too)."""
    g = seeded(request)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.LayerNorm(8),
                              torch.nn.Linear(8, 1)).double()
    fo = mode == "vmap"
    pp = mk.MAMLPlusPlus(net, lr=0.1, steps=2, msl_epochs=5, first_order_epochs=0, first_order=fo,
                         generic_mode=mode)
    assert not pp.fused
    xs, ys, xq, yq = _data(g, (2, 8, 1), 3, 5, 4, "mse", torch.float64)
    got = pp.meta_loss(xs, ys, xq, yq)
    names, params = zip(*net.named_parameters())
    w = pp.step_weights()

    def fn(p, x):
        return torch.func.functional_call(net, dict(zip(names, p)), (x,))

    ref = []
    for t in range(3):
        cur, total = list(params), 0
        for k in range(2):
            gs = torch.autograd.grad(R.task_loss(fn(cur, xs[t]), ys[t]), cur, create_graph=not fo)
            if fo:
                gs = [x.detach() for x in gs]
            cur = [c - r[k] * gr for c, r, gr in zip(cur, pp.lrs, gs)]
            total = total + w[k] * R.task_loss(fn(cur, xq[t]), yq[t])
        ref.append(total)
    ref = torch.stack(ref).mean()
    assert_close(got, ref, 1e-12, "value")
    got_g = torch.autograd.grad(got, list(pp.parameters()))
    ref_g = torch.autograd.grad(ref, list(pp.parameters()))
    for i, (a, b) in enumerate(zip(got_g, ref_g)):
        assert_close(a, b, 1e-9, f"gradient {i}")


# ------------------------------------------------------------------ bad input
def _small():
    params = [torch.randn(4, 2), torch.zeros(4), torch.randn(1, 4), torch.zeros(1)]
    xs, ys = torch.randn(2, 3, 2), torch.randn(2, 3, 1)
    return params, xs, ys, xs.clone(), ys.clone()


@pytest.mark.parametrize("lr,match", [
    (torch.full((4,), 0.1), r"lr as \[K\].*K = steps = 3"),
    (torch.full((3, 2), 0.1), r"lr must be 0-dim .* or \[K\]"),
    ([torch.full((4,), 0.1)] * 4, r"lr\[0\] as \[K\].*K = steps = 3"),
    ([torch.full((2, 4, 2), 0.1)] + [torch.tensor(0.1)] * 3, r"lr\[0\] as \[K, \*\(4, 2\)\].*K = steps = 3"),
    ([torch.full((3, 5), 0.1)] + [torch.tensor(0.1)] * 3, r"lr\[0\] must have its parameter's shape"),
])
def test_bad_per_step_rates(lr, match):
    params, xs, ys, xq, yq = _small()
    with pytest.raises(ValueError, match=match):
        MF.meta_loss(params, xs, ys, xq, yq, lr=lr, steps=3)


@pytest.mark.parametrize("w,err,match", [
    ([0.5, 0.5], ValueError, r"step_weights must be \[K\] with K = steps = 3"),
    (torch.ones(3, 1), ValueError, r"step_weights must be \[K\]"),
    (torch.ones(3, dtype=torch.int64), TypeError, "floating-point"),
    (torch.ones(3, requires_grad=True), ValueError, "must not require a gradient"),
    ([0.1, float("nan"), 0.2], ValueError, "finite"),
    ("last", TypeError, "step_weights must be"),
])
def test_bad_step_weights(w, err, match):
    params, xs, ys, xq, yq = _small()
    with pytest.raises(err, match=match):
        MF.meta_loss(params, xs, ys, xq, yq, lr=0.1, steps=3, step_weights=w)


def test_step_weights_need_steps():
    params, xs, ys, xq, yq = _small()
    with pytest.raises(ValueError, match="step_weights needs steps >= 1"):
        MF.meta_loss(params, xs, ys, xq, yq, lr=0.1, steps=0, step_weights=torch.ones(0))


def test_mamlpp_bad_arguments():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        mk.MAMLPlusPlus(mk.MLP(1, [4], 1), steps=0)
    with pytest.raises(ValueError, match="msl_epochs must be >= 0"):
        mk.MAMLPlusPlus(mk.MLP(1, [4], 1), msl_epochs=-1)
    pp = mk.MAMLPlusPlus(mk.MLP(1, [4], 1), steps=2)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        pp.set_epoch(-1)
    with pytest.raises(TypeError, match="epoch must be an int"):
        pp.set_epoch(1.5)
    xs, ys, xq, yq = mk.tasks.Sinusoid().sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="steps=3 differs from the 2 inner steps"):
        pp.meta_loss(xs, ys, xq, yq, steps=3)
    with pytest.raises(ValueError, match="steps=5 differs"):
        pp.adapt(xs, ys, steps=5)


def test_gradcheck_per_step_rates_and_step_weights(request):
    """torch.autograd.gradcheck (finite differences, float64) of the fused multi-step
    objective in the parameters and the per-step rates, second order (a first-order
    meta-gradient is not the derivative), on every backend here that runs float64."""
    g = seeded(request)
    dims, K = (2, 4, 2), 2
    params = [p.requires_grad_() for p in _params(g, dims, torch.float64)]
    lr, leaves = _lr_form("mixed", g, params, K, torch.float64)
    w = _weights("random", g, K, torch.float64)
    xs, ys, xq, yq = _data(g, dims, 2, 3, 3, "cross_entropy", torch.float64)
    n = len(params)
    for backend in backends_under_test():
        if primary_dtype(backend) != torch.float64 or "cpu" not in devices_for(backend):
            continue

        def fn(*ts):
            return MF.meta_loss(list(ts[:n]), xs, ys, xq, yq, lr=list(ts[n:]), steps=K, loss="cross_entropy",
                                activation="tanh", backend=backend, reduction="none",
                                step_weights=w)

        assert torch.autograd.gradcheck(fn, tuple(params + leaves), eps=1e-6, atol=1e-7, rtol=1e-5), backend
