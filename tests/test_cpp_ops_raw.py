"""The raw C++ CPU ops (``torch.ops.metakern.*`` from ``metakern._C``) against ground truth.

Ground truth is written here, independently of the package: a float64 MLP on the
packed layout of docs/kernels.md, K inner SGD steps through plain autograd
(``create_graph=True`` for second order, detached inner gradients for first order),
and ``torch.autograd.grad`` of ``theta_K`` for the reverse pass. The ops return
per-task gradients, so the reference replicates a shared ``theta`` / ``lr`` into
one leaf per task and compares row by row (the sum over tasks is then the shared
gradient, checked as well).

Covers: depth 1..4, odd widths (3, 17, 33, 50), every activation, both losses,
first/second order, steps 0..3, shared [P] / per-task [T, P] theta, need_x,
float64 (rtol 1e-9) and float32 (rtol 2e-4 against the float64 reference),
mlp_fwd / mlp_bwd, a bad-input table, and bitwise determinism across calls and
thread counts.
"""
import glob
import importlib
import math
import os
import zlib

import pytest
import torch

import reference as R
from helpers import assert_close

F64 = torch.float64
ACT_NAMES = {0: "identity", 1: "relu", 2: "tanh", 3: "sigmoid"}
LOSS_NAMES = {0: "mse", 1: "ce"}


# ----------------------------------------------------------------------------- loading
def _load_ops():
    """Load metakern._C; if the package itself is mid-edit, load the built library directly."""
    try:
        importlib.import_module("metakern._C")
    except ImportError as err:
        root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "metakern")
        libs = sorted(glob.glob(os.path.join(root, "_C*.so")) + glob.glob(os.path.join(root, "_C*.pyd")))
        if not libs:
            if os.environ.get("METAKERN_REQUIRE_EXT", "0") == "1":
                raise
            pytest.skip(f"metakern._C is not built ({err})", allow_module_level=True)
        torch.ops.load_library(libs[0])
    return torch.ops.metakern


ops = _load_ops()


# ----------------------------------------------------------------------------- reference
def num_params(dims):
    return sum(o * (i + 1) for i, o in zip(dims[:-1], dims[1:]))


ref_forward = R.mlp_packed
ref_adapt = R.adapt_packed


def _grad_or_zero(g, like):
    return torch.zeros_like(like) if g is None else g


# ----------------------------------------------------------------------------- inputs
def make_inputs(dims, T, N, loss, shared, seed, dtype=F64):
    """Random, well-conditioned inputs; returns float64 tensors rounded to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    P = num_params(dims)
    parts = []
    for i, o in zip(dims[:-1], dims[1:]):
        parts.append(torch.randn(o * i, generator=g, dtype=F64) * (1.2 / math.sqrt(i)))
        parts.append(torch.randn(o, generator=g, dtype=F64) * 0.2)
    base = torch.cat(parts)
    theta = base if shared else base + 0.15 * torch.randn(T, P, generator=g, dtype=F64)
    lr = torch.empty(P, dtype=F64).uniform_(0.02, 0.2, generator=g)
    x = torch.randn(T, N, dims[0], generator=g, dtype=F64)
    if loss == 0:
        y = torch.randn(T, N, dims[-1], generator=g, dtype=F64)
    else:
        y = torch.randint(0, dims[-1], (T, N), generator=g)
    v = torch.randn(T, P, generator=g, dtype=F64)
    rnd = lambda t: t.to(dtype).to(F64) if t.is_floating_point() else t  # noqa: E731
    return rnd(theta), rnd(lr), rnd(x), rnd(y), rnd(v)


def _seed(*parts):
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


# The floor of assert_close's scale in this file: a reference that is all (near) zero
# (g_lr and g_x at steps=0, for instance) is checked at the absolute level rtol * 1e-3.
FLOOR = 1e-3


# dims, N: depth 1..4, odd widths, widths across the vector-tile edges (16, 32 lanes)
CASES = [
    ((10, 1), 5),
    ((1, 40, 40, 1), 10),
    ((3, 17, 5), 1),
    ((5, 3, 17, 4, 2), 23),
    ((4, 33, 1), 13),
    ((3, 50, 2), 9),
    ((2, 4, 3, 5, 4), 12),
]
CASE_IDS = ["x".join(map(str, d)) + f"-N{n}" for d, n in CASES]
T_TASKS = 3


# ----------------------------------------------------------------------------- adapt
def _check_adapt(dims, N, act, loss, steps, first_order, shared, dtype, rtol):
    T = T_TASKS
    seed = _seed(dims, N, act, loss, steps, first_order, shared, str(dtype))
    theta, lr, x, y, v = make_inputs(dims, T, N, loss, shared, seed, dtype)
    P = num_params(dims)

    # reference: one leaf per task for theta and lr (per-task gradients), x a leaf
    th_leaf = (theta.expand(T, P) if shared else theta).clone().requires_grad_(True)
    lr_leaf = lr.expand(T, P).clone().requires_grad_(True)
    x_leaf = x.clone().requires_grad_(True)
    theta_K = ref_adapt(th_leaf, lr_leaf, x_leaf, y, dims, steps, loss, act, first_order)
    if theta_K.requires_grad:
        g_th, g_lr, g_x = torch.autograd.grad(theta_K, (th_leaf, lr_leaf, x_leaf), grad_outputs=v,
                                              allow_unused=True)
    else:  # pragma: no cover - theta_K always depends on theta_leaf
        g_th = g_lr = g_x = None
    g_th, g_lr, g_x = (_grad_or_zero(g, ref) for g, ref in ((g_th, th_leaf), (g_lr, lr_leaf), (g_x, x_leaf)))

    cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    args = (cast(theta), cast(lr), cast(x), cast(y), list(dims), steps, loss, act)
    out = ops.adapt_fwd(*args)
    assert out.dtype == dtype and out.is_contiguous() and out.shape == (T, P)
    assert_close(out, theta_K.detach(), rtol, "adapt_fwd theta_K", floor=FLOOR)

    res = {}
    for need_x in (True, False):
        r = ops.adapt_bwd(cast(v), *args[:5], steps, loss, act, first_order, need_x)
        assert len(r) == 3
        for t, shape in zip(r, ((T, P), (T, P), (T, N, dims[0]))):
            assert t.dtype == dtype and t.is_contiguous() and tuple(t.shape) == shape
        res[need_x] = r
    gt, gl, gx = res[True]
    assert_close(gt, g_th, rtol, "adapt_bwd g_theta (per task)", floor=FLOOR)
    assert_close(gl, g_lr, rtol, "adapt_bwd g_lr (per task)", floor=FLOOR)
    assert_close(gx, g_x, rtol, "adapt_bwd g_x", floor=FLOOR)
    # shared parameters: the Python layer sums the per-task rows
    if shared:
        assert_close(gt.sum(0), g_th.sum(0), rtol, "adapt_bwd g_theta summed over tasks", floor=FLOOR)
    assert_close(gl.sum(0), g_lr.sum(0), rtol, "adapt_bwd g_lr summed over tasks", floor=FLOOR)
    # need_x=False: same g_theta / g_lr bits, g_x returned as zeros
    gt2, gl2, gx2 = res[False]
    assert torch.equal(gt, gt2) and torch.equal(gl, gl2)
    assert torch.count_nonzero(gx2) == 0


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_task"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [0, 1, 2, 3], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("loss", [0, 1], ids=LOSS_NAMES.get)
@pytest.mark.parametrize("act", [0, 1, 2, 3], ids=ACT_NAMES.get)
@pytest.mark.parametrize("dims,N", CASES, ids=CASE_IDS)
def test_adapt_float64(dims, N, act, loss, steps, first_order, shared):
    _check_adapt(dims, N, act, loss, steps, first_order, shared, F64, 1e-9)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_task"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 3], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("loss", [0, 1], ids=LOSS_NAMES.get)
@pytest.mark.parametrize("act", [0, 1, 2, 3], ids=ACT_NAMES.get)
@pytest.mark.parametrize("dims,N", CASES, ids=CASE_IDS)
def test_adapt_float32(dims, N, act, loss, steps, first_order, shared):
    _check_adapt(dims, N, act, loss, steps, first_order, shared, torch.float32, 2e-4)


@pytest.mark.parametrize("act,loss", [(2, 1), (1, 0)], ids=["tanh-ce", "relu-mse"])
def test_adapt_wide(act, loss):
    """Widths past several vector tiles (130 = 8*16+2, 67) and N past several row tiles."""
    _check_adapt((8, 130, 67, 10), 41, act, loss, 2, False, True, F64, 1e-9)
    _check_adapt((8, 130, 67, 10), 41, act, loss, 2, False, False, torch.float32, 2e-4)


def test_adapt_steps0_is_a_copy():
    dims = [3, 5, 2]
    theta, lr, x, y, _ = make_inputs(dims, 4, 6, 0, False, 1)
    out = ops.adapt_fwd(theta, lr, x, y, dims, 0, 0, 1)
    assert torch.equal(out, theta) and out.data_ptr() != theta.data_ptr()
    shared = theta[0].clone()
    out = ops.adapt_fwd(shared, lr, x, y, dims, 0, 0, 1)
    assert out.shape == (4, shared.numel()) and torch.equal(out, shared.expand(4, -1))


def test_no_tasks():
    dims = [2, 3, 1]
    P = num_params(dims)
    theta, lr = torch.zeros(P, dtype=F64), torch.zeros(P, dtype=F64)
    x, y = torch.zeros(0, 4, 2, dtype=F64), torch.zeros(0, 4, 1, dtype=F64)
    assert ops.adapt_fwd(theta, lr, x, y, dims, 2, 0, 1).shape == (0, P)
    r = ops.adapt_bwd(torch.zeros(0, P, dtype=F64), theta, lr, x, y, dims, 2, 0, 1, False, True)
    assert [tuple(t.shape) for t in r] == [(0, P), (0, P), (0, 4, 2)]
    assert ops.mlp_fwd(theta, x, dims, 1).shape == (0, 4, 1)


# ----------------------------------------------------------------------------- mlp
def _check_mlp(dims, N, act, shared, dtype, rtol):
    T = T_TASKS
    theta, _, x, _, _ = make_inputs(dims, T, N, 0, shared, _seed("mlp", dims, N, act, shared, str(dtype)), dtype)
    P = num_params(dims)
    g = torch.Generator().manual_seed(_seed("gout", dims, N))
    gout = torch.randn(T, N, dims[-1], generator=g, dtype=F64).to(dtype).to(F64)

    th_leaf = (theta.expand(T, P) if shared else theta).clone().requires_grad_(True)
    x_leaf = x.clone().requires_grad_(True)
    out_ref = ref_forward(th_leaf, x_leaf, dims, act)
    g_th, g_x = torch.autograd.grad(out_ref, (th_leaf, x_leaf), grad_outputs=gout)

    cast = lambda t: t.to(dtype)  # noqa: E731
    out = ops.mlp_fwd(cast(theta), cast(x), list(dims), act)
    assert out.dtype == dtype and out.is_contiguous()
    assert_close(out, out_ref.detach(), rtol, "mlp_fwd", floor=FLOOR)
    gt, gx = ops.mlp_bwd(cast(gout), cast(theta), cast(x), list(dims), act, True)
    assert_close(gt, g_th, rtol, "mlp_bwd g_theta (per task)", floor=FLOOR)
    assert_close(gx, g_x, rtol, "mlp_bwd g_x", floor=FLOOR)
    if shared:
        assert_close(gt.sum(0), g_th.sum(0), rtol, "mlp_bwd g_theta summed", floor=FLOOR)
    gt2, gx2 = ops.mlp_bwd(cast(gout), cast(theta), cast(x), list(dims), act, False)
    assert torch.equal(gt, gt2) and torch.count_nonzero(gx2) == 0
    assert gt2.shape == (T, P) and gx2.shape == (T, N, dims[0])


@pytest.mark.parametrize("dtype,rtol", [(F64, 1e-10), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_task"])
@pytest.mark.parametrize("act", [0, 1, 2, 3], ids=ACT_NAMES.get)
@pytest.mark.parametrize("dims,N", CASES + [((7, 70, 19), 31)], ids=CASE_IDS + ["7x70x19-N31"])
def test_mlp(dims, N, act, shared, dtype, rtol):
    _check_mlp(dims, N, act, shared, dtype, rtol)


def test_mlp_zero_points():
    dims = [2, 3, 4]
    theta = torch.randn(num_params(dims), dtype=F64)
    x = torch.zeros(2, 0, 2, dtype=F64)
    assert ops.mlp_fwd(theta, x, dims, 2).shape == (2, 0, 4)
    gt, gx = ops.mlp_bwd(torch.zeros(2, 0, 4, dtype=F64), theta, x, dims, 2, True)
    assert gt.shape == (2, num_params(dims)) and torch.count_nonzero(gt) == 0 and gx.shape == (2, 0, 2)


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_deterministic_across_calls_and_threads(dtype):
    dims, T, N = [1, 40, 40, 1], 37, 10
    theta, lr, x, y, v = (t.to(dtype) for t in make_inputs(dims, T, N, 0, True, 7))
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (2, 2, 1, 3):
            torch.set_num_threads(threads)
            fwd = ops.adapt_fwd(theta, lr, x, y, dims, 3, 0, 2)
            bwd = ops.adapt_bwd(v, theta, lr, x, y, dims, 3, 0, 2, False, True)
            mlp = ops.mlp_bwd(v[:, :1].expand(T, N).unsqueeze(-1).contiguous(), fwd, x, dims, 2, True)
            runs.append((fwd, *bwd, *mlp))
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------- bad input
def _good(loss=0, dtype=F64):
    dims = [3, 5, 2]
    theta, lr, x, y, v = make_inputs(dims, 2, 4, loss, False, 3)
    c = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
    return dict(theta=c(theta), lr=c(lr), x=c(x), y=c(y), v=c(v), dims=dims)


def _fwd(g, steps=1, loss=0, act=1, **kw):
    a = {**g, **kw}
    return ops.adapt_fwd(a["theta"], a["lr"], a["x"], a["y"], a["dims"], steps, loss, act)


def _bwd(g, steps=1, loss=0, act=1, **kw):
    a = {**g, **kw}
    return ops.adapt_bwd(a["v"], a["theta"], a["lr"], a["x"], a["y"], a["dims"], steps, loss, act, False, True)


def _mlp_fwd(g, act=1, **kw):
    a = {**g, **kw}
    return ops.mlp_fwd(a["theta"], a["x"], a["dims"], act)


def _mlp_bwd(g, act=1, **kw):
    a = {**g, **kw}
    gout = a.get("gout", torch.zeros(2, 4, 2, dtype=a["theta"].dtype))
    return ops.mlp_bwd(gout, a["theta"], a["x"], a["dims"], act, True)


_g, _gce = _good(), _good(loss=1)
BAD = [
    ("theta float16", lambda: _fwd(_g, theta=_g["theta"].half()), "theta"),
    ("theta int64", lambda: _fwd(_g, theta=_g["theta"].long()), "theta"),
    ("lr dtype mismatch", lambda: _fwd(_g, lr=_g["lr"].float()), "lr"),
    ("x dtype mismatch", lambda: _fwd(_g, x=_g["x"].float()), "x"),
    ("y float for cross-entropy", lambda: _fwd(_gce, loss=1, y=_gce["y"].double()), "y"),
    ("y int64 for mse", lambda: _fwd(_g, y=torch.zeros(2, 4, 2, dtype=torch.long)), "y"),
    ("y int32 for cross-entropy", lambda: _fwd(_gce, loss=1, y=_gce["y"].int()), "y"),
    ("y wrong shape (mse)", lambda: _fwd(_g, y=_g["y"][:, :3].contiguous()), "y"),
    ("y wrong shape (ce)", lambda: _fwd(_gce, loss=1, y=_gce["y"].unsqueeze(-1)), "y"),
    ("class index -1", lambda: _fwd(_gce, loss=1, y=_gce["y"].clone().index_fill_(1, torch.tensor([2]), -1)), "y"),
    ("class index == O", lambda: _fwd(_gce, loss=1, y=_gce["y"].clone().fill_(2)), "y"),
    ("class index huge", lambda: _bwd(_gce, loss=1, y=_gce["y"].clone().fill_(10**15)), "y"),
    ("class index negative huge", lambda: _bwd(_gce, loss=1, y=_gce["y"].clone().fill_(-(10**15))), "y"),
    ("dims P mismatch", lambda: _fwd(_g, dims=[3, 6, 2]), "theta"),
    ("dims D mismatch", lambda: _fwd(_g, dims=[4, 5, 2]), "x"),
    ("dims O mismatch (y)", lambda: _fwd(_g, dims=[3, 5, 2, 3], theta=torch.zeros(2, 41, dtype=F64),
                                          lr=torch.zeros(41, dtype=F64)), "y"),
    ("dims too short", lambda: _fwd(_g, dims=[3]), "dims"),
    ("dims zero width", lambda: _fwd(_g, dims=[3, 0, 2]), "dims"),
    ("dims negative width", lambda: _mlp_fwd(_g, dims=[3, -5, 2]), "dims"),
    ("theta non-contiguous", lambda: _fwd(_g, theta=torch.zeros(37, 2, dtype=F64).t()), "theta"),
    ("theta [T, P] wrong T", lambda: _fwd(_g, theta=torch.zeros(3, 37, dtype=F64)), "theta"),
    ("theta 3-d", lambda: _fwd(_g, theta=torch.zeros(2, 1, 37, dtype=F64)), "theta"),
    ("lr non-contiguous", lambda: _fwd(_g, lr=torch.zeros(37, 2, dtype=F64)[:, 0]), "lr"),
    ("lr wrong shape", lambda: _fwd(_g, lr=torch.zeros(36, dtype=F64)), "lr"),
    ("x non-contiguous", lambda: _fwd(_g, x=torch.zeros(2, 3, 4, dtype=F64).transpose(1, 2)), "x"),
    ("x 2-d", lambda: _fwd(_g, x=_g["x"][0]), "x"),
    ("x no points", lambda: _fwd(_g, x=torch.zeros(2, 0, 3, dtype=F64), y=torch.zeros(2, 0, 2, dtype=F64)), "x"),
    ("y non-contiguous", lambda: _fwd(_g, y=torch.zeros(2, 2, 4, dtype=F64).transpose(1, 2)), "y"),
    ("act 4", lambda: _fwd(_g, act=4), "act"),
    ("act -1", lambda: _bwd(_g, act=-1), "act"),
    ("loss 2", lambda: _fwd(_g, loss=2), "loss"),
    ("loss -1", lambda: _bwd(_g, loss=-1), "loss"),
    ("steps -1", lambda: _fwd(_g, steps=-1), "steps"),
    ("grad wrong shape", lambda: _bwd(_g, v=_g["v"][:1].contiguous()), "grad"),
    ("grad dtype", lambda: _bwd(_g, v=_g["v"].float()), "grad"),
    ("grad non-contiguous", lambda: _bwd(_g, v=torch.zeros(37, 2, dtype=F64).t()), "grad"),
    ("mlp_fwd act 7", lambda: _mlp_fwd(_g, act=7), "act"),
    ("mlp_fwd theta dtype", lambda: _mlp_fwd(_g, theta=_g["theta"].float()), "x"),
    ("mlp_fwd dims mismatch", lambda: _mlp_fwd(_g, dims=[3, 4, 2]), "theta"),
    ("mlp_bwd grad_out shape", lambda: _mlp_bwd(_g, gout=torch.zeros(2, 4, 3, dtype=F64)), "grad_out"),
    ("mlp_bwd grad_out dtype", lambda: _mlp_bwd(_g, gout=torch.zeros(2, 4, 2)), "grad_out"),
    ("mlp_bwd theta non-contiguous", lambda: _mlp_bwd(_g, theta=torch.zeros(37, 2, dtype=F64).t()), "theta"),
]


@pytest.mark.parametrize("call,name", [(c, n) for _, c, n in BAD], ids=[d for d, _, _ in BAD])
def test_bad_input_raises(call, name):
    with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
        call()


def test_class_index_checked_before_use():
    g = _good(loss=1)
    y = g["y"].clone()
    y[1, 3] = 2  # O = 2
    with pytest.raises(RuntimeError, match=r"y holds class index 2 \(task 1, point 3\)"):
        _fwd(g, loss=1, y=y)


# ----------------------------------------------------------------------------- misc
def test_schema():
    s = {name: str(getattr(ops, name).default._schema) for name in ("adapt_fwd", "adapt_bwd", "mlp_fwd", "mlp_bwd")}
    assert s["adapt_fwd"] == ("metakern::adapt_fwd(Tensor theta, Tensor lr, Tensor x, Tensor y, int[] dims, "
                              "int steps, int loss, int act) -> Tensor")
    assert s["adapt_bwd"] == ("metakern::adapt_bwd(Tensor grad, Tensor theta, Tensor lr, Tensor x, Tensor y, "
                              "int[] dims, int steps, int loss, int act, bool first_order, bool need_x) "
                              "-> (Tensor, Tensor, Tensor)")
    assert s["mlp_fwd"] == "metakern::mlp_fwd(Tensor theta, Tensor x, int[] dims, int act) -> Tensor"
    assert s["mlp_bwd"] == ("metakern::mlp_bwd(Tensor grad_out, Tensor theta, Tensor x, int[] dims, int act, "
                            "bool need_x) -> (Tensor, Tensor)")


def test_opcheck_schema():
    g = _good()
    args = (g["theta"], g["lr"], g["x"], g["y"], g["dims"], 2, 0, 2)
    torch.library.opcheck(ops.adapt_fwd.default, args, test_utils=("test_schema",))
    torch.library.opcheck(ops.adapt_bwd.default, (g["v"],) + args + (False, True), test_utils=("test_schema",))


def test_inputs_not_modified():
    g = _good(loss=1)
    before = {k: v.clone() for k, v in g.items() if torch.is_tensor(v)}
    _fwd(g, steps=2, loss=1, act=3)
    _bwd(g, steps=2, loss=1, act=3)
    for k, v in before.items():
        assert torch.equal(g[k], v), k


def test_build_info():
    try:
        mod = importlib.import_module("metakern._C")
    except ImportError:
        pytest.skip("metakern package not importable")
    info = mod.build_info()
    assert isinstance(info, dict)
    for key in ("compiler", "openmp", "omp_max_threads", "num_threads", "cuda_kernels", "simd"):
        assert key in info, key
    assert isinstance(info["cuda_kernels"], bool)
