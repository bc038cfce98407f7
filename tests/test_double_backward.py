"""Second derivatives through the fused ops: a backward with ``create_graph=True``.

The kernels compute first derivatives only; with ``create_graph=True`` the ops hand
back gradients recomputed through autograd (``metakern/_ops.py``), which can be
differentiated again. Checked here against plain autograd through the unrolled
inner loop (tests/reference.py), in float64: the derivatives of the meta-gradient
(Hessian-vector products of the MAML objective, d2L/dlr2, a gradient penalty) on
every backend, through ``meta_loss`` (the fused node, C++ and Python), through
``adapt`` + ``forward`` (the composed ops) and through the learners.
"""
import pytest
import torch

import metakern as mk
import metakern.functional as MF
import reference as R
from helpers import (assert_close, backends_under_test, lr_leaves, make_problem, primary_dtype,
                     poison_uninitialised_memory)  # noqa: F401 (autouse fixture)

BACKENDS = backends_under_test()


def _rtol(backend):
    # float64: the references and the recomputation differ by summation order only
    # (about 1e-15 relative; 1e-9 leaves room for cancellation in the Hessian terms).
    # Triton runs float32: its first derivatives are float32 kernels (2e-4, as elsewhere).
    return 2e-4 if primary_dtype(backend) == torch.float32 else 1e-9


def _ref_objective(params, lr, xs, ys, xq, yq, steps, loss, act, first_order):
    ad = R.adapt(params, xs, ys, lr, steps, loss, act, first_order)
    return R.task_losses(ad, xq, yq, loss, act) / xs.shape[0]  # mean over tasks


def _hvp(objective, inputs, vs):
    """``(J, d<J, v>/d inputs)``: the gradient with a graph, then its derivative along ``vs``."""
    J = torch.autograd.grad(objective(), inputs, create_graph=True)
    assert all(j.requires_grad for j in J), "a gradient asked for with create_graph=True has no graph"
    Hv = torch.autograd.grad(sum((j * v).sum() for j, v in zip(J, vs)), inputs, allow_unused=True)
    return [j.detach() for j in J], [torch.zeros_like(t) if h is None else h for h, t in zip(Hv, inputs)]


def _problem(seed, dims, loss, dtype, per_task=False, lr_kind="scalar", T=3):
    g = torch.Generator().manual_seed(seed)
    params, xs, ys, lr = make_problem(g, dims, T, 5, loss, dtype, per_task, lr_kind)
    _, xq, yq, _ = make_problem(g, dims, T, 4, loss, dtype)
    return g, params, xs, ys, xq, yq, lr


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss,act,dims", [("mse", "tanh", (2, 7, 1)), ("cross_entropy", "sigmoid", (3, 6, 4)),
                                           ("mse", "relu", (1, 9, 5, 1))])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("lr_kind", ["scalar", "per_param"])
def test_meta_loss_hessian_vector_products(backend, loss, act, dims, first_order, lr_kind):
    dtype = primary_dtype(backend)
    g, params, xs, ys, xq, yq, lr = _problem(11, dims, loss, torch.float64, lr_kind=lr_kind)
    steps = 2

    def run(objective_of, cast):
        ps = [cast(p).requires_grad_() for p in params]
        lr_in, leaves = lr_leaves(lr, lr_kind, torch.float64, "cpu")
        lr_in = [cast(v).detach().requires_grad_() for v in leaves] if lr_kind == "per_param" else \
            cast(lr_in).detach().requires_grad_()
        leaves = lr_in if lr_kind == "per_param" else [lr_in]
        inputs = leaves + ps
        vs = [torch.randn(t.shape, generator=torch.Generator().manual_seed(5 + i), dtype=torch.float64).to(t.dtype)
              for i, t in enumerate(inputs)]
        return _hvp(lambda: objective_of(ps, lr_in), inputs, vs)

    got_J, got_Hv = run(lambda ps, lr_in: MF.meta_loss(ps, *(t.to(dtype) if t.is_floating_point() else t
                                                              for t in (xs, ys, xq, yq)), lr=lr_in, steps=steps,
                                                       loss=loss, activation=act, first_order=first_order,
                                                       backend=backend), lambda t: t.to(dtype))
    ref_J, ref_Hv = run(lambda ps, lr_in: _ref_objective(ps, lr_in, xs, ys, xq, yq, steps, loss, act, first_order),
                        lambda t: t.clone())
    for i, (a, b) in enumerate(zip(got_J, ref_J)):
        assert_close(a, b, _rtol(backend), f"gradient {i}")
    for i, (a, b) in enumerate(zip(got_Hv, ref_Hv)):
        assert_close(a, b, _rtol(backend), f"Hessian-vector product {i}", floor=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_derivative_in_the_inner_rate(backend):
    """d2L/dlr2 of a sine MAML objective, the quantity a user found silently zero."""
    dtype = primary_dtype(backend)
    g = torch.Generator().manual_seed(2)
    model = mk.MLP(1, [12, 12], 1, activation="tanh").double()
    xs, ys, xq, yq = (t.double() for t in mk.tasks.Sinusoid(shots=5, queries=7).sample(4, g))

    def d2(objective):
        lr = torch.tensor(0.03, dtype=torch.float64 if objective is ref else dtype, requires_grad=True)
        (d1,) = torch.autograd.grad(objective(lr), lr, create_graph=True)
        (d2,) = torch.autograd.grad(d1, lr)
        return d1.detach(), d2

    def ref(lr):
        return _ref_objective(list(model.parameters()), lr, xs, ys, xq, yq, 3, "mse", "tanh", False)

    def fused(lr):
        cast = [t.to(dtype) for t in (xs, ys, xq, yq)]
        return MF.meta_loss([p.to(dtype) for p in model.parameters()], *cast, lr=lr, steps=3, activation="tanh",
                            backend=backend)

    (r1, r2), (f1, f2) = d2(ref), d2(fused)
    assert abs(float(r2)) > 1.0  # a second derivative that zero would not pass for
    assert_close(f1, r1, _rtol(backend), "dL/dlr")
    assert_close(f2, r2, _rtol(backend), "d2L/dlr2")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_task", [False, True])
def test_adapt_then_forward_second_derivatives(backend, per_task):
    """The composed path (adapt_op, mlp_op): derivatives of the gradient in params, lr and x."""
    dtype = primary_dtype(backend)
    g, params, xs, ys, xq, yq, lr = _problem(3, (2, 6, 3), "cross_entropy", torch.float64, per_task=per_task)

    def run(objective_of, cast):
        ps = [cast(p).requires_grad_() for p in params]
        lr_in = cast(lr).detach().requires_grad_()
        x_in = cast(xs).requires_grad_()
        inputs = [lr_in, x_in] + ps
        vs = [torch.randn(t.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64).to(t.dtype)
              for i, t in enumerate(inputs)]
        return _hvp(lambda: objective_of(ps, lr_in, x_in), inputs, vs)

    def fused(ps, lr_in, x_in):
        ad = MF.adapt(ps, x_in, ys, lr=lr_in, steps=2, loss="cross_entropy", activation="tanh", backend=backend)
        out = MF.forward(ad, xq.to(dtype), activation="tanh", backend=backend)
        return torch.nn.functional.cross_entropy(out.flatten(0, 1), yq.flatten())

    def ref(ps, lr_in, x_in):
        return _ref_objective(ps, lr_in, x_in, ys, xq, yq, 2, "cross_entropy", "tanh", False)

    got_J, got_Hv = run(fused, lambda t: t.to(dtype))
    ref_J, ref_Hv = run(ref, lambda t: t.clone())
    for i, (a, b) in enumerate(zip(got_J, ref_J)):
        assert_close(a, b, _rtol(backend), f"gradient {i}")
    for i, (a, b) in enumerate(zip(got_Hv, ref_Hv)):
        assert_close(a, b, _rtol(backend), f"Hessian-vector product {i}", floor=1e-6)


@pytest.mark.parametrize("learner", ["maml", "metasgd", "anil"])
def test_gradient_penalty_on_a_learner(learner):
    """A training step on L + ||dL/dtheta||^2 (a gradient penalty): the meta-parameters'
    .grad equal the unrolled reference's."""
    g = torch.Generator().manual_seed(9)
    xs, ys, xq, yq = (t.double() for t in mk.tasks.Sinusoid(shots=5, queries=6).sample(3, g))

    def make():
        torch.manual_seed(0)
        if learner == "anil":
            return mk.ANIL(mk.MLP(1, [8], 8, activation="tanh").double(), torch.nn.Linear(8, 1).double(), lr=0.1,
                           steps=2)
        cls = mk.MetaSGD if learner == "metasgd" else mk.MAML
        return cls(mk.MLP(1, [8, 8], 1, activation="tanh").double(), lr=0.05, steps=2)

    def penalised(objective, params):
        L = objective()
        grads = torch.autograd.grad(L, params, create_graph=True)
        return L + sum((gr ** 2).sum() for gr in grads)

    got = make()
    params = [p for p in got.parameters()]
    penalised(lambda: got.meta_loss(xs, ys, xq, yq), params).backward()

    ref = make()
    rparams = [p for p in ref.parameters()]
    if learner == "anil":
        body, head, lr = ref.body, ref.head.module, ref.head.lr

        def objective():
            fs, fq = body(xs), body(xq)
            ad = R.adapt([head.weight, head.bias], fs, ys, lr, 2, "mse", "identity")
            return R.task_losses(ad, fq, yq, "mse", "identity") / 3
    else:
        model_params = list(ref.module.parameters())
        lrs = list(ref.lrs) if learner == "metasgd" else ref.lr

        def objective():
            return _ref_objective(model_params, lrs, xs, ys, xq, yq, 2, "mse", "tanh", False)
    penalised(objective, rparams).backward()
    for (name, a), b in zip(got.named_parameters(), rparams):
        assert_close(a.grad, b.grad, 1e-9, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_fn_names_are_well_formed(backend):
    """A printed loss names its node plainly (the C++ node's name once printed as ``<MamlLossFn>>``)."""
    dtype = primary_dtype(backend)
    g, params, xs, ys, xq, yq, _ = _problem(1, (1, 5, 1), "mse", dtype)
    out = MF.meta_loss([p.requires_grad_() for p in params], xs, ys, xq, yq, lr=0.1, activation="tanh",
                       backend=backend)
    text = repr(out)
    name = text.split("grad_fn=<", 1)[1].rsplit(">", 1)[0]
    assert name.isidentifier(), text
    if backend == "cpp":
        assert name == "MamlLossBackward"


def test_raw_ops_second_derivatives():
    """torch.ops.metakern.adapt_fwd / mlp_fwd, differentiated twice through their registered formulas."""
    pytest.importorskip("metakern._C")
    g, params, xs, ys, xq, yq, lr = _problem(4, (2, 5, 2), "mse", torch.float64)
    theta = torch.cat([p.reshape(-1) for p in params]).requires_grad_()
    lrp = torch.full_like(theta, float(lr)).requires_grad_()
    x = xs.clone().requires_grad_()
    inputs = [theta, lrp, x]
    vs = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in inputs]

    def raw():
        thK = torch.ops.metakern.adapt_fwd(theta, lrp, x, ys, [2, 5, 2], 2, 0, 2)
        return (torch.ops.metakern.mlp_fwd(thK, xq, [2, 5, 2], 2) - yq).square().mean((1, 2)).mean()

    def ref():
        ps, at = [], 0
        for p in params:
            ps.append(theta[at:at + p.numel()].view(p.shape))
            at += p.numel()
        lrs, at = [], 0
        for p in params:
            lrs.append(lrp[at:at + p.numel()].view(p.shape))
            at += p.numel()
        return _ref_objective(ps, lrs, x, ys, xq, yq, 2, "mse", "tanh", False)

    (gJ, gH), (rJ, rH) = _hvp(raw, inputs, vs), _hvp(ref, inputs, vs)
    for i in range(3):
        assert_close(gJ[i], rJ[i], 1e-9, f"gradient {i}")
        assert_close(gH[i], rH[i], 1e-9, f"Hessian-vector product {i}", floor=1e-6)
