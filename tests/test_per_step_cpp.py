"""Per-step inner rates (lr [K, P]) and the multi-step loss (step_weights) in the C++ layer.

Calls the raw ops directly: ``torch.ops.metakern.adapt_fwd`` / ``adapt_bwd`` /
``maml_fwd`` (the fused CPU kernels), ``metakern._C.maml_fwd_composed`` (the
composition that is CUDA's maml_fwd, run on the CPU ops) and ``metakern._C.maml_loss``
(the C++ autograd node), against float64 autograd through the unrolled inner loop
(tests/reference.py). The public ``meta_loss`` is tests/test_meta_loss.py.
"""
import pytest
import torch

import metakern.backends as B
from metakern import _C
from helpers import RTOL, assert_close, poison_uninitialised_memory, seeded  # noqa: F401 (autouse fixture)
from reference import adapt_packed_path, maml_losses_packed

pytestmark = pytest.mark.skipif(bool(B.available()["cpp"]), reason="the cpp backend is not built (test_build checks "
                                                                   "it is in CI)")

LOSS = {"mse": 0, "cross_entropy": 1}
ACT = {"relu": 1, "tanh": 2}
DIMS = [3, 7, 5, 2]
T, N, NQ = 3, 5, 4


def _n_params(dims):
    return sum(o * (i + 1) for i, o in zip(dims[:-1], dims[1:]))


def _problem(g, dims, loss, steps, shared, lr_form, weights, dtype=torch.float64, n=N, nq=NQ):
    P = _n_params(dims)
    theta = torch.randn((P,) if shared else (T, P), generator=g, dtype=torch.float64) * 0.5
    xs = torch.randn(T, n, dims[0], generator=g, dtype=torch.float64)
    xq = torch.randn(T, nq, dims[0], generator=g, dtype=torch.float64)
    if loss == "mse":
        ys = torch.randn(T, n, dims[-1], generator=g, dtype=torch.float64)
        yq = torch.randn(T, nq, dims[-1], generator=g, dtype=torch.float64)
    else:
        ys = torch.randint(0, dims[-1], (T, n), generator=g)
        yq = torch.randint(0, dims[-1], (T, nq), generator=g)
    lr_shape = (steps, P) if lr_form == "KP" else (P,)
    lr = 0.05 + 0.2 * torch.rand(lr_shape, generator=g, dtype=torch.float64)
    w = None
    if weights == "positive":
        w = 0.1 + torch.rand(steps, generator=g, dtype=torch.float64)
    elif weights == "zeros":  # K = 1: (0); K = 2: (0, w); K = 3: (0, w, 0), the last step's too
        w = 0.1 + torch.rand(steps, generator=g, dtype=torch.float64)
        w[::2] = 0.0
    cast = (lambda t: t.to(dtype)) if dtype != torch.float64 else (lambda t: t)
    fl = [cast(t) for t in (theta, lr, xs, xq)]
    if loss == "mse":
        ys, yq = cast(ys), cast(yq)
    return fl[0], fl[1], fl[2], ys, fl[3], yq, (cast(w) if w is not None else None)


def _reference_maml(theta, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, w):
    """Per-task losses [T] and per-task gradients (d l_t/d theta [T, P], d l_t/d lr [T, *lr.shape]), float64."""
    th = theta.detach().double().requires_grad_(True)
    rate = lr.detach().double().requires_grad_(True)
    d = lambda t: t.detach().double() if t.is_floating_point() else t  # noqa: E731
    ww = None if w is None else w.detach().double()
    losses = maml_losses_packed(th, rate, d(xs), d(ys), d(xq), d(yq), dims, steps, LOSS[loss], ACT[act], first_order,
                                step_weights=ww, per_step=lr.dim() == 2)
    g_th, g_lr = [], []
    for t in range(T):
        gt, gl = torch.autograd.grad(losses[t], (th, rate), retain_graph=True, allow_unused=True)
        g_th.append(gt[t] if theta.dim() == 2 else gt)
        g_lr.append(torch.zeros_like(rate) if gl is None else gl)
    return losses.detach(), torch.stack(g_th), torch.stack(g_lr)


def _cases():
    out = []
    i = 0
    for steps in (1, 2, 3):
        for loss in LOSS:
            for act in ACT:
                for fo in (False, True):
                    for weights in ("none", "positive", "zeros"):
                        lr_form = "KP" if i % 3 != 2 else "P"
                        shared = i % 2 == 0
                        out.append(pytest.param(steps, loss, act, fo, weights, lr_form, shared,
                                                id=f"K{steps}-{loss}-{act}-{'fo' if fo else 'so'}-w{weights}-"
                                                   f"lr{lr_form}-{'sh' if shared else 'pt'}"))
                        i += 1
    return out


@pytest.mark.parametrize("steps,loss,act,first_order,weights,lr_form,shared", _cases())
def test_maml_fwd_against_reference(request, steps, loss, act, first_order, weights, lr_form, shared):
    """The fused kernel and the composition: losses, g_theta and g_lr ([T, P] or [T, K, P]) equal
    float64 autograd through the unrolled loop, with and without step weights."""
    g = seeded(request)
    theta, lr, xs, ys, xq, yq, w = _problem(g, DIMS, loss, steps, shared, lr_form, weights)
    ref = _reference_maml(theta, lr, xs, ys, xq, yq, DIMS, steps, loss, act, first_order, w)
    args = (theta, lr, xs, ys, xq, yq, DIMS, steps, LOSS[loss], ACT[act], first_order, True, True, w)
    for name, fn in (("fused", torch.ops.metakern.maml_fwd), ("composed", _C.maml_fwd_composed)):
        got = fn(*args)
        assert got[2].shape == (T, *lr.shape), name
        for a, b, what in zip(got, ref, ("losses", "g_theta", "g_lr")):
            assert_close(a, b, RTOL[torch.float64], f"{name} {what}")
        lean = fn(*args[:12], False, w)  # need_lr=False: no lr gradient, the rest unchanged
        assert lean[2].shape == (0, theta.shape[-1])
        assert torch.equal(lean[0], got[0]) and torch.equal(lean[1], got[1])
        nograd = fn(*args[:11], False, True, w)
        assert nograd[1].shape == (0, theta.shape[-1]) and nograd[2].shape == (0, theta.shape[-1])
        assert_close(nograd[0], ref[0], RTOL[torch.float64], f"{name} losses without need_grad")


@pytest.mark.parametrize("first_order", [False, True], ids=["so", "fo"])
def test_zero_weights_add_nothing(request, first_order):
    """A weight of zero drops that step's query loss exactly: with w = (0, .., 0, 1) the
    multi-step loss is the plain objective."""
    g = seeded(request)
    theta, lr, xs, ys, xq, yq, _ = _problem(g, DIMS, "mse", 3, False, "KP", "none")
    w = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    args = (theta, lr, xs, ys, xq, yq, DIMS, 3, 0, 2, first_order, True, True)
    plain = torch.ops.metakern.maml_fwd(*args)
    weighted = torch.ops.metakern.maml_fwd(*args, w)
    for a, b in zip(weighted, plain):
        assert torch.equal(a, b)


def test_per_step_rate_rows_equal_to_one_rate(request):
    """lr [P] and the same rate repeated in every row of lr [K, P] give the same objective;
    g_lr [T, P] is the sum over the step axis of g_lr [T, K, P]."""
    g = seeded(request)
    theta, lr, xs, ys, xq, yq, w = _problem(g, DIMS, "cross_entropy", 3, True, "P", "positive")
    rows = lr.expand(3, -1).contiguous()
    for sw in (None, w):
        one = torch.ops.metakern.maml_fwd(theta, lr, xs, ys, xq, yq, DIMS, 3, 1, 1, False, True, True, sw)
        per = torch.ops.metakern.maml_fwd(theta, rows, xs, ys, xq, yq, DIMS, 3, 1, 1, False, True, True, sw)
        assert one[2].shape == (T, lr.shape[0]) and per[2].shape == (T, 3, lr.shape[0])
        assert torch.equal(one[0], per[0]) and torch.equal(one[1], per[1])
        assert_close(per[2].sum(1), one[2], RTOL[torch.float64], "g_lr summed over steps")


@pytest.mark.parametrize("steps", [0, 1, 2, 3])
@pytest.mark.parametrize("first_order", [False, True], ids=["so", "fo"])
@pytest.mark.parametrize("loss,act", [("mse", "tanh"), ("cross_entropy", "relu")])
def test_adapt_ops_per_step_rates(request, steps, first_order, loss, act):
    """adapt_fwd with lr [K, P] (K = 0 included: lr [0, P]) is theta_K of the unrolled loop;
    adapt_bwd's g_theta, g_lr [T, K, P] and g_x are the float64 autograd gradients of <v, theta_K>."""
    g = seeded(request)
    theta, lr, xs, ys, _, _, _ = _problem(g, DIMS, loss, steps, False, "KP", "none")
    v = torch.randn(theta.shape, generator=g, dtype=torch.float64)
    th = theta.clone().requires_grad_(True)
    rate = lr.clone().requires_grad_(True)
    x = xs.clone().requires_grad_(True)
    path = adapt_packed_path(th, rate, x, ys, DIMS, steps, LOSS[loss], ACT[act], first_order, per_step=True)
    out = torch.ops.metakern.adapt_fwd(theta, lr, xs, ys, DIMS, steps, LOSS[loss], ACT[act])
    assert_close(out, path[-1].detach(), RTOL[torch.float64], "theta_K")
    if steps == 0:
        ref = (v, torch.zeros(T, 0, theta.shape[1], dtype=torch.float64), torch.zeros_like(xs))
    else:
        gt, gl, gx = torch.autograd.grad((path[-1] * v).sum(), (th, rate, x), allow_unused=True)
        # per task: lr is shared, so d<v_t, theta_K,t>/dlr is task t's share; recompute task by task
        gl_t = torch.stack([torch.autograd.grad(
            (adapt_packed_path(th, rate, x, ys, DIMS, steps, LOSS[loss], ACT[act], first_order, True)[-1][t]
             * v[t]).sum(), rate)[0] for t in range(T)])
        ref = (gt, gl_t, torch.zeros_like(xs) if (gx is None or first_order) else gx)
    got = torch.ops.metakern.adapt_bwd(v, theta, lr, xs, ys, DIMS, steps, LOSS[loss], ACT[act], first_order, True)
    assert got[1].shape == (T, steps, theta.shape[1])
    for a, b, what in zip(got, ref, ("g_theta", "g_lr", "g_x")):
        assert_close(a, b, RTOL[torch.float64], what)


@pytest.mark.parametrize("path", ["kept", "recompute"])
def test_kept_and_recomputed_reverse_loop(request, path):
    """Second order with step weights and lr [K, P] on both paths of the fused kernel: every
    step's activations kept (small model), or recomputed in the reverse loop (activations of
    K steps above the 4 MiB per-thread budget: 512 points through widths 64 + 64, K = 3)."""
    g = seeded(request)
    dims, n = ([3, 7, 5, 2], N) if path == "kept" else ([3, 64, 64, 2], 512)
    theta, lr, xs, ys, xq, yq, w = _problem(g, dims, "mse", 3, True, "KP", "positive", n=n)
    lr = lr * 0.2  # a stable inner loop at this width
    ref = _reference_maml(theta, lr, xs, ys, xq, yq, dims, 3, "mse", "tanh", False, w)
    got = torch.ops.metakern.maml_fwd(theta, lr, xs, ys, xq, yq, dims, 3, 0, 2, False, True, True, w)
    for a, b, what in zip(got, ref, ("losses", "g_theta", "g_lr")):
        assert_close(a, b, RTOL[torch.float64], what)


@pytest.mark.parametrize("weights", ["none", "positive"])
@pytest.mark.parametrize("first_order", [False, True], ids=["so", "fo"])
def test_float32_against_float64(request, weights, first_order):
    """float32 kernels against the float64 reference: a few ulps (1.2e-7) per op over K = 3
    steps of forward, backward and HVP, plus K query passes: RTOL[float32] = 2e-4."""
    g = seeded(request)
    theta, lr, xs, ys, xq, yq, w = _problem(g, DIMS, "cross_entropy", 3, False, "KP", weights, dtype=torch.float32)
    ref = _reference_maml(theta, lr, xs, ys, xq, yq, DIMS, 3, "cross_entropy", "tanh", first_order, w)
    args = (theta, lr, xs, ys, xq, yq, DIMS, 3, 1, 2, first_order, True, True, w)
    for name, fn in (("fused", torch.ops.metakern.maml_fwd), ("composed", _C.maml_fwd_composed)):
        got = fn(*args)
        assert got[0].dtype == torch.float32
        for a, b, what in zip(got, ref, ("losses", "g_theta", "g_lr")):
            assert_close(a, b, RTOL[torch.float32], f"{name} {what}")


def _unpack_params(theta, dims):
    params, off = [], 0
    for i, o in zip(dims[:-1], dims[1:]):
        params.append(theta[off:off + o * i].view(o, i).clone())
        off += o * i
        params.append(theta[off:off + o].clone())
        off += o
    return params


@pytest.mark.parametrize("reduction", [0, 2], ids=["mean", "none"])
@pytest.mark.parametrize("lr_form", ["KP", "P"])
@pytest.mark.parametrize("weights", ["none", "positive"])
def test_maml_loss_node(request, reduction, lr_form, weights):
    """metakern._C.maml_loss with lr [P] or [K, P] and step weights: the loss and the gradients
    of params and lr (reduced over tasks to lr's shape) equal float64 autograd."""
    g = seeded(request)
    theta, lr, xs, ys, xq, yq, w = _problem(g, DIMS, "mse", 2, True, lr_form, weights)
    params = [p.requires_grad_(True) for p in _unpack_params(theta, DIMS)]
    rate = lr.clone().requires_grad_(True)
    out = _C.maml_loss(params, rate, xs, ys, xq, yq, DIMS, [False] * len(params), 2, 0, 1, False, reduction, w)
    th = theta.clone().requires_grad_(True)
    rr = lr.clone().requires_grad_(True)
    ref_losses = maml_losses_packed(th, rr, xs, ys, xq, yq, DIMS, 2, 0, 1, False, step_weights=w,
                                    per_step=lr_form == "KP")
    ref = ref_losses.mean() if reduction == 0 else ref_losses
    assert_close(out, ref.detach(), RTOL[torch.float64], "loss")
    go = torch.rand(out.shape, generator=g, dtype=torch.float64) + 0.5
    got = torch.autograd.grad(out, [rate, *params], go)
    want_th, want_lr = torch.autograd.grad(ref, (th, rr), go)
    assert got[0].shape == lr.shape
    assert_close(got[0], want_lr, RTOL[torch.float64], "d/dlr")
    assert_close(torch.cat([p.reshape(-1) for p in got[1:]]), want_th, RTOL[torch.float64], "d/dparams")


def _bad_base():
    g = torch.Generator().manual_seed(3)
    return _problem(g, DIMS, "mse", 2, True, "KP", "positive")


@pytest.mark.parametrize("impl", ["fused", "composed"])
def test_bad_input_names_the_argument(impl):
    """lr [K+1, P], step_weights of the wrong length or dtype, and steps = 0 with step
    weights: a RuntimeError naming the argument."""
    theta, lr, xs, ys, xq, yq, w = _bad_base()
    fn = torch.ops.metakern.maml_fwd if impl == "fused" else _C.maml_fwd_composed
    P = theta.shape[0]
    with pytest.raises(RuntimeError, match=r"lr \[K, P\] needs K == steps"):
        fn(theta, torch.rand(3, P, dtype=torch.float64), xs, ys, xq, yq, DIMS, 2, 0, 1, False, True, True, w)
    with pytest.raises(RuntimeError, match="step_weights must have shape"):
        fn(theta, lr, xs, ys, xq, yq, DIMS, 2, 0, 1, False, True, True, torch.rand(3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="step_weights must have the dtype of theta"):
        fn(theta, lr, xs, ys, xq, yq, DIMS, 2, 0, 1, False, True, True, w.float())
    with pytest.raises(RuntimeError, match="step_weights needs steps >= 1"):
        fn(theta, theta.new_empty(0, P), xs, ys, xq, yq, DIMS, 0, 0, 1, False, True, True,
           torch.ones(0, dtype=torch.float64))


def test_bad_input_adapt_ops_and_node():
    """adapt_fwd / adapt_bwd refuse lr [K+1, P]; the node refuses step weights that need a gradient."""
    theta, lr, xs, ys, xq, yq, w = _bad_base()
    P = theta.shape[0]
    bad = torch.rand(3, P, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"adapt_fwd: lr \[K, P\] needs K == steps"):
        torch.ops.metakern.adapt_fwd(theta, bad, xs, ys, DIMS, 2, 0, 1)
    with pytest.raises(RuntimeError, match=r"adapt_bwd: lr \[K, P\] needs K == steps"):
        torch.ops.metakern.adapt_bwd(theta.expand(T, -1).contiguous(), theta, bad, xs, ys, DIMS, 2, 0, 1, False, False)
    params = [p.requires_grad_(True) for p in _unpack_params(theta, DIMS)]
    with pytest.raises(ValueError, match="step_weights"):
        _C.maml_loss(params, lr, xs, ys, xq, yq, DIMS, [False] * 6, 2, 0, 1, False, 0, w.clone().requires_grad_(True))
