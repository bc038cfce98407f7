"""CPU check of the CUDA kernels (no GPU needed): compiles csrc/cuda/adapt_kernels.cuh
as host C++ through emu_prelude.h (one std::thread per CUDA thread, __syncthreads()
as a barrier, threads serialised between barriers in identity / reversed / random
order) and compares the four ops against metakern.backends.torch_backend, and
adapt_fwd / adapt_bwd with per-step rates (lr [K, P], g_lr [T, K, P]) against float64
autograd through the unrolled loop (tests/reference.py).

Checks: values (float64 to 1e-10, float32 to 2e-4, relative to the largest
reference entry), every output element written (outputs and shared memory are
poisoned with NaN), no shared-memory write past the plan (canary), and bitwise
identical results for every thread order (a race inside a barrier phase changes
results with the order). Forced small chunks (max_nb) exercise the chunked path.

    python csrc/cuda/emu/check_emu.py            # full (about 10 minutes on 2 cores)
    python csrc/cuda/emu/check_emu.py --quick    # a few configurations
    ASan: add --asan and run under LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0
"""
import itertools
import os
import sys
import tempfile
import time

import torch
from torch.utils.cpp_extension import load

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.dirname(os.path.dirname(HERE))
ROOT = os.path.dirname(CSRC)
sys.path.insert(0, ROOT)
from metakern._contract import num_params  # noqa: E402
from metakern.backends import torch_backend as tb  # noqa: E402
from tests.reference import adapt_packed_path  # noqa: E402

QUICK = "--quick" in sys.argv
ASAN = "--asan" in sys.argv
_flags = ["-std=c++20", "-O1", "-g", "-Wall", "-Wno-unknown-pragmas", f"-I{HERE}/shim", f"-I{HERE}", f"-I{CSRC}"]
_name = "metakern_cuda_emu" + ("_asan" if ASAN else "")
_build = os.path.join(tempfile.gettempdir(), _name)
os.makedirs(_build, exist_ok=True)
emu = load(name=_name, sources=[os.path.join(HERE, "emu_ext.cpp")],
           extra_cflags=_flags + (["-fsanitize=address", "-fno-omit-frame-pointer"] if ASAN else []),
           extra_ldflags=["-fsanitize=address"] if ASAN else [], build_directory=_build, verbose=False)
LIMIT = 232448  # H100 opt-in shared memory per block (bytes)

def inputs(dims, T, N, loss, shared, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    P = num_params(dims)
    th = (torch.randn(P if shared else (T, P), generator=g, dtype=torch.float64) * 0.5).to(dtype)
    lr = (torch.rand(P, generator=g, dtype=torch.float64) * 0.3 + 0.05).to(dtype)
    x = torch.randn(T, N, dims[0], generator=g, dtype=torch.float64).to(dtype)
    if loss == 0:
        y = torch.randn(T, N, dims[-1], generator=g, dtype=torch.float64).to(dtype)
    else:
        y = torch.randint(0, dims[-1], (T, N), generator=g)
    grad = torch.randn(T, P, generator=g, dtype=torch.float64).to(dtype)
    return th, lr, x, y, grad

def close(a, b, tol, what):
    a64, b64 = a.double(), b.double()
    if torch.isnan(a64).any():
        raise AssertionError(f"{what}: NaN in kernel output (unwritten or uninitialised) at {torch.isnan(a64).nonzero()[:5].tolist()}")
    err = (a64 - b64).abs().max().item() if a.numel() else 0.0
    scale = max(1.0, b64.abs().max().item() if b.numel() else 1.0)
    if err > tol * scale:
        i = ((a64 - b64).abs() == err).nonzero()[0].tolist()
        raise AssertionError(f"{what}: max err {err:.3e} (scale {scale:.2e}) at {i}: {a64[tuple(i)].item()} vs {b64[tuple(i)].item()}")

count = 0
def check(dims, T, N, loss, act, steps, first_order, need_x, shared, dtype, max_nb, modes=(0, 1, 2), seed=0):
    global count
    th, lr, x, y, grad = inputs(dims, T, N, loss, shared, dtype, seed)
    d = list(dims)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    ref_f = tb.adapt_fwd(th.double(), lr.double(), x.double(), y if loss else y.double(), d, steps, loss, act)
    ref_b = tb.adapt_bwd(grad.double(), th.double(), lr.double(), x.double(), y if loss else y.double(), d, steps, loss, act, first_order, need_x)
    ref_mf = tb.mlp_fwd(th.double(), x.double(), d, act)
    go = torch.randn(T, N, dims[-1], dtype=torch.float64).to(dtype)
    ref_mb = tb.mlp_bwd(go.double(), th.double(), x.double(), d, act, need_x)
    outs = []
    for mode in modes:
        f = emu.adapt_fwd(th, lr, x, y, d, steps, loss, act, max_nb, mode, LIMIT)
        b = emu.adapt_bwd(grad, th, lr, x, y, d, steps, loss, act, first_order, need_x, max_nb, mode, LIMIT)
        mf = emu.mlp_fwd(th, x, d, act, max_nb, mode, LIMIT)
        mb = emu.mlp_bwd(go, th, x, d, act, need_x, max_nb, mode, LIMIT)
        tag = f"dims={dims} T={T} N={N} loss={loss} act={act} K={steps} fo={first_order} nx={need_x} shared={shared} {dtype} max_nb={max_nb} mode={mode}"
        close(f, ref_f, tol, "adapt_fwd " + tag)
        close(b[0], ref_b[0], tol, "g_theta " + tag)
        close(b[1], ref_b[1], tol, "g_lr " + tag)
        close(b[2], ref_b[2], tol, "g_x " + tag)
        close(mf, ref_mf, tol, "mlp_fwd " + tag)
        close(mb[0], ref_mb[0], tol, "mlp g_theta " + tag)
        close(mb[1], ref_mb[1], tol, "mlp g_x " + tag)
        outs.append([f, *b, mf, *mb])
    for o in outs[1:]:
        for a, b_ in zip(outs[0], o):
            assert torch.equal(a, b_), "result depends on the thread order (race): " + tag
    count += 1

def per_step_reference(th, lr, x, y, grad, d, steps, loss, act, first_order, need_x):
    """float64 autograd through the unrolled loop with lr [K, P]: theta_K [T, P] and the
    adapt_bwd outputs for v_K = grad: g_theta [T, P], g_lr [T, K, P], g_x [T, N, D]
    (g_x is zero at first order, where the inner gradients are constants, and without need_x)."""
    T, P = x.shape[0], th.shape[-1]
    th0 = th.double().expand(T, P).clone().requires_grad_(True)
    lr_t = lr.double().unsqueeze(1).expand(steps, T, P).clone().requires_grad_(True)  # lr_t[k]: [T, P]
    x64 = x.double().requires_grad_(True)
    y64 = y if loss else y.double()
    thK = adapt_packed_path(th0, lr_t, x64, y64, d, steps, loss, act, first_order, per_step=True)[-1]
    g_th, g_lr, g_x = torch.autograd.grad((thK * grad.double()).sum(), (th0, lr_t, x64), allow_unused=True)
    g_lr = torch.zeros_like(lr_t) if g_lr is None else g_lr
    g_x = g_x if (g_x is not None and need_x and not first_order) else torch.zeros_like(x64)
    return thK.detach(), g_th, g_lr.transpose(0, 1), g_x


def check_per_step(dims, T, N, loss, act, steps, first_order, need_x, shared, dtype, max_nb, modes=(0, 2), seed=0):
    """adapt_fwd / adapt_bwd with lr [K, P] (a different rate row per step) against
    per_step_reference; and, with K equal rows, the [P] kernels' results (g_lr summed over k)."""
    global count
    th, lr1, x, y, grad = inputs(dims, T, N, loss, shared, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    lr = (torch.rand(steps, lr1.numel(), generator=g, dtype=torch.float64) * 0.3 + 0.05).to(dtype)
    d = list(dims)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    ref = per_step_reference(th, lr, x, y, grad, d, steps, loss, act, first_order, need_x)
    tag = f"lr [K, P]: dims={dims} T={T} N={N} loss={loss} act={act} K={steps} fo={first_order} nx={need_x} shared={shared} {dtype} max_nb={max_nb}"
    outs = []
    for mode in modes:
        f = emu.adapt_fwd(th, lr, x, y, d, steps, loss, act, max_nb, mode, LIMIT)
        b = emu.adapt_bwd(grad, th, lr, x, y, d, steps, loss, act, first_order, need_x, max_nb, mode, LIMIT)
        assert b[1].shape == (T, steps, lr1.numel()), f"g_lr shape {tuple(b[1].shape)}: {tag}"
        for out, r, what in zip([f, *b], ref, ("adapt_fwd", "g_theta", "g_lr", "g_x")):
            close(out, r, tol, f"{what} {tag} mode={mode}")
        outs.append([f, *b])
    for o in outs[1:]:
        for a, b_ in zip(outs[0], o):
            assert torch.equal(a, b_), "result depends on the thread order (race): " + tag
    # K equal rows: the same trajectory as lr [P], and g_lr's rows sum to the [P] g_lr.
    lr_rep = lr1.unsqueeze(0).expand(steps, -1).contiguous()
    f1 = emu.adapt_fwd(th, lr1, x, y, d, steps, loss, act, max_nb, modes[0], LIMIT)
    b1 = emu.adapt_bwd(grad, th, lr1, x, y, d, steps, loss, act, first_order, need_x, max_nb, modes[0], LIMIT)
    fk = emu.adapt_fwd(th, lr_rep, x, y, d, steps, loss, act, max_nb, modes[0], LIMIT)
    bk = emu.adapt_bwd(grad, th, lr_rep, x, y, d, steps, loss, act, first_order, need_x, max_nb, modes[0], LIMIT)
    assert torch.equal(f1, fk) and torch.equal(b1[0], bk[0]) and torch.equal(b1[2], bk[2]), "equal rows differ from lr [P]: " + tag
    close(bk[1].sum(1), b1[1].double(), tol, "g_lr summed over steps vs lr [P] " + tag)
    count += 1

t0 = time.time()
if QUICK:
    check((1, 40, 40, 1), 2, 10, 0, 2, 2, False, True, False, torch.float64, 0, modes=(0, 1))
    check((3, 17, 5), 2, 7, 1, 3, 3, False, True, True, torch.float32, 3, modes=(2,))
    check((4, 2), 3, 5, 1, 1, 2, True, True, False, torch.float64, 2, modes=(2,))
    # lr [K, P]: K = 1, 2, 3, both orders, both losses, odd sizes, chunked, fp32
    check_per_step((3, 17, 5), 2, 7, 1, 2, 3, False, True, False, torch.float64, 3, modes=(0, 2))
    check_per_step((3, 17, 5), 2, 7, 0, 3, 2, True, True, True, torch.float64, 0, modes=(1,))
    check_per_step((2, 3, 4, 5, 3), 2, 9, 0, 3, 3, False, True, False, torch.float64, 4, modes=(2,))
    check_per_step((4, 2), 3, 5, 1, 1, 1, False, False, True, torch.float64, 2, modes=(2,))
    check_per_step((4, 2), 3, 5, 1, 0, 3, True, True, False, torch.float64, 0, modes=(0,))
    check_per_step((3, 17, 5), 2, 7, 1, 3, 2, False, True, True, torch.float32, 3, modes=(2,))
    print(f"{count} configurations passed in {time.time()-t0:.1f}s")
    sys.exit(0)
# the sine model, all acts/losses, both orders
for act, loss in itertools.product(range(4), range(2)):
    check((1, 40, 40, 1) if loss == 0 else (1, 40, 40, 3), 3, 10, loss, act, 2, False, True, act % 2 == 0, torch.float64, 0)
print("sine ok", time.time() - t0, flush=True)
# odd widths, deep, linear, chunking, K=0/1/3, first order, need_x off, fp32
cases = [
    ((3, 17, 5), 2, 7, 1, 2, 3, False, True, False, torch.float64, 3),
    ((3, 17, 5), 2, 7, 0, 3, 1, True, True, True, torch.float64, 2),
    ((4, 2), 3, 5, 0, 0, 2, False, True, False, torch.float64, 0),
    ((4, 2), 3, 5, 1, 1, 3, False, False, True, torch.float64, 2),
    ((2, 3, 4, 5, 3), 2, 9, 1, 2, 2, False, True, False, torch.float64, 4),
    ((2, 3, 4, 5, 3), 2, 9, 0, 3, 0, False, True, False, torch.float64, 0),
    ((5, 33, 1), 2, 40, 0, 1, 1, False, True, True, torch.float64, 7),
    ((1, 40, 40, 1), 2, 10, 0, 2, 2, False, True, False, torch.float32, 0),
    ((3, 17, 5), 2, 7, 1, 3, 2, False, True, True, torch.float32, 3),
    ((6, 64, 64, 4), 2, 20, 1, 1, 2, False, True, False, torch.float64, 0),  # P >= 4096 -> 256 threads
    ((1, 1), 2, 1, 0, 0, 2, False, True, True, torch.float64, 0),
]
for c in cases:
    check(*c, modes=(0, 2))
    print("ok", c[:5], time.time() - t0, flush=True)
# lr [K, P]: every K in {1, 2, 3} x order x loss, odd sizes; K = 0 (lr [0, P]); fp32
for i, (steps, fo, loss) in enumerate(itertools.product((1, 2, 3), (False, True), (0, 1))):
    dims = ((3, 17, 5), (2, 3, 4, 5, 3), (5, 33, 1) if loss == 0 else (5, 33, 2))[i % 3]
    check_per_step(dims, 2, 9 if i % 2 else 7, loss, i % 4, steps, fo, i % 3 != 2, i % 2 == 0, torch.float64,
                   (0, 3, 2)[i % 3])
    print("ok lr [K, P]", dims, steps, fo, loss, time.time() - t0, flush=True)
check_per_step((4, 2), 3, 5, 0, 1, 0, False, True, False, torch.float64, 0)
check_per_step((1, 40, 40, 1), 2, 10, 0, 2, 3, False, True, False, torch.float32, 0)
check_per_step((6, 64, 64, 4), 2, 20, 1, 1, 2, False, True, False, torch.float64, 0)  # 256 threads
print("ok lr [K, P] K=0, fp32, 256 threads", time.time() - t0, flush=True)
print(f"{count} configurations passed in {time.time()-t0:.1f}s")
