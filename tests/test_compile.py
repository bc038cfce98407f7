"""Registered ops: opcheck, and a whole second-order MAML step under torch.compile(fullgraph=True)."""
import pytest
import torch
import torch.nn.functional as F

import metakern as mk
from metakern import _ops
from helpers import backends_under_test, devices_for, make_problem, seeded

COMPILED = [b for b in backends_under_test() if b in ("torch", "cpp", "cuda")]


def _packed_problem(g, device, loss="cross_entropy", shared=True):
    dims = [3, 5, 4]
    params, x, y, lr = make_problem(g, dims, 2, 3, loss, torch.float64, per_task=not shared, lr_kind="per_param")
    if shared:
        theta = torch.cat([p.reshape(-1) for p in params])
    else:
        theta = torch.cat([p.reshape(2, -1) for p in params], 1)
    lr = torch.cat([l.reshape(-1) for l in lr])
    return theta.to(device), lr.to(device), x.to(device), y.to(device), dims


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("shared", [True, False])
def test_opcheck_adapt(request, backend, shared):
    g = seeded(request)
    theta, lr, x, y, dims = _packed_problem(g, devices_for(backend)[0], shared=shared)
    theta.requires_grad_(); lr.requires_grad_(); x.requires_grad_()
    for first_order in (False, True):
        torch.library.opcheck(_ops.adapt_custom, (theta, lr, x, y, dims, 2, 1, 2, first_order, backend))
    torch.library.opcheck(_ops.mlp_custom, (theta, x, dims, 2, backend))


@pytest.mark.parametrize("backend", [b for b in COMPILED if b != "torch"])
def test_opcheck_compiled_kernels(request, backend):
    """The C++-registered schemas themselves (fake kernels registered in Python)."""
    g = seeded(request)
    theta, lr, x, y, dims = _packed_problem(g, devices_for(backend)[0])
    theta.requires_grad_(); lr.requires_grad_(); x.requires_grad_()
    thetaK = torch.ops.metakern.adapt_fwd(theta, lr, x, y, dims, 2, 1, 2).detach()
    grad = torch.randn_like(thetaK)
    torch.library.opcheck(torch.ops.metakern.adapt_fwd.default, (theta, lr, x, y, dims, 2, 1, 2))
    torch.library.opcheck(torch.ops.metakern.mlp_fwd.default, (theta, x, dims, 2))
    plain = [t.detach() for t in (theta, lr, x)]
    torch.library.opcheck(torch.ops.metakern.adapt_bwd.default, (grad, *plain, y, dims, 2, 1, 2, False, True))
    out = torch.ops.metakern.mlp_fwd(plain[0], plain[2], dims, 2)
    torch.library.opcheck(torch.ops.metakern.mlp_bwd.default, (torch.randn_like(out), plain[0], plain[2], dims, 2, True))
    if backend in ("cpp", "cuda"):  # the MAML objective: fused on the CPU, composed in C++ on CUDA
        xq, yq = plain[2][:, :2].contiguous(), y[:, :2].contiguous()
        for need_grad, first_order, need_lr in ((True, False, True), (True, True, True), (False, False, True),
                                                (True, False, False), (True, True, False)):
            torch.library.opcheck(torch.ops.metakern.maml_fwd.default,
                                  (plain[0], plain[1], plain[2], y, xq, yq, dims, 2, 1, 2, first_order, need_grad,
                                   need_lr))


@pytest.mark.parametrize("backend", COMPILED)
def test_compiled_second_order_step_matches_eager(request, backend):
    g = seeded(request)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    device = devices_for(backend)[0]
    maml = mk.MAML(mk.MLP(1, [16, 16], 1, activation="tanh"), lr=0.05, steps=2, learn_lr=True,
                   backend=backend).to(device)
    xs, ys, xq, yq = (t.to(device) for t in mk.tasks.Sinusoid().sample(5, g))

    def two_ops(xs, ys, xq, yq):
        return F.mse_loss(maml.adapt(xs, ys)(xq), yq)

    params = list(maml.parameters())
    eager = torch.autograd.grad(two_ops(xs, ys, xq, yq), params)
    # MAML.meta_loss: eager takes the fused one-pass kernel where the backend has one,
    # compiled the registered adapt/mlp ops; both must give the eager two-op gradient
    for fn in (two_ops, maml.meta_loss):
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True)
        for got in (torch.autograd.grad(compiled(xs, ys, xq, yq), params),
                    torch.autograd.grad(fn(xs, ys, xq, yq), params)):
            for a, b in zip(got, eager):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", [b for b in COMPILED if b != "torch"])
def test_registered_autograd_of_compiled_op(request, backend):
    """The autograd formula registered on metakern::adapt_fwd itself (exact, second order)."""
    g = seeded(request)
    theta, lr, x, y, dims = _packed_problem(g, devices_for(backend)[0], shared=False)
    inputs = (theta.requires_grad_(), lr.requires_grad_(), x.requires_grad_())
    assert torch.autograd.gradcheck(lambda t, l, xx: torch.ops.metakern.adapt_fwd(t, l, xx, y, dims, 2, 1, 3),
                                    inputs, eps=1e-6, atol=1e-7)


def test_backend_checks_trace_under_compile():
    """Every backend's availability check runs inside a fullgraph trace, also where the
    backend cannot run here (cuda without a GPU): `auto` and a named backend resolve
    while compiling. A per-call metakern._C.build_info() (pybind11, untraceable) once
    broke the cuda backend's compiled MAML step on a GPU machine."""
    import metakern.backends as B

    B.load_extension()  # eager first, as any training script's first call is

    @torch.compile(fullgraph=True, backend="eager")
    def count_reasons(x):
        n = 0
        for name in B.BACKENDS:
            n += len(B.get(name).unavailable())
        return x + n

    expected = sum(len(B.get(name).unavailable()) for name in B.BACKENDS)
    assert count_reasons(torch.zeros(1)).item() == expected


# Every learner in its default configuration (fixed inner rate where that is the
# default, backend "auto"), as the README's quick start builds them.
DEFAULT_LEARNERS = {
    "maml": lambda: mk.MAML(mk.MLP(1, [16, 16], 1)),
    "fomaml": lambda: mk.MAML(mk.MLP(1, [16, 16], 1), first_order=True),
    "metasgd": lambda: mk.MetaSGD(mk.MLP(1, [16, 16], 1)),
    "anil": lambda: mk.ANIL(mk.MLP(1, [16], 16), torch.nn.Linear(16, 1)),
    "reptile": lambda: mk.Reptile(mk.MLP(1, [16, 16], 1)),
    # epoch 0 of its schedule: first order and the multi-step loss (the default start)
    "mamlpp": lambda: mk.MAMLPlusPlus(mk.MLP(1, [16, 16], 1)),
}


def _objectives(learner):
    """``meta_loss`` and the two-op ``loss(adapt(xs, ys)(xq), yq)`` of a learner."""
    def meta(xs, ys, xq, yq):
        return learner.meta_loss(xs, ys, xq, yq)

    def two_ops(xs, ys, xq, yq):
        return F.mse_loss(learner.adapt(xs, ys)(xq), yq)

    return {"meta_loss": meta, "adapt": two_ops}


@pytest.mark.parametrize("objective", ["meta_loss", "adapt"])
@pytest.mark.parametrize("algo", sorted(DEFAULT_LEARNERS))
def test_default_learners_compile_fullgraph(request, algo, objective):
    """torch.compile(fullgraph=True) of each learner's objectives gives eager's value and
    meta-gradient, in the default float32. Compiled and eager run the same math in a
    different order (the composed registered ops against the fused kernel): float32
    rounding (6e-8 relative per operation) over sums of ~50 points and chains of a few
    hundred operations stays far below 2e-5 of the largest entry."""
    from helpers import assert_close

    g = seeded(request)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    learner = DEFAULT_LEARNERS[algo]()
    xs, ys, xq, yq = mk.tasks.Sinusoid().sample(5, g)
    fn = _objectives(learner)[objective]
    params = [p for p in learner.parameters() if p.requires_grad]
    eager_val = fn(xs, ys, xq, yq)
    eager = torch.autograd.grad(eager_val, params, allow_unused=True)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    for _ in range(2):  # the second call runs the cached graph
        val = compiled(xs, ys, xq, yq)
        got = torch.autograd.grad(val, params, allow_unused=True)
        assert_close(val, eager_val, 2e-5, f"{algo} {objective} value")
        for i, (a, b) in enumerate(zip(got, eager)):
            assert (a is None) == (b is None), f"{algo} {objective}: gradient {i} present in one run only"
            if a is not None:
                assert_close(a, b, 2e-5, f"{algo} {objective} gradient {i}")


def test_fixed_lr_change_is_seen_under_compile():
    """A fixed inner rate changed in place after compiling is read by the compiled graph."""
    torch.manual_seed(0)
    maml = mk.MAML(mk.MLP(1, [8], 1))
    xs, ys, xq, yq = mk.tasks.Sinusoid().sample(3, torch.Generator().manual_seed(1))
    maml.meta_loss(xs, ys, xq, yq)  # eager first
    torch._dynamo.reset()
    compiled = torch.compile(maml.meta_loss, fullgraph=True)
    before = compiled(xs, ys, xq, yq)
    maml.lr.fill_(0.3)
    after, eager = compiled(xs, ys, xq, yq), maml.meta_loss(xs, ys, xq, yq)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, eager, rtol=2e-5, atol=0)  # float32, as above


COMPILED_FIRST = r"""
import torch, torch.nn.functional as F
import metakern as mk, metakern.functional as MF
torch.manual_seed(0)
maml = mk.MAML(mk.MLP(1, [16, 16], 1))
xs, ys, xq, yq = mk.tasks.Sinusoid().sample(4, torch.Generator().manual_seed(0))
params = [p.detach() for p in maml.parameters()]
fns = {
    "MAML.meta_loss": maml.meta_loss,
    "MAML.adapt": lambda xs, ys, xq, yq: F.mse_loss(maml.adapt(xs, ys)(xq), yq),
    "functional.meta_loss": lambda xs, ys, xq, yq: MF.meta_loss(params, xs, ys, xq, yq, lr=0.01),
    "functional.adapt": lambda xs, ys, xq, yq: F.mse_loss(MF.forward(MF.adapt(params, xs, ys, lr=0.01), xq), yq),
}
# compiled before anything of metakern ran eagerly in this process
compiled = {name: torch.compile(fn, fullgraph=True)(xs, ys, xq, yq) for name, fn in fns.items()}
for name, fn in fns.items():
    eager = fn(xs, ys, xq, yq)
    assert torch.allclose(compiled[name], eager, rtol=2e-5, atol=0), (name, compiled[name], eager)  # float32
print("ok", len(fns))
"""


def test_compile_first_in_a_fresh_process():
    """Compiling is the first thing a process does with metakern: the extension and the
    ops' registrations are loaded at import, never inside the trace."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", COMPILED_FIRST], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ))
    assert r.returncode == 0 and "ok 4" in r.stdout, r.stdout + r.stderr
