"""Shared test helpers: backends under test, random problems, comparisons."""
import hashlib
import os

import pytest
import torch


def backends_under_test():
    """Every backend that can run here; triton on CPU only under TRITON_INTERPRET=1."""
    import metakern.backends as B  # here, not at the top: test_cpp_ops_raw uses this module without the package

    out = []
    for name, reasons in B.available().items():
        if not reasons:
            out.append(name)
    return out


def devices_for(backend):
    if backend in ("cuda",):
        return ["cuda"]
    if backend == "triton":
        return ["cuda"] if torch.cuda.is_available() else ["cpu"]
    if backend == "cpp":
        return ["cpu"]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def primary_dtype(backend):
    """float64 where the backend supports it (tight checks), else float32 (triton)."""
    return torch.float32 if backend == "triton" else torch.float64


def seeded(request_or_str):
    """A generator seeded from the test id: fresh inputs per case, reproducible on failure."""
    s = request_or_str if isinstance(request_or_str, str) else request_or_str.node.nodeid
    seed = int(hashlib.sha256(s.encode()).hexdigest()[:8], 16) ^ int(os.environ.get("METAKERN_TEST_SEED", "0"))
    return torch.Generator().manual_seed(seed)


def make_problem(g, dims, T, N, loss, dtype=torch.float64, per_task=False, lr_kind="float", scale=0.5):
    """Random MLP parameters, data and learning rate (all CPU, float64 unless asked)."""
    params = []
    for l, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
        pt = per_task if isinstance(per_task, bool) else per_task[l]
        shapeW = (T, o, i) if pt else (o, i)
        shapeb = (T, o) if pt else (o,)
        params.append(torch.randn(shapeW, generator=g, dtype=dtype) * (scale * (2.0 / (i + o)) ** 0.5 * 2))
        params.append(torch.randn(shapeb, generator=g, dtype=dtype) * 0.1)
    x = torch.randn(T, N, dims[0], generator=g, dtype=dtype)
    if loss == "mse":
        y = torch.randn(T, N, dims[-1], generator=g, dtype=dtype)
    else:
        y = torch.randint(0, dims[-1], (T, N), generator=g)
    if lr_kind == "float":
        lr = 0.05 + 0.2 * float(torch.rand((), generator=g))
    elif lr_kind == "scalar":
        lr = (0.05 + 0.2 * torch.rand((), generator=g, dtype=dtype))
    else:
        lr = [0.05 + 0.2 * torch.rand(p.shape[1:] if p.dim() == (3 if k % 2 == 0 else 2) else p.shape,
                                      generator=g, dtype=dtype) for k, p in enumerate(params)]
    return params, x, y, lr


def assert_close(actual, expected, rtol, name="", *, floor=1e-30):
    """``max|actual - expected| <= rtol * max(max|expected|, floor)``, compared in float64.

    One rule for every comparison of the tests: the worst absolute error, relative to the
    reference's largest magnitude (a max-norm check, so small entries get no slack of their
    own). ``floor`` bounds that scale from below for references that are (close to) zero.
    Both tensors must have the same shape and be finite; dtypes may differ only in
    floating-point precision (a float32 kernel against its float64 reference). Empty
    tensors of equal shape pass. A failure names the worst index and both values there.
    """
    what = name or "tensor"
    assert actual is not None and expected is not None, f"{what}: missing {'actual' if actual is None else 'expected'}"
    assert torch.is_tensor(actual) and torch.is_tensor(expected), \
        f"{what}: expected two tensors, got {type(actual).__name__} and {type(expected).__name__}"
    if actual.dtype != expected.dtype and not (actual.is_floating_point() and expected.is_floating_point()):
        raise AssertionError(f"{what}: dtype {actual.dtype} != {expected.dtype} (only floating-point precisions "
                             f"may differ)")
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert rtol >= 0 and floor >= 0, f"{what}: rtol {rtol} and floor {floor} must be >= 0"
    actual = actual.detach().to(torch.float64).cpu()
    expected = expected.detach().to(torch.float64).cpu()
    if actual.numel() == 0:
        return
    assert torch.isfinite(actual).all(), f"{what}: non-finite values ({int((~torch.isfinite(actual)).sum())} " \
                                         f"of {actual.numel()})"
    assert torch.isfinite(expected).all(), f"{what}: non-finite reference values"
    err = (actual - expected).abs()
    ref_max = expected.abs().max().item()
    scale = max(ref_max, floor)
    worst = err.max().item()
    if worst > rtol * scale:
        idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
        raise AssertionError(f"{what}: max abs error {worst:.3e} at {idx} (got {actual[idx].item():.12g}, expected "
                             f"{expected[idx].item():.12g}); allowed {rtol:.1e} x max(max|ref| = {ref_max:.3e}, "
                             f"floor {floor:.0e}) = {rtol * scale:.3e}")


# fp64 kernels against fp64 autograd: only rounding-order differences, ~1e-15 per op.
# fp32 kernels against fp64 autograd: a few ulps (1.2e-7) per op, grown by the depth
# of the unrolled computation (K steps of forward, backward and HVP); 2e-4 is the target.
RTOL = {torch.float64: 1e-9, torch.float32: 2e-4}


# The parameter space of the conformance suites (tests/test_conformance.py, tests/test_meta_loss.py).
DIMS = [(10, 1), (1, 40, 40, 1), (3, 17, 5), (5, 3, 17, 4, 2)]
ACTS = ["relu", "tanh", "sigmoid", "identity"]
LOSSES = ["mse", "cross_entropy"]
LR_KINDS = ["float", "scalar", "per_param"]

# The interpreter runs Triton programs one at a time through numpy: the slower extra
# tests take a covering subset for it (every value of every axis appears).
SLOW = {"triton"} if not torch.cuda.is_available() else set()


def leaf(t, dtype, device):
    """A detached copy on ``device`` in ``dtype`` that requires grad."""
    return t.detach().to(dtype=dtype, device=device).requires_grad_()


def lr_leaves(lr, lr_kind, dtype, device):
    """``(lr as passed to the op, the leaves among it)`` for an ``lr`` from :func:`make_problem`."""
    if lr_kind == "float":
        return lr, []
    if lr_kind == "scalar":
        t = leaf(lr, dtype, device)
        return t, [t]
    ts = [leaf(v, dtype, device) for v in lr]
    return ts, ts


@pytest.fixture(autouse=True)
def poison_uninitialised_memory():
    """Fill every torch.empty with NaN, so an output element a kernel forgets to write fails the test.

    Autouse in the modules that import it."""
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(prev)
