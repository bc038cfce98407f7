"""Triton backend of the kernel contract (docs/kernels.md): launchers, limits, reasons.

    adapt_fwd(theta, lr, x, y, dims, steps, loss, act) -> theta_K [T, P]
    adapt_bwd(grad, theta, lr, x, y, dims, steps, loss, act, first_order, need_x)
        -> (g_theta [T, P], g_lr [T, P], g_x [T, N, D])
    mlp_fwd(theta, x, dims, act) -> out [T, N, O]
    mlp_bwd(grad_out, theta, x, dims, act, need_x) -> (g_theta [T, P], g_x [T, N, D])

Integers: loss 0 = MSE, 1 = cross-entropy; act 0 = identity, 1 = relu, 2 = tanh,
3 = sigmoid. The launchers are plain functions (check, allocate, launch one kernel
with grid ``(T,)``); the kernels and their math live in ``_kernels.py``. Every output
is per task and contiguous; the caller sums over tasks where theta/lr were shared.

``SUPPORTED`` states every limit of the kernels; ``limits(...)`` lists the reasons a
model and batch size cannot run here (the backend asks it), ``why_not(...)`` those of
a given call with its tensors (the public launchers check it; the backend binds the
``*_unchecked`` launchers, after validation). On a machine without a GPU
the kernels run on CPU tensors under Triton's interpreter, which must be enabled with
``TRITON_INTERPRET=1`` before this module (and triton) is imported.
"""
import operator

import torch

from .._contract import LOSSES, num_params

try:
    import triton

    from . import _kernels

    HAS_TRITON = True
    IMPORT_ERROR = None
except Exception as exc:  # ImportError, or a broken triton install
    triton = None
    _kernels = None
    HAS_TRITON = False
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def interpreted():
    """True when the kernels were created by Triton's interpreter (TRITON_INTERPRET=1 at import)."""
    return HAS_TRITON and type(_kernels._adapt_fwd_kernel).__name__ == "InterpretedFunction"


MAX_WIDTH = 64
MAX_POINTS = 128
MAX_LAYERS = 4
# Largest [BN, B_l, B_{l-1}] block multiplied by broadcast-and-sum; above it, tl.dot.
BROADCAST_MAX = 4096
# On-chip budget of one program, in padded fp32 elements: weights sum_l B_l * B_{l-1}
# plus activations BN * sum_l B_l. The second-order backward, the largest kernel,
# needs about 8.5 bytes of shared memory per weight element and 6.5 per activation
# element for layout conversions, so configurations at the budget's edge stay under
# the 227 KB of shared memory an H100/H200 block can have (measurements: bench/NOTES.md,
# "Notes moved from code comments (triton)"). Where a compiled kernel does not fit a
# GPU, the launchers raise ValueError.
ONCHIP_MAX = 24576

SUPPORTED = {
    # Every limit of the Triton kernels; why_not() checks each one.
    "dtypes": (torch.float32,),  # fp32 in, fp32 out, fp32 accumulation; no float64/bf16/fp16
    "label_dtype": torch.int64,  # cross-entropy targets [T, N] (range [0, O) is NOT checked by the kernel)
    "layers": (1, MAX_LAYERS),  # len(dims) in 2..5
    "max_width": MAX_WIDTH,  # every d_l (input, hidden, output); padded to a power of two inside
    "min_width": 1,
    "points": (1, MAX_POINTS),  # N per task; padded to a power of two inside (16 where tl.dot is used)
    "onchip_elements": ONCHIP_MAX,  # sum_l B_l*B_{l-1} + BN*sum_l B_l over padded sizes (see onchip_elements())
    "tasks": (0, 2**31 - 1),  # T = grid size
    "steps": "K >= 0; the backward allocates a float32 scratch of T*K*P (theta_0..theta_{K-1})",
    "losses": (0, 1),  # 0 MSE, 1 cross-entropy
    "acts": (0, 1, 2, 3),  # identity, relu, tanh, sigmoid
    "devices": "CUDA tensors; CPU tensors only under TRITON_INTERPRET=1 (set before import)",
    "layout": "contiguous inputs expected (non-contiguous ones are copied)",
    "precision": "IEEE fp32 products by default; TF32 tl.dot only with allow_tf32=True",
}

def _next_pow2(n):
    return 1 << (int(n) - 1).bit_length() if n > 1 else 1


def onchip_elements(dims, N):
    """Padded weight + activation elements one program works on (checked against ONCHIP_MAX)."""
    cfg = _Config(dims, N, False, True)
    B = cfg.B[:cfg.L + 1]
    return sum(B[l] * B[l - 1] for l in range(1, len(B))) + cfg.BN * sum(B)


def _device_reason(device_type):
    """Why the kernels cannot run on this device type, or None."""
    if device_type == "cuda":
        return None
    if device_type == "cpu":
        if HAS_TRITON and not interpreted():
            return ("CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing "
                    "metakern.triton (or use a CUDA device)")
        return None
    return f"device {device_type} is not supported by the triton kernels (CUDA only)"


def limits(device_type, dtype, dims, points):
    """Reasons the kernels cannot run a model of widths ``dims`` on ``points`` points per
    task, ``dtype`` tensors on ``device_type`` (empty list: they can). Every limit of
    ``SUPPORTED`` that does not need the tensors themselves; ``dtype`` or
    ``device_type`` ``None`` skips that check (:func:`why_not` checks each tensor's)."""
    reasons = []
    if not HAS_TRITON:
        reasons.append(f"triton is not importable ({IMPORT_ERROR})")
    if device_type is not None:
        why = _device_reason(device_type)
        if why:
            reasons.append(why)
    if dtype is not None and dtype not in SUPPORTED["dtypes"]:
        reasons.append(f"dtype {dtype}: the triton kernels support float32 only")
    L = len(dims) - 1
    if not 1 <= L <= MAX_LAYERS:
        reasons.append(f"dims has {len(dims)} entries ({L} layers); the triton kernels support 1..{MAX_LAYERS} "
                       f"layers (len(dims) in 2..{MAX_LAYERS + 1})")
    if any(d < 1 for d in dims):
        reasons.append(f"dims {list(dims)} has a width below 1")
    if any(d > MAX_WIDTH for d in dims):
        reasons.append(f"dims {list(dims)} has a width above {MAX_WIDTH}, the triton kernels' limit "
                       f"(weights and activations are kept in registers)")
    if points < 1:
        reasons.append("N = 0 points per task; the losses need N >= 1")
    if points > MAX_POINTS:
        reasons.append(f"N = {points} points per task is above the triton kernels' limit of {MAX_POINTS}")
    if 1 <= L <= MAX_LAYERS and all(1 <= d <= MAX_WIDTH for d in dims) and 1 <= points <= MAX_POINTS:
        size = onchip_elements(dims, points)
        if size > ONCHIP_MAX:
            reasons.append(f"dims {list(dims)} with N = {points} points need {size} padded on-chip elements per "
                           f"task, above the triton kernels' budget of {ONCHIP_MAX} (fewer points or narrower "
                           "layers)")
    return reasons


def why_not(theta, x, dims, lr=None, y=None, grad=None, grad_out=None, steps=0, loss=0, act=0):
    """Reasons the Triton kernels cannot run this call (empty list: they can).

    theta [P] or [T, P], x [T, N, D], dims; optionally lr [P], y (MSE [T, N, O] float,
    CE [T, N] int64), grad [T, P] (adapt_bwd), grad_out [T, N, O] (mlp_bwd), steps,
    loss and act as the launchers take them. :func:`limits` plus the checks of the
    tensors themselves.
    """
    reasons = []
    try:
        dims = [int(d) for d in dims]
    except (TypeError, ValueError):
        return [f"dims must be a sequence of ints, got {dims!r}"]
    if loss not in (0, 1):
        reasons.append(f"loss={loss!r}: must be 0 (mse) or 1 (cross-entropy)")
    if act not in (0, 1, 2, 3):
        reasons.append(f"act={act!r}: must be 0 (identity), 1 (relu), 2 (tanh) or 3 (sigmoid)")
    try:
        steps_ok = operator.index(steps) >= 0
    except TypeError:
        steps_ok = False
    if not steps_ok:
        reasons.append(f"steps={steps!r}: must be an int >= 0")

    # tensors
    named = [("theta", theta), ("x", x), ("lr", lr), ("grad", grad), ("grad_out", grad_out)]
    if y is not None:
        named.append(("y", y))
    for name, t in named:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            reasons.append(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            continue
        if name == "y" and loss == 1:
            if t.dtype != torch.int64:
                reasons.append(f"y has dtype {t.dtype}; cross-entropy targets must be int64 class indices")
        elif t.dtype not in SUPPORTED["dtypes"]:
            reasons.append(f"{name} has dtype {t.dtype}; the triton kernels support float32 only")
    tensors = [t for _, t in named if isinstance(t, torch.Tensor)]
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        reasons.append(f"tensors are on different devices: {sorted(str(d) for d in devices)}")
    for why in sorted({_device_reason(dev.type) for dev in devices} - {None}):
        reasons.append(why)

    # shapes
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        reasons.append(f"x must be [T, N, D], got shape {tuple(getattr(x, 'shape', ()))}")
        return limits(None, None, dims, 1) + reasons
    T, N, D = x.shape
    reasons = limits(None, None, dims, N) + reasons
    if dims and D != dims[0]:
        reasons.append(f"x has {D} features but dims[0] = {dims[0]}")
    if T > SUPPORTED["tasks"][1]:
        reasons.append(f"T = {T} tasks is above the grid limit {SUPPORTED['tasks'][1]}")
    P = num_params(dims) if dims else 0
    O = dims[-1] if dims else 0
    if isinstance(theta, torch.Tensor):
        if not (tuple(theta.shape) == (P,) or tuple(theta.shape) == (T, P)):
            reasons.append(f"theta must be [P] or [T, P] with P = {P}, T = {T}; got {tuple(theta.shape)}")
    if isinstance(lr, torch.Tensor) and tuple(lr.shape) != (P,):
        reasons.append(f"lr must be [P] = [{P}], got {tuple(lr.shape)}")
    if isinstance(grad, torch.Tensor) and tuple(grad.shape) != (T, P):
        reasons.append(f"grad must be [T, P] = [{T}, {P}], got {tuple(grad.shape)}")
    if isinstance(grad_out, torch.Tensor) and tuple(grad_out.shape) != (T, N, O):
        reasons.append(f"grad_out must be [T, N, O] = [{T}, {N}, {O}], got {tuple(grad_out.shape)}")
    if isinstance(y, torch.Tensor):
        want = (T, N, O) if loss == 0 else (T, N)
        if tuple(y.shape) != want:
            name = {v: k for k, v in LOSSES.items()}.get(loss, "this loss")
            reasons.append(f"y must be {list(want)} for {name}, got {tuple(y.shape)}")
    return reasons


def _check(reasons, op):
    if reasons:
        raise ValueError(f"metakern.triton.{op} cannot run: " + "; ".join(reasons))


class _Config:
    """Compile-time configuration of one architecture (kernel constexprs)."""

    def __init__(self, dims, N, allow_tf32, use_dot):
        dims = [int(d) for d in dims]
        self.L = len(dims) - 1
        self.P = num_params(dims)
        self.D = dims + [1] * (MAX_LAYERS + 1 - len(dims))
        B = [_next_pow2(d) for d in self.D]
        BN = _next_pow2(N)
        # Layer l's three products are [BN, B_{l-1}] x [B_{l-1}, B_l] and transposes.
        # Small ones: broadcast-multiply + tl.sum over a [BN, B_l, B_{l-1}] block (exact
        # fp32, no padding). Larger ones: tl.dot, which needs every block dim >= 16, so
        # its dims are padded up to 16 (the padding is masked); a big 3-D broadcast would
        # cost registers and, compiled, minutes of compile time. Padding a width can
        # push the neighbouring layer over the threshold: repeat until stable.
        dot = [False] * MAX_LAYERS
        changed = True
        while changed:
            changed = False
            for l in range(1, self.L + 1):
                wants = use_dot and (dot[l - 1] or BN * B[l - 1] * B[l] > BROADCAST_MAX
                                     or min(BN, B[l - 1], B[l]) >= 16)
                if wants and not dot[l - 1]:
                    dot[l - 1] = changed = True
                    B[l - 1], B[l], BN = max(B[l - 1], 16), max(B[l], 16), max(BN, 16)
        self.B, self.BN, self.DOT = B, BN, dot
        self.DO = dims[-1]
        self.BO = self.B[self.L]
        self.PREC = "tf32" if allow_tf32 else "ieee"
        # One program holds all of a task's state; 8 warps once the largest tile
        # ([BN, B] activations or [B_l, B_{l-1}] weights) reaches 64x64 elements.
        tile = max([self.B[l] * self.B[l - 1] for l in range(1, self.L + 1)] +
                   [BN * self.B[l] for l in range(self.L + 1)])
        self.num_warps = 8 if tile >= 4096 else 4

    def constexprs(self):
        D, B = self.D, self.B
        return dict(D0=D[0], D1=D[1], D2=D[2], D3=D[3], D4=D[4], B0=B[0], B1=B[1], B2=B[2], B3=B[3], B4=B[4],
                    BN=self.BN, DO=self.DO, BO=self.BO, L=self.L, DOT1=self.DOT[0], DOT2=self.DOT[1],
                    DOT3=self.DOT[2], DOT4=self.DOT[3], PREC=self.PREC)


def _launch(kernel, T, op, *args, **meta):
    """kernel[(T,)](*args, **meta) with num_stages=1; a kernel too big for this GPU raises ValueError.

    num_stages=1: the loads inside the K-step loops (lr, theta_k from the scratch) are
    not software-pipelined; pipelining multi-buffers them in shared memory (a [64, 64]
    weight, 2-3 stages, per layer overflows the 227 KB of an H100) and, compiled for
    sm_90, made ptxas fall back to 32 registers and spill kilobytes.
    """
    try:
        kernel[(T,)](*args, num_stages=1, **meta)
    except Exception as exc:
        if type(exc).__name__ == "OutOfResources":  # triton.runtime.errors.OutOfResources
            raise ValueError(f"metakern.triton.{op} cannot run: the compiled kernel does not fit this GPU ({exc}); "
                             f"use fewer points or narrower layers") from exc
        raise


def _loss_scale(loss, N, O):
    return 2.0 / (N * O) if loss == 0 else 1.0 / N


def _theta_stride(theta):
    return 0 if theta.dim() == 1 else theta.stride(0)


def _y_strides(y, loss):
    return (y.stride(0), y.stride(1))


def adapt_fwd_unchecked(theta, lr, x, y, dims, steps, loss, act, *, allow_tf32=False, use_dot=True):
    """theta_K [T, P] after `steps` inner SGD steps per task (one launch, one program per task)."""
    theta, lr, x, y = theta.contiguous(), lr.contiguous(), x.contiguous(), y.contiguous()
    T, N, _ = x.shape
    cfg = _Config(dims, N, allow_tf32, use_dot)
    out = torch.empty(T, cfg.P, dtype=x.dtype, device=x.device)
    if T == 0:
        return out
    _launch(_kernels._adapt_fwd_kernel, T, "adapt_fwd",
        out, out.stride(0),
        theta, _theta_stride(theta),
        lr,
        x, x.stride(0), x.stride(1),
        y, *_y_strides(y, loss),
        N, int(steps), _loss_scale(loss, N, cfg.DO),
        **cfg.constexprs(), LOSS=int(loss), ACT=int(act),
        num_warps=cfg.num_warps,
    )
    return out


def adapt_bwd_unchecked(grad, theta, lr, x, y, dims, steps, loss, act, first_order, need_x, *, allow_tf32=False,
              use_dot=True):
    """(g_theta, g_lr, g_x) per task through `steps` inner SGD steps (one launch, one program per task).

    Recomputes theta_0..theta_{K-1} into a [T, K, P] float32 scratch, then runs the
    reverse loop with one R-operator pass per step (second order) or one gradient
    pass (first order). g_x is zeros unless second order and need_x.
    """
    grad, theta, lr = grad.contiguous(), theta.contiguous(), lr.contiguous()
    x, y = x.contiguous(), y.contiguous()
    T, N, D = x.shape
    cfg = _Config(dims, N, allow_tf32, use_dot)
    second = not first_order
    write_x = bool(second and need_x)
    g_theta = torch.empty(T, cfg.P, dtype=x.dtype, device=x.device)
    g_lr = torch.empty(T, cfg.P, dtype=x.dtype, device=x.device)
    g_x = (torch.empty if write_x else torch.zeros)(T, N, D, dtype=x.dtype, device=x.device)
    if T == 0:
        return g_theta, g_lr, g_x
    K = int(steps)
    scratch = torch.empty(max(T * K * cfg.P, 1), dtype=torch.float32, device=x.device)
    _launch(_kernels._adapt_bwd_kernel, T, "adapt_bwd",
        g_theta, g_theta.stride(0),
        g_lr, g_lr.stride(0),
        g_x, g_x.stride(0), g_x.stride(1),
        scratch, K * cfg.P,
        grad, grad.stride(0),
        theta, _theta_stride(theta),
        lr,
        x, x.stride(0), x.stride(1),
        y, *_y_strides(y, loss),
        N, K, _loss_scale(loss, N, cfg.DO),
        **cfg.constexprs(), P=cfg.P, LOSS=int(loss), ACT=int(act), SECOND=second, NEED_X=write_x,
        num_warps=cfg.num_warps,
    )
    return g_theta, g_lr, g_x


def mlp_fwd_unchecked(theta, x, dims, act, *, allow_tf32=False, use_dot=True):
    """out [T, N, O] = MLP(theta_t, x_t) per task (one launch, one program per task)."""
    theta, x = theta.contiguous(), x.contiguous()
    T, N, _ = x.shape
    cfg = _Config(dims, N, allow_tf32, use_dot)
    out = torch.empty(T, N, cfg.DO, dtype=x.dtype, device=x.device)
    if T == 0:
        return out
    _launch(_kernels._mlp_fwd_kernel, T, "mlp_fwd",
        out, out.stride(0), out.stride(1),
        theta, _theta_stride(theta),
        x, x.stride(0), x.stride(1),
        N,
        **cfg.constexprs(), ACT=int(act),
        num_warps=cfg.num_warps,
    )
    return out


def mlp_bwd_unchecked(grad_out, theta, x, dims, act, need_x, *, allow_tf32=False, use_dot=True):
    """(g_theta [T, P], g_x [T, N, D]) of <grad_out, MLP(theta, x)> per task; g_x zeros unless need_x."""
    grad_out, theta, x = grad_out.contiguous(), theta.contiguous(), x.contiguous()
    T, N, D = x.shape
    cfg = _Config(dims, N, allow_tf32, use_dot)
    g_theta = torch.empty(T, cfg.P, dtype=x.dtype, device=x.device)
    g_x = (torch.empty if need_x else torch.zeros)(T, N, D, dtype=x.dtype, device=x.device)
    if T == 0:
        return g_theta, g_x
    _launch(_kernels._mlp_bwd_kernel, T, "mlp_bwd",
        g_theta, g_theta.stride(0),
        g_x, g_x.stride(0), g_x.stride(1),
        grad_out, grad_out.stride(0), grad_out.stride(1),
        theta, _theta_stride(theta),
        x, x.stride(0), x.stride(1),
        N,
        **cfg.constexprs(), ACT=int(act), NEED_X=bool(need_x),
        num_warps=cfg.num_warps,
    )
    return g_theta, g_x


def adapt_fwd(theta, lr, x, y, dims, steps, loss, act, *, allow_tf32=False, use_dot=True):
    """Check the arguments (:func:`why_not`; ``ValueError`` with every reason), then :func:`adapt_fwd_unchecked`."""
    _check(why_not(theta, x, dims, lr=lr, y=y, steps=steps, loss=loss, act=act), "adapt_fwd")
    return adapt_fwd_unchecked(theta, lr, x, y, dims, steps, loss, act, allow_tf32=allow_tf32, use_dot=use_dot)


def adapt_bwd(grad, theta, lr, x, y, dims, steps, loss, act, first_order, need_x, *, allow_tf32=False,
              use_dot=True):
    """Check the arguments (:func:`why_not`; ``ValueError`` with every reason), then :func:`adapt_bwd_unchecked`."""
    _check(why_not(theta, x, dims, lr=lr, y=y, grad=grad, steps=steps, loss=loss, act=act), "adapt_bwd")
    return adapt_bwd_unchecked(grad, theta, lr, x, y, dims, steps, loss, act, first_order, need_x,
                               allow_tf32=allow_tf32, use_dot=use_dot)


def mlp_fwd(theta, x, dims, act, *, allow_tf32=False, use_dot=True):
    """Check the arguments (:func:`why_not`; ``ValueError`` with every reason), then :func:`mlp_fwd_unchecked`."""
    _check(why_not(theta, x, dims, act=act), "mlp_fwd")
    return mlp_fwd_unchecked(theta, x, dims, act, allow_tf32=allow_tf32, use_dot=use_dot)


def mlp_bwd(grad_out, theta, x, dims, act, need_x, *, allow_tf32=False, use_dot=True):
    """Check the arguments (:func:`why_not`; ``ValueError`` with every reason), then :func:`mlp_bwd_unchecked`."""
    _check(why_not(theta, x, dims, grad_out=grad_out, act=act), "mlp_bwd")
    return mlp_bwd_unchecked(grad_out, theta, x, dims, act, need_x, allow_tf32=allow_tf32, use_dot=use_dot)
