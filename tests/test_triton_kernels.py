"""Triton kernels (metakern/triton/adapt.py) against a float64 autograd ground truth.

Without a GPU the kernels run on CPU tensors under Triton's interpreter, which has to
be switched on before triton is imported (hence the two lines below, before any
metakern import). The interpreter runs programs one at a time through numpy, so the
tasks are few (T = 2..3) and the point counts small and odd; the full cross product of
options runs on one small shape, representative cases on the others.
"""
import ast
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402
import reference as R  # noqa: E402
from helpers import assert_close  # noqa: E402

from metakern.triton import adapt as tk  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)")

# Kernel (float32, fp32 accumulation, IEEE products) against the float64 reference:
# the largest error of a tensor may be RTOL times its largest reference entry (at least
# FLOOR). fp32 rounding is 6e-8 per operation; a result here passes
# through at most K = 3 inner steps of <= 4 layers, each a sum of <= 64 products, and
# a second-order backward adds an HVP per step, so the accumulated relative error is
# around 1e-6 (measured: see test_error_budget). 2e-4 leaves room for another summation
# order on a GPU, while a real bug (a missing s'' term, a wrong sign, a wrong layer
# offset) moves entries by 1e-2 or more.
RTOL = 2e-4
FLOOR = 1e-6

ACTS = {0: lambda z: z, 1: torch.relu, 2: torch.tanh, 3: torch.sigmoid}


# ----------------------------------------------------------------------------------
# float64 ground truth: unpack theta per the contract, unroll with autograd
# ----------------------------------------------------------------------------------


def n_params(dims):
    return sum(dims[l] * (dims[l - 1] + 1) for l in range(1, len(dims)))


ref_mlp = R.mlp_packed
ref_adapt = R.adapt_packed


def grads(out, inputs, v):
    gs = torch.autograd.grad(out, inputs, v, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, gs)]


# ----------------------------------------------------------------------------------
# Inputs and comparison
# ----------------------------------------------------------------------------------


def make_case(dims, T, N, loss, shared, seed=0):
    """float32 inputs on DEVICE: theta like nn.Linear's init, elementwise lr, x, y, v."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for di, do in zip(dims[:-1], dims[1:]):
        bound = di ** -0.5
        parts.append((torch.rand(T, do * di + do, generator=g) * 2 - 1) * bound)
    theta = torch.cat(parts, dim=1)
    if shared:
        theta = theta[0]
    P = n_params(dims)
    lr = 0.05 + 0.25 * torch.rand(P, generator=g)
    x = torch.randn(T, N, dims[0], generator=g)
    if loss == 0:
        y = torch.randn(T, N, dims[-1], generator=g)
    else:
        y = torch.randint(0, dims[-1], (T, N), generator=g)
    v = torch.randn(T, P, generator=g)
    return [t.contiguous().to(DEVICE) for t in (theta, lr, x, y, v)]


def f64(t, requires_grad=True):
    t = t.detach().cpu()
    if t.is_floating_point():
        return t.double().requires_grad_(requires_grad)
    return t


def check_adapt(dims, T, N, loss, act, steps, first_order, shared, need_x, seed=0, check_fwd=True, **kw):
    theta, lr, x, y, v = make_case(dims, T, N, loss, shared, seed)
    out = tk.adapt_fwd(theta, lr, x, y, dims, steps, loss, act, **kw) if check_fwd else None
    g_theta, g_lr, g_x = tk.adapt_bwd(v, theta, lr, x, y, dims, steps, loss, act, first_order, need_x, **kw)
    P = n_params(dims)
    assert g_theta.shape == (T, P) and g_lr.shape == (T, P) and g_x.shape == x.shape
    assert all(t.is_contiguous() and t.dtype == torch.float32 for t in (g_theta, g_lr, g_x))

    th, al, xx, yy = f64(theta), f64(lr), f64(x), f64(y)
    ref = ref_adapt(th, al, xx, yy, dims, steps, loss, act, first_order)
    e_theta, e_lr, e_x = grads(ref, (th, al, xx), f64(v, False))
    if check_fwd:
        assert out.shape == (T, P) and out.is_contiguous() and out.dtype == torch.float32
        assert_close(out, ref, RTOL, "theta_K", floor=FLOOR)
    # the op returns per-task gradients; the caller reduces over tasks where shared
    assert_close(g_theta.sum(0) if shared else g_theta, e_theta, RTOL, "g_theta", floor=FLOOR)
    assert_close(g_lr.sum(0), e_lr, RTOL, "g_lr", floor=FLOOR)
    if need_x:
        assert_close(g_x, e_x, RTOL, "g_x", floor=FLOOR)
    return out, g_theta, g_lr, g_x


def check_mlp(dims, T, N, act, shared, need_x, seed=0, **kw):
    theta, _, x, _, _ = make_case(dims, T, N, 0, shared, seed)
    g_out = torch.randn(T, N, dims[-1], generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE)
    out = tk.mlp_fwd(theta, x, dims, act, **kw)
    g_theta, g_x = tk.mlp_bwd(g_out, theta, x, dims, act, need_x, **kw)
    th, xx = f64(theta), f64(x)
    ref = ref_mlp(th, xx, dims, act)
    e_theta, e_x = grads(ref, (th, xx), f64(g_out, False))
    assert_close(out, ref, RTOL, "out", floor=FLOOR)
    assert_close(g_theta.sum(0) if shared else g_theta, e_theta, RTOL, "g_theta", floor=FLOOR)
    if need_x:
        assert_close(g_x, e_x, RTOL, "g_x", floor=FLOOR)


# ----------------------------------------------------------------------------------
# adapt_fwd / adapt_bwd
# ----------------------------------------------------------------------------------

SMALL = (3, 6, 5)  # the shape of the full cross product (odd widths, one hidden layer)


@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("loss", [0, 1])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [0, 1, 2, 3])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("need_x", [True, False])
def test_adapt_cross_product(act, loss, first_order, steps, shared, need_x):
    # adapt_fwd does not depend on first_order / need_x: check it once per (act, loss, steps, shared)
    check_adapt(SMALL, T=2, N=5, loss=loss, act=act, steps=steps, first_order=first_order, shared=shared,
                need_x=need_x, seed=steps, check_fwd=not first_order and need_x)


SHAPES = [(1, 40, 40, 1), (10, 1), (3, 17, 5), (5, 3, 17, 4, 2)]


@pytest.mark.parametrize("dims", SHAPES, ids=lambda d: "x".join(map(str, d)))
@pytest.mark.parametrize("act,loss,first_order,steps,shared,need_x", [
    (1, 0, False, 2, True, True),    # sine-wave MAML: relu, MSE, second order, shared theta
    (2, 1, False, 3, False, True),   # tanh, cross-entropy, per-task theta
    (3, 0, True, 2, False, False),   # sigmoid, first order
])
def test_adapt_shapes(dims, act, loss, first_order, steps, shared, need_x):
    if loss == 1 and dims[-1] == 1:
        loss = 0  # one class: the cross-entropy is constant (see test_cross_entropy_one_class)
    check_adapt(dims, T=3, N=7, loss=loss, act=act, steps=steps, first_order=first_order, shared=shared,
                need_x=need_x, seed=len(dims))


def test_cross_entropy_one_class():
    """O = 1 with cross-entropy: zero gradient, so theta_K = theta, g_theta = v, g_lr = g_x = 0."""
    dims = (10, 1)
    theta, lr, x, y, v = make_case(dims, 2, 5, 1, False)
    out, g_theta, g_lr, g_x = check_adapt(dims, T=2, N=5, loss=1, act=0, steps=2, first_order=False,
                                          shared=False, need_x=True)
    assert torch.equal(out, theta) and torch.equal(g_theta, v) and not g_lr.any() and not g_x.any()


def test_adapt_dot_path():
    """Widths >= 16 in every layer: every product is tl.dot (IEEE fp32)."""
    dims = (16, 20, 17)
    assert tk._Config(dims, 9, False, True).DOT == [True, True, False, False]
    check_adapt(dims, T=2, N=9, loss=1, act=3, steps=2, first_order=False, shared=True, need_x=True)


def test_adapt_dot_path_padded_to_16():
    """Big products with a small side: tl.dot with that side padded up to 16 (masked)."""
    dims = (3, 40, 40, 5)
    cfg = tk._Config(dims, 17, False, True)
    assert cfg.DOT == [True, True, True, False] and cfg.B[:4] == [16, 64, 64, 16] and cfg.BN == 32
    check_adapt(dims, T=2, N=17, loss=1, act=1, steps=2, first_order=False, shared=False, need_x=True)


def test_adapt_broadcast_path_wide():
    """The broadcast-and-sum products at width 40 (tl.dot switched off)."""
    check_adapt((1, 40, 40, 1), T=2, N=5, loss=0, act=2, steps=2, first_order=False, shared=False,
                need_x=True, use_dot=False)


def test_adapt_tf32_opt_in():
    """allow_tf32 is opt-in; with it the results stay within TF32 accuracy."""
    dims = (16, 20, 17)
    assert tk._Config(dims, 9, True, True).PREC == "tf32" and tk._Config(dims, 9, False, True).PREC == "ieee"
    theta, lr, x, y, v = make_case(dims, 2, 9, 0, True)
    ieee = tk.adapt_fwd(theta, lr, x, y, dims, 2, 0, 1)
    tf32 = tk.adapt_fwd(theta, lr, x, y, dims, 2, 0, 1, allow_tf32=True)
    assert_close(tf32, ieee, 2e-2, "theta_K tf32", floor=FLOOR)


def test_error_budget():
    """The float32 kernels sit far inside the tolerance (the margin RTOL is chosen for)."""
    dims = (1, 40, 40, 1)
    theta, lr, x, y, v = make_case(dims, 2, 7, 0, True)
    g_theta, g_lr, g_x = tk.adapt_bwd(v, theta, lr, x, y, dims, 3, 0, 2, False, True)
    th, al, xx, yy = f64(theta), f64(lr), f64(x), f64(y)
    ref = ref_adapt(th, al, xx, yy, dims, 3, 0, 2, False)
    e_theta, e_lr, e_x = grads(ref, (th, al, xx), f64(v, False))
    for got, exp in ((g_theta.sum(0), e_theta), (g_lr.sum(0), e_lr), (g_x, e_x)):
        rel = ((got.double().cpu() - exp).abs().max() / exp.abs().max()).item()
        assert rel < RTOL / 10, rel


def test_shared_theta_equals_expanded():
    """A shared [P] theta (stride 0 inside) gives the same bits as its [T, P] copy."""
    dims = (3, 17, 5)
    theta, lr, x, y, v = make_case(dims, 3, 5, 1, True)
    full = theta.expand(3, -1).contiguous()
    a = tk.adapt_bwd(v, theta, lr, x, y, dims, 2, 1, 2, False, True)
    b = tk.adapt_bwd(v, full, lr, x, y, dims, 2, 1, 2, False, True)
    for s, f in zip(a, b):
        assert torch.equal(s, f)
    assert torch.equal(tk.adapt_fwd(theta, lr, x, y, dims, 2, 1, 2), tk.adapt_fwd(full, lr, x, y, dims, 2, 1, 2))


def test_deterministic_and_finite():
    dims = (5, 3, 17, 4, 2)
    theta, lr, x, y, v = make_case(dims, 3, 7, 1, True, seed=3)
    first = tk.adapt_bwd(v, theta, lr, x, y, dims, 2, 1, 3, False, True)
    again = tk.adapt_bwd(v, theta, lr, x, y, dims, 2, 1, 3, False, True)
    for a, b in zip(first, again):
        assert torch.isfinite(a).all()
        assert torch.equal(a, b)
    out1 = tk.adapt_fwd(theta, lr, x, y, dims, 2, 1, 3)
    assert torch.isfinite(out1).all() and torch.equal(out1, tk.adapt_fwd(theta, lr, x, y, dims, 2, 1, 3))


def test_steps_zero_is_a_copy_and_identity():
    dims = (3, 17, 5)
    theta, lr, x, y, v = make_case(dims, 2, 5, 0, False)
    out = tk.adapt_fwd(theta, lr, x, y, dims, 0, 0, 1)
    assert torch.equal(out, theta) and out.data_ptr() != theta.data_ptr()
    g_theta, g_lr, g_x = tk.adapt_bwd(v, theta, lr, x, y, dims, 0, 0, 1, False, True)
    assert torch.equal(g_theta, v) and not g_lr.any() and not g_x.any()


def test_no_need_x_gives_zeros_and_same_theta_grads():
    dims = (3, 17, 5)
    theta, lr, x, y, v = make_case(dims, 2, 5, 0, False)
    with_x = tk.adapt_bwd(v, theta, lr, x, y, dims, 2, 0, 2, False, True)
    without = tk.adapt_bwd(v, theta, lr, x, y, dims, 2, 0, 2, False, False)
    assert torch.equal(with_x[0], without[0]) and torch.equal(with_x[1], without[1])
    assert not without[2].any()
    first = tk.adapt_bwd(v, theta, lr, x, y, dims, 2, 0, 2, True, True)
    assert not first[2].any()  # first order: g_x stays 0


def test_empty_task_batch():
    dims = (3, 17, 5)
    P = n_params(dims)
    theta = torch.zeros(P, device=DEVICE)
    lr = torch.zeros(P, device=DEVICE)
    x = torch.zeros(0, 5, 3, device=DEVICE)
    y = torch.zeros(0, 5, 5, device=DEVICE)
    assert tk.adapt_fwd(theta, lr, x, y, dims, 1, 0, 1).shape == (0, P)
    g = tk.adapt_bwd(torch.zeros(0, P, device=DEVICE), theta, lr, x, y, dims, 1, 0, 1, False, True)
    assert [t.shape for t in g] == [(0, P), (0, P), (0, 5, 3)]


# ----------------------------------------------------------------------------------
# mlp_fwd / mlp_bwd
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", SHAPES + [(16, 20, 17)], ids=lambda d: "x".join(map(str, d)))
@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("shared,need_x", [(True, True), (False, False)])
def test_mlp(dims, act, shared, need_x):
    check_mlp(dims, T=3, N=7, act=act, shared=shared, need_x=need_x, seed=act)


def test_mlp_no_need_x_zeros():
    dims = (3, 17, 5)
    theta, _, x, _, _ = make_case(dims, 2, 5, 0, True)
    _, g_x = tk.mlp_bwd(torch.ones(2, 5, 5, device=DEVICE), theta, x, dims, 1, False)
    assert not g_x.any()


def test_activation_extremes():
    """Large |z|: tanh/sigmoid saturate without overflow or NaN; tiny z: tanh keeps relative accuracy."""
    dims = (1, 3)
    theta = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], device=DEVICE)  # W = [1, 1, 1]^T, b = 0
    x = torch.tensor([-200.0, -3e-4, 0.0, 1e-5, 0.3, 200.0], device=DEVICE).view(1, 6, 1)
    for act in (2, 3):
        dims2 = (1, 3, 1)
        th2 = torch.cat([theta, torch.tensor([1.0, 0.0, 0.0, 0.0], device=DEVICE)])  # W2 = [1, 0, 0], b2 = 0
        out = tk.mlp_fwd(th2, x, dims2, act)
        ref = ACTS[act](x.double().cpu())
        assert torch.isfinite(out).all()
        rel_ok = (out.double().cpu() - ref).abs() <= 1e-6 * ref.abs() + 1e-30  # entrywise relative
        assert rel_ok.all(), (act, out.flatten().tolist(), ref.flatten().tolist())
    assert tk.mlp_fwd(theta, x, dims, 0).shape == (1, 6, 3)


# ----------------------------------------------------------------------------------
# limits and reasons
# ----------------------------------------------------------------------------------


def test_supported_limits_are_stated():
    for key in ("dtypes", "layers", "max_width", "points", "losses", "acts", "devices", "steps", "tasks"):
        assert key in tk.SUPPORTED
    assert tk.SUPPORTED["max_width"] == tk.MAX_WIDTH and tk.SUPPORTED["points"][1] == tk.MAX_POINTS


def test_why_not_accepts_valid_input():
    dims = (3, 17, 5)
    theta, lr, x, y, v = make_case(dims, 2, 5, 1, True)
    assert tk.why_not(theta, x, dims, lr=lr, y=y, grad=v, steps=3, loss=1, act=2) == []


def _reasons(**over):
    dims = over.pop("dims", (3, 17, 5))
    T, N = 2, over.pop("N", 5)
    P = n_params(dims)
    args = dict(theta=torch.zeros(P, device=DEVICE), x=torch.zeros(T, N, dims[0], device=DEVICE),
                lr=torch.zeros(P, device=DEVICE), y=torch.zeros(T, N, dims[-1], device=DEVICE), steps=1, loss=0,
                act=1)
    args.update(over)
    return " | ".join(tk.why_not(args.pop("theta"), args.pop("x"), dims, **args))


@pytest.mark.parametrize("over,expect", [
    (dict(dims=(3, 65, 5)), "above 64"),
    (dict(dims=(3, 8, 8, 8, 8, 5)), "1..4 layers"),
    (dict(dims=(5,)), "1..4 layers"),
    (dict(N=tk.MAX_POINTS + 1), f"limit of {tk.MAX_POINTS}"),
    (dict(dims=(64, 64, 64, 64, 64), N=32), "on-chip elements"),
    (dict(x=torch.zeros(2, 5, 3, dtype=torch.float64)), "float32 only"),
    (dict(theta=torch.zeros(158, dtype=torch.float16)), "float32 only"),
    (dict(loss=1), "int64"),
    (dict(loss=2), "loss=2"),
    (dict(act=4), "act=4"),
    (dict(steps=-1), "steps=-1"),
    (dict(theta=torch.zeros(7)), "theta must be [P] or [T, P]"),
    (dict(x=torch.zeros(2, 5, 4)), "dims[0]"),
])
def test_why_not_reasons(over, expect):
    for k, t in list(over.items()):
        if isinstance(t, torch.Tensor):
            over[k] = t.to(DEVICE)
    assert expect in _reasons(**over)


def test_why_not_cpu_without_interpreter(monkeypatch):
    assert n_params((3, 17, 5)) == 158
    monkeypatch.setattr(tk, "interpreted", lambda: False)
    reasons = tk.why_not(torch.zeros(158), torch.zeros(2, 5, 3), (3, 17, 5))
    assert reasons == [r for r in reasons if "TRITON_INTERPRET=1" in r] and len(reasons) == 1


def test_why_not_without_triton(monkeypatch):
    monkeypatch.setattr(tk, "HAS_TRITON", False)
    monkeypatch.setattr(tk, "IMPORT_ERROR", "ImportError: no module named triton")
    reasons = tk.why_not(torch.zeros(158, device=DEVICE), torch.zeros(2, 5, 3, device=DEVICE), (3, 17, 5))
    assert any("triton is not importable" in r for r in reasons)


def test_onchip_budget():
    assert tk.onchip_elements((1, 40, 40, 1), 10) == 64 + 4096 + 64 + 16 * (1 + 64 + 64 + 1)
    assert tk.onchip_elements((64, 64, 64, 64, 64), 16) <= tk.ONCHIP_MAX < tk.onchip_elements((64,) * 5, 32)
    for dims in SHAPES:  # the shapes this project uses fit at the largest N
        n_max = max(n for n in (1, 5, 16, 25, 64) if tk.onchip_elements(dims, n) <= tk.ONCHIP_MAX)
        assert n_max >= 64, (dims, n_max)


def test_launchers_raise_with_reasons():
    dims = (3, 80, 5)
    P = n_params(dims)
    with pytest.raises(ValueError, match="adapt_fwd cannot run: .*above 64"):
        tk.adapt_fwd(torch.zeros(P, device=DEVICE), torch.zeros(P, device=DEVICE),
                     torch.zeros(2, 5, 3, device=DEVICE), torch.zeros(2, 5, 5, device=DEVICE), dims, 1, 0, 1)


# ----------------------------------------------------------------------------------
# The compiled (non-interpreted) path, without a GPU: compile for sm_90 ahead of time
# ----------------------------------------------------------------------------------

_AOT_SCRIPT = r"""
import re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from metakern.triton import adapt as A, _kernels as K

# (dims, N, use_dot): the sine-wave MLP as the launcher compiles it (broadcast and
# tl.dot layers mixed), then with tl.dot off, where the products are broadcast sums
# only, at sizes (BN = 16, widths 1 and 64; all 16) where Triton's combine pass
# would turn a sum(a[:, :, None] * b[None, :, :], 1) into tt.dot.
for dims, N, use_dot in [((1, 40, 40, 1), 10, True), ((1, 40, 40, 1), 10, False), ((16, 16, 16), 16, False)]:
    cfg = A._Config(dims, N, False, use_dot)
    base = cfg.constexprs()
    jobs = [(K._adapt_fwd_kernel, dict(base, LOSS=1, ACT=2)),
            (K._adapt_bwd_kernel, dict(base, P=cfg.P, LOSS=1, ACT=3, SECOND=True, NEED_X=True)),
            (K._mlp_fwd_kernel, dict(base, ACT=1)),
            (K._mlp_bwd_kernel, dict(base, ACT=2, NEED_X=True))]
    for fn, consts in jobs:
        sig = {n: "constexpr" if n in consts else ("*i64" if n == "y_ptr" else "*fp32") if n.endswith("_ptr")
               else "fp32" if n == "scale" else "i32" for n in fn.arg_names}
        ck = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": cfg.num_warps, "num_stages": 1})
        assert ck.metadata.shared <= 227 * 1024, (fn.__name__, ck.metadata.shared)
        # every matrix product in the Triton IR, as (M, K, N)
        dots = [tuple(int(v) for v in m.groups()) for m in
                re.finditer(r"tt\.dot [^:\n]*: tensor<(\d+)x(\d+)xf32[^>]*> \* tensor<\d+x(\d+)xf32", ck.asm["ttir"])]
        print(dims, use_dot, fn.__name__, "shared", ck.metadata.shared, "dots", dots)
"""


def _aot_compile():
    """Run _AOT_SCRIPT without the interpreter; its lines ``dims use_dot kernel shared S dots [...]``."""
    import subprocess
    import sys

    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        pytest.skip("triton has no NVIDIA backend here")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


def test_compiles_for_sm90_and_emits_only_the_chosen_matrix_products():
    """Build the kernels for an H100 ahead of time (the interpreter never runs Triton's
    compiler), and check the matrix products in the compiled IR: tl.dot only in the
    layers the launcher chose, each at least 16 in every dimension as the launcher pads
    them. Triton's combine pass once rewrote a broadcast product with K = 1 into tt.dot,
    which gave wrong gradients on an H200 (bench/NOTES.md, v2); it must not see one."""
    lines = _aot_compile()
    assert sum("shared" in ln for ln in lines) == 12, lines
    for ln in lines:
        dims_dot, _, rest = ln.partition(" dots ")
        dots = ast.literal_eval(rest)  # a list of (M, K, N) tuples printed by the script
        if "False" in dims_dot.split(")")[1]:  # use_dot=False: broadcast sums only
            assert dots == [], ln
        else:
            assert dots and all(min(d) >= 16 for d in dots), ln


# ----------------------------------------------------------------------------------
# GPU only (compiled kernels; the interpreter cannot show these)
# ----------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("dims,N", [((1, 40, 40, 1), 10), ((64, 64, 64, 64, 64), 16), ((8, 64, 64, 64, 8), 64),
                                    ((5, 3, 17, 4, 2), tk.MAX_POINTS), ((32, 32, 32, 32, 32), tk.MAX_POINTS)],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
@pytest.mark.parametrize("loss,act", [(0, 1), (1, 2), (1, 3)])
def test_gpu_many_tasks(dims, N, loss, act):
    """Many programs at once; configurations at the width, point and on-chip limits."""
    theta, _, x, _, _ = make_case(dims, 2, N, loss, True)
    assert tk.why_not(theta, x, dims, loss=loss, act=act) == []
    check_adapt(dims, T=64, N=N, loss=loss, act=act, steps=3, first_order=False, shared=True, need_x=True)


@needs_gpu
def test_gpu_bitwise_deterministic():
    dims = (1, 40, 40, 1)
    theta, lr, x, y, v = make_case(dims, 256, 10, 0, True)
    runs = [tk.adapt_bwd(v, theta, lr, x, y, dims, 5, 0, 1, False, True) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
