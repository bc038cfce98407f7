"""Triton kernels for the inner loop of gradient-based meta-learning (docs/kernels.md).

One program per task (grid ``(T,)``). A program loads its task's parameters, inner
learning rates, inputs and targets once, keeps them (and every activation and tangent)
in registers for all ``K`` inner steps, and writes its outputs once: one launch
forward, one launch backward, no atomics (shared-theta gradients are written per task
and reduced over tasks by the caller, so the result is bitwise reproducible).

Layout. An MLP of ``L <= 4`` layers with widths ``D0 .. DL``; layer ``l`` has
``W_l [D_l, D_{l-1}]`` (row-major) and ``b_l [D_l]``, packed ``W_1, b_1, W_2, ...``.
Inside a kernel each width ``D_l`` is padded to a power-of-two block ``B_l`` (a
``tl.constexpr``) and the point count ``N`` to ``BN``; padded entries are loaded as 0
and never stored. Layer widths are compile-time constants, so the kernel is
specialised on the architecture; depth is unrolled with ``if L >= l`` (constexpr)
branches. Helpers take and return the parameters of all four layers; those of layers
that do not exist (``l > L``) are placeholders that are never read.

Matrix products (``_mm_*``) are, per layer (constexpr ``DOT_l`` chosen by the
launcher), either a broadcast multiply + ``tl.sum`` over a small ``[BN, B_l, B_{l-1}]``
block, or ``tl.dot`` with ``input_precision="ieee"`` (IEEE fp32 products, fp32
accumulation; ``"tf32"`` only when the launcher is asked to) with every block dim
padded to >= 16 as ``tl.dot`` requires on a GPU.
The broadcast products must stay broadcast products when compiled: Triton's combine
pass turns ``sum(a[:, :, None] * b[None, :, :], 1)`` into ``tt.dot`` (any K, TF32 in
Triton 3.6), so ``_mm_nn`` writes it ``b`` first; a test compiles the kernels for
sm_90 and checks that the IR holds only the ``tl.dot`` calls the launcher chose.

The backward keeps theta_0..theta_{K-1} in a per-task global scratch (K * P floats)
rather than registers; the inner learning rates are re-read from global memory
(shared by all tasks, so cache-resident) at each step rather than held in registers.
The launchers use ``num_stages=1`` (no software pipelining of the loads in the step
loops, which would multi-buffer them in shared memory).

Math (per task, points ``n < N``):

    forward      z_l = a_{l-1} W_l^T + b_l,  a_l = s(z_l)  (a_0 = x, no s on the last layer)
    loss grad    MSE: delta_L = 2 (z_L - y) / (N O);  CE: delta_L = (softmax(z_L) - onehot(y)) / N
    backward     gW_l = delta_l^T a_{l-1},  gb_l = sum_n delta_l,
                 delta_{l-1} = (delta_l W_l) * s'(z_{l-1})
    R-operator   (forward-over-reverse along u = (uW_l, ub_l), R{a_0} = 0)
                 R{z_l} = R{a_{l-1}} W_l^T + a_{l-1} uW_l^T + ub_l,  R{a_l} = s'(z_l) R{z_l}
                 R{delta_L} = H_out R{z_L}  (MSE: 2/(N O);  CE: p * (Rz - <p, Rz>) / N)
                 (Hu)W_l = R{delta_l}^T a_{l-1} + delta_l^T R{a_{l-1}},  (Hu)b_l = sum_n R{delta_l}
                 R{delta_{l-1}} = (R{delta_l} W_l + delta_l uW_l) s'(z_{l-1})
                                  + (delta_l W_l) s''(z_{l-1}) R{z_{l-1}}
                 R{delta_0} = R{delta_1} W_1 + delta_1 uW_1
    inner loop   theta_{k+1} = theta_k - lr * g_k
    reverse      u = lr * v_{k+1};  g_lr -= g_k * v_{k+1};  v_k = v_{k+1} - H_k u;  g_x -= R{delta_0}
"""
import triton
import triton.language as tl

# ----------------------------------------------------------------------------------
# Small math
# ----------------------------------------------------------------------------------


@triton.jit
def _mm_nt(a, b, DOT: tl.constexpr, PREC: tl.constexpr):
    """a [M, K] @ b [N, K]^T -> [M, N]."""
    if DOT:
        out = tl.dot(a, tl.trans(b), input_precision=PREC)
    else:
        out = tl.sum(a[:, None, :] * b[None, :, :], axis=2)
    return out


@triton.jit
def _mm_nn(a, b, DOT: tl.constexpr, PREC: tl.constexpr):
    """a [M, K] @ b [K, N] -> [M, N]."""
    if DOT:
        out = tl.dot(a, b, input_precision=PREC)
    else:
        # b first: Triton's combine pass rewrites sum(a[:, :, None] * b[None, :, :], 1)
        # (a first) into tt.dot, whatever K is (K = 1 included) and, in Triton 3.6, at
        # TF32 precision, which is not accurate enough for these gradients. The
        # product is the same in either order.
        out = tl.sum(b[None, :, :] * a[:, :, None], axis=1)
    return out


@triton.jit
def _mm_tn(a, b, DOT: tl.constexpr, PREC: tl.constexpr):
    """a [K, M]^T @ b [K, N] -> [M, N]."""
    if DOT:
        out = tl.dot(tl.trans(a), b, input_precision=PREC)
    else:
        out = tl.sum(a[:, :, None] * b[:, None, :], axis=0)
    return out


@triton.jit
def _tanh(z):
    # tanh(|z|) = (1 - e) / (1 + e), e = exp(-2|z|), cannot overflow; below |z| = 1/8
    # the odd Taylor series to z^7 (relative error < 2e-9) avoids the cancellation in 1 - e.
    az = tl.abs(z)
    e = tl.exp(-2.0 * az)
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(z < 0.0, -t, t)
    z2 = z * z
    series = z * (1.0 + z2 * (-0.3333333333333333 + z2 * (0.13333333333333333 + z2 * (-0.05396825396825397))))
    return tl.where(az < 0.125, series, t)


@triton.jit
def _sigmoid(z):
    # exp(-|z|) cannot overflow.
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _act(z, ACT: tl.constexpr):
    """s(z): 0 identity, 1 relu, 2 tanh, 3 sigmoid."""
    a = z
    if ACT == 1:
        a = tl.maximum(z, 0.0)
    if ACT == 2:
        a = _tanh(z)
    if ACT == 3:
        a = _sigmoid(z)
    return a


@triton.jit
def _dact(z, a, ACT: tl.constexpr):
    """s'(z) given a = s(z); relu'(0) = 0 as in autograd."""
    d = tl.zeros_like(z) + 1.0
    if ACT == 1:
        d = (z > 0.0).to(tl.float32)
    if ACT == 2:
        d = 1.0 - a * a
    if ACT == 3:
        d = a * (1.0 - a)
    return d


@triton.jit
def _ddact(z, a, ACT: tl.constexpr):
    """s''(z) given a = s(z) (only called for tanh and sigmoid; 0 otherwise)."""
    dd = tl.zeros_like(z)
    if ACT == 2:
        dd = -2.0 * a * (1.0 - a * a)
    if ACT == 3:
        dd = a * (1.0 - a) * (1.0 - 2.0 * a)
    return dd


@triton.jit
def _pick(L: tl.constexpr, v1, v2, v3, v4):
    """The value of layer L."""
    out = v1
    if L == 2:
        out = v2
    if L == 3:
        out = v3
    if L == 4:
        out = v4
    return out


# ----------------------------------------------------------------------------------
# Loads and stores of packed parameters and per-task data
# ----------------------------------------------------------------------------------


@triton.jit
def _load_layer(base, OFF: tl.constexpr, DO: tl.constexpr, DI: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr):
    ro = tl.arange(0, BO)
    ci = tl.arange(0, BI)
    mw = (ro[:, None] < DO) & (ci[None, :] < DI)
    W = tl.load(base + OFF + ro[:, None] * DI + ci[None, :], mask=mw, other=0.0).to(tl.float32)
    b = tl.load(base + OFF + DO * DI + ro, mask=ro < DO, other=0.0).to(tl.float32)
    return W, b


@triton.jit
def _store_layer(base, W, b, OFF: tl.constexpr, DO: tl.constexpr, DI: tl.constexpr, BO: tl.constexpr,
                 BI: tl.constexpr):
    ro = tl.arange(0, BO)
    ci = tl.arange(0, BI)
    mw = (ro[:, None] < DO) & (ci[None, :] < DI)
    tl.store(base + OFF + ro[:, None] * DI + ci[None, :], W, mask=mw)
    tl.store(base + OFF + DO * DI + ro, b, mask=ro < DO)


@triton.jit
def _load_params(base, D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr, D4: tl.constexpr,
                 B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr, B4: tl.constexpr,
                 L: tl.constexpr):
    """W_1, b_1, ..., W_4, b_4 from a packed vector (layers > L: placeholders)."""
    W1, b1 = _load_layer(base, 0, D1, D0, B1, B0)
    W2 = W1
    b2 = b1
    W3 = W1
    b3 = b1
    W4 = W1
    b4 = b1
    if L >= 2:
        W2, b2 = _load_layer(base, D1 * (D0 + 1), D2, D1, B2, B1)
    if L >= 3:
        W3, b3 = _load_layer(base, D1 * (D0 + 1) + D2 * (D1 + 1), D3, D2, B3, B2)
    if L >= 4:
        W4, b4 = _load_layer(base, D1 * (D0 + 1) + D2 * (D1 + 1) + D3 * (D2 + 1), D4, D3, B4, B3)
    return W1, b1, W2, b2, W3, b3, W4, b4


@triton.jit
def _store_params(base, W1, b1, W2, b2, W3, b3, W4, b4,
                  D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr, D4: tl.constexpr,
                  B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr, B4: tl.constexpr,
                  L: tl.constexpr):
    _store_layer(base, W1, b1, 0, D1, D0, B1, B0)
    if L >= 2:
        _store_layer(base, W2, b2, D1 * (D0 + 1), D2, D1, B2, B1)
    if L >= 3:
        _store_layer(base, W3, b3, D1 * (D0 + 1) + D2 * (D1 + 1), D3, D2, B3, B2)
    if L >= 4:
        _store_layer(base, W4, b4, D1 * (D0 + 1) + D2 * (D1 + 1) + D3 * (D2 + 1), D4, D3, B4, B3)


@triton.jit
def _load_rows(base, stride_n, N, DC: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr):
    """A [N, DC] row-major block (row stride stride_n, unit column stride) as [BN, BC]."""
    rows = tl.arange(0, BN)
    cols = tl.arange(0, BC)
    m = (rows[:, None] < N) & (cols[None, :] < DC)
    return tl.load(base + rows[:, None] * stride_n + cols[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _store_rows(base, stride_n, val, N, DC: tl.constexpr, BN: tl.constexpr, BC: tl.constexpr):
    rows = tl.arange(0, BN)
    cols = tl.arange(0, BC)
    m = (rows[:, None] < N) & (cols[None, :] < DC)
    tl.store(base + rows[:, None] * stride_n + cols[None, :], val, mask=m)


@triton.jit
def _load_targets(base, stride_n, N, DO: tl.constexpr, BN: tl.constexpr, BO: tl.constexpr, LOSS: tl.constexpr):
    """MSE: targets [BN, BO] (float); CE: class indices [BN] (int64)."""
    if LOSS == 0:
        y = _load_rows(base, stride_n, N, DO, BN, BO)
    else:
        rows = tl.arange(0, BN)
        y = tl.load(base + rows * stride_n, mask=rows < N, other=0)
    return y


# ----------------------------------------------------------------------------------
# Per-layer parameter arithmetic (layers > L pass through)
# ----------------------------------------------------------------------------------


@triton.jit
def _sub_prod(x1, x2, x3, x4, x5, x6, x7, x8, a1, a2, a3, a4, a5, a6, a7, a8,
              c1, c2, c3, c4, c5, c6, c7, c8, L: tl.constexpr):
    """x - a * c, parameter by parameter."""
    x1 = x1 - a1 * c1
    x2 = x2 - a2 * c2
    if L >= 2:
        x3 = x3 - a3 * c3
        x4 = x4 - a4 * c4
    if L >= 3:
        x5 = x5 - a5 * c5
        x6 = x6 - a6 * c6
    if L >= 4:
        x7 = x7 - a7 * c7
        x8 = x8 - a8 * c8
    return x1, x2, x3, x4, x5, x6, x7, x8


@triton.jit
def _mul(a1, a2, a3, a4, a5, a6, a7, a8, c1, c2, c3, c4, c5, c6, c7, c8, L: tl.constexpr):
    """a * c, parameter by parameter."""
    r1 = a1 * c1
    r2 = a2 * c2
    r3 = a3
    r4 = a4
    r5 = a5
    r6 = a6
    r7 = a7
    r8 = a8
    if L >= 2:
        r3 = a3 * c3
        r4 = a4 * c4
    if L >= 3:
        r5 = a5 * c5
        r6 = a6 * c6
    if L >= 4:
        r7 = a7 * c7
        r8 = a8 * c8
    return r1, r2, r3, r4, r5, r6, r7, r8


@triton.jit
def _sub(x1, x2, x3, x4, x5, x6, x7, x8, h1, h2, h3, h4, h5, h6, h7, h8, L: tl.constexpr):
    """x - h, parameter by parameter."""
    x1 = x1 - h1
    x2 = x2 - h2
    if L >= 2:
        x3 = x3 - h3
        x4 = x4 - h4
    if L >= 3:
        x5 = x5 - h5
        x6 = x6 - h6
    if L >= 4:
        x7 = x7 - h7
        x8 = x8 - h8
    return x1, x2, x3, x4, x5, x6, x7, x8


# ----------------------------------------------------------------------------------
# Passes through the MLP
# ----------------------------------------------------------------------------------


@triton.jit
def _forward(a0, W1, b1, W2, b2, W3, b3, W4, b4, L: tl.constexpr, ACT: tl.constexpr,
             DOT1: tl.constexpr, DOT2: tl.constexpr, DOT3: tl.constexpr, DOT4: tl.constexpr, PREC: tl.constexpr):
    """Pre-activations z_1..z_4 and activations a_1..a_3 (placeholders past L)."""
    z1 = _mm_nt(a0, W1, DOT1, PREC) + b1[None, :]
    a1 = z1
    z2 = z1
    a2 = z1
    z3 = z1
    a3 = z1
    z4 = z1
    if L >= 2:
        a1 = _act(z1, ACT)
        z2 = _mm_nt(a1, W2, DOT2, PREC) + b2[None, :]
    if L >= 3:
        a2 = _act(z2, ACT)
        z3 = _mm_nt(a2, W3, DOT3, PREC) + b3[None, :]
    if L >= 4:
        a3 = _act(z3, ACT)
        z4 = _mm_nt(a3, W4, DOT4, PREC) + b4[None, :]
    return z1, a1, z2, a2, z3, a3, z4


@triton.jit
def _backward(delta, a0, z1, a1, z2, a2, z3, a3, W1, W2, W3, W4, L: tl.constexpr, ACT: tl.constexpr,
              DOT1: tl.constexpr, DOT2: tl.constexpr, DOT3: tl.constexpr, DOT4: tl.constexpr, PREC: tl.constexpr,
              NEED_X: tl.constexpr):
    """Reverse pass from delta = dl/dz_L: gW_l, gb_l and dl/da_0 (placeholder unless NEED_X)."""
    gW4 = W4
    gb4 = W4
    gW3 = W3
    gb3 = W3
    gW2 = W2
    gb2 = W2
    if L >= 4:
        gW4 = _mm_tn(delta, a3, DOT4, PREC)
        gb4 = tl.sum(delta, axis=0)
        delta = _mm_nn(delta, W4, DOT4, PREC) * _dact(z3, a3, ACT)
    if L >= 3:
        gW3 = _mm_tn(delta, a2, DOT3, PREC)
        gb3 = tl.sum(delta, axis=0)
        delta = _mm_nn(delta, W3, DOT3, PREC) * _dact(z2, a2, ACT)
    if L >= 2:
        gW2 = _mm_tn(delta, a1, DOT2, PREC)
        gb2 = tl.sum(delta, axis=0)
        delta = _mm_nn(delta, W2, DOT2, PREC) * _dact(z1, a1, ACT)
    gW1 = _mm_tn(delta, a0, DOT1, PREC)
    gb1 = tl.sum(delta, axis=0)
    d0 = delta
    if NEED_X:
        d0 = _mm_nn(delta, W1, DOT1, PREC)
    return gW1, gb1, gW2, gb2, gW3, gb3, gW4, gb4, d0


@triton.jit
def _loss_grad(z, y, m_out, cols, DO: tl.constexpr, scale, LOSS: tl.constexpr):
    """delta_L = dL/dz_L (0 on padding) and, for cross-entropy, p = softmax(z_L).

    scale: 2 / (N * O) for MSE, 1 / N for cross-entropy.
    """
    p = z
    if LOSS == 0:
        delta = tl.where(m_out, (z - y) * scale, 0.0)
    else:
        zc = tl.where(cols[None, :] < DO, z, float("-inf"))  # padded classes: p = 0
        e = tl.exp(zc - tl.max(zc, axis=1)[:, None])
        p = e / tl.sum(e, axis=1)[:, None]
        onehot = (cols[None, :] == y[:, None]).to(tl.float32)
        delta = tl.where(m_out, (p - onehot) * scale, 0.0)
    return delta, p


@triton.jit
def _loss_hvp(Rz, p, m_out, scale, LOSS: tl.constexpr):
    """R{delta_L} = H_out R{z_L}."""
    if LOSS == 0:
        Rd = tl.where(m_out, Rz * scale, 0.0)
    else:
        Rd = tl.where(m_out, p * (Rz - tl.sum(p * Rz, axis=1)[:, None]) * scale, 0.0)
    return Rd


@triton.jit
def _grad(x, y, m_out, cols, scale, W1, b1, W2, b2, W3, b3, W4, b4, DO: tl.constexpr, L: tl.constexpr,
          LOSS: tl.constexpr, ACT: tl.constexpr, DOT1: tl.constexpr, DOT2: tl.constexpr, DOT3: tl.constexpr,
          DOT4: tl.constexpr, PREC: tl.constexpr):
    """Gradient of the task loss w.r.t. the parameters (layers > L: placeholders)."""
    z1, a1, z2, a2, z3, a3, z4 = _forward(x, W1, b1, W2, b2, W3, b3, W4, b4, L, ACT, DOT1, DOT2, DOT3, DOT4, PREC)
    zL = _pick(L, z1, z2, z3, z4)
    delta, p = _loss_grad(zL, y, m_out, cols, DO, scale, LOSS)
    gW1, gb1, gW2, gb2, gW3, gb3, gW4, gb4, d0 = _backward(delta, x, z1, a1, z2, a2, z3, a3, W1, W2, W3, W4,
                                                           L, ACT, DOT1, DOT2, DOT3, DOT4, PREC, False)
    return gW1, gb1, gW2, gb2, gW3, gb3, gW4, gb4


@triton.jit
def _rop_layer(delta, Rdelta, a_prev, Ra_prev, W, uW, DOT: tl.constexpr, PREC: tl.constexpr,
               FIRST: tl.constexpr, NEED_E: tl.constexpr):
    """One layer of the reverse R-pass.

    Returns gW, gb, (Hu)W, (Hu)b, e = delta W and Re = R{delta} W + delta uW
    (e, Re are placeholders unless NEED_E). FIRST: R{a_prev} = 0.
    """
    gW = _mm_tn(delta, a_prev, DOT, PREC)
    gb = tl.sum(delta, axis=0)
    hW = _mm_tn(Rdelta, a_prev, DOT, PREC)
    if not FIRST:
        hW = hW + _mm_tn(delta, Ra_prev, DOT, PREC)
    hb = tl.sum(Rdelta, axis=0)
    e = delta
    Re = Rdelta
    if NEED_E:
        e = _mm_nn(delta, W, DOT, PREC)
        Re = _mm_nn(Rdelta, W, DOT, PREC) + _mm_nn(delta, uW, DOT, PREC)
    return gW, gb, hW, hb, e, Re


@triton.jit
def _rop(x, y, m_out, cols, scale,
         W1, b1, W2, b2, W3, b3, W4, b4, uW1, ub1, uW2, ub2, uW3, ub3, uW4, ub4,
         DO: tl.constexpr, L: tl.constexpr, LOSS: tl.constexpr, ACT: tl.constexpr, DOT1: tl.constexpr,
         DOT2: tl.constexpr, DOT3: tl.constexpr, DOT4: tl.constexpr, PREC: tl.constexpr, NEED_X: tl.constexpr):
    """One forward-over-reverse pass at theta along u.

    Returns the gradient g (8 parameter blocks), the Hessian-vector product H u
    (8 blocks) and R{delta_0} = d/dx (u . grad_theta L) (placeholder unless NEED_X).
    """
    # forward: values and tangents
    z1 = _mm_nt(x, W1, DOT1, PREC) + b1[None, :]
    Rz1 = _mm_nt(x, uW1, DOT1, PREC) + ub1[None, :]
    a1 = z1
    d1 = z1
    Ra1 = z1
    z2 = z1
    Rz2 = z1
    a2 = z1
    d2 = z1
    Ra2 = z1
    z3 = z1
    Rz3 = z1
    a3 = z1
    d3 = z1
    Ra3 = z1
    z4 = z1
    Rz4 = z1
    if L >= 2:
        a1 = _act(z1, ACT)
        d1 = _dact(z1, a1, ACT)
        Ra1 = d1 * Rz1
        z2 = _mm_nt(a1, W2, DOT2, PREC) + b2[None, :]
        Rz2 = _mm_nt(Ra1, W2, DOT2, PREC) + _mm_nt(a1, uW2, DOT2, PREC) + ub2[None, :]
    if L >= 3:
        a2 = _act(z2, ACT)
        d2 = _dact(z2, a2, ACT)
        Ra2 = d2 * Rz2
        z3 = _mm_nt(a2, W3, DOT3, PREC) + b3[None, :]
        Rz3 = _mm_nt(Ra2, W3, DOT3, PREC) + _mm_nt(a2, uW3, DOT3, PREC) + ub3[None, :]
    if L >= 4:
        a3 = _act(z3, ACT)
        d3 = _dact(z3, a3, ACT)
        Ra3 = d3 * Rz3
        z4 = _mm_nt(a3, W4, DOT4, PREC) + b4[None, :]
        Rz4 = _mm_nt(Ra3, W4, DOT4, PREC) + _mm_nt(a3, uW4, DOT4, PREC) + ub4[None, :]
    zL = _pick(L, z1, z2, z3, z4)
    RzL = _pick(L, Rz1, Rz2, Rz3, Rz4)
    delta, p = _loss_grad(zL, y, m_out, cols, DO, scale, LOSS)
    Rdelta = _loss_hvp(RzL, p, m_out, scale, LOSS)
    # reverse
    gW4 = W4
    gb4 = b4
    hW4 = W4
    hb4 = b4
    gW3 = W3
    gb3 = b3
    hW3 = W3
    hb3 = b3
    gW2 = W2
    gb2 = b2
    hW2 = W2
    hb2 = b2
    if L >= 4:
        gW4, gb4, hW4, hb4, e, Re = _rop_layer(delta, Rdelta, a3, Ra3, W4, uW4, DOT4, PREC, False, True)
        delta = e * d3
        Rdelta = Re * d3
        if ACT >= 2:  # s'' != 0 (tanh, sigmoid)
            Rdelta = Rdelta + e * _ddact(z3, a3, ACT) * Rz3
    if L >= 3:
        gW3, gb3, hW3, hb3, e, Re = _rop_layer(delta, Rdelta, a2, Ra2, W3, uW3, DOT3, PREC, False, True)
        delta = e * d2
        Rdelta = Re * d2
        if ACT >= 2:  # s'' != 0 (tanh, sigmoid)
            Rdelta = Rdelta + e * _ddact(z2, a2, ACT) * Rz2
    if L >= 2:
        gW2, gb2, hW2, hb2, e, Re = _rop_layer(delta, Rdelta, a1, Ra1, W2, uW2, DOT2, PREC, False, True)
        delta = e * d1
        Rdelta = Re * d1
        if ACT >= 2:  # s'' != 0 (tanh, sigmoid)
            Rdelta = Rdelta + e * _ddact(z1, a1, ACT) * Rz1
    gW1, gb1, hW1, hb1, e, Rd0 = _rop_layer(delta, Rdelta, x, x, W1, uW1, DOT1, PREC, True, NEED_X)
    return (gW1, gb1, gW2, gb2, gW3, gb3, gW4, gb4, hW1, hb1, hW2, hb2, hW3, hb3, hW4, hb4, Rd0)


# ----------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------


@triton.jit
def _adapt_fwd_kernel(
    out_ptr, stride_out_t,  # theta_K [T, P]
    theta_ptr, stride_theta_t,  # theta [T, P] or [P] (stride 0)
    lr_ptr,  # lr [P]
    x_ptr, stride_x_t, stride_x_n,  # x [T, N, D0]
    y_ptr, stride_y_t, stride_y_n,  # y [T, N, DO] float (MSE) or [T, N] int64 (CE)
    N, steps, scale,  # points, inner steps K, loss scale (MSE 2/(N*DO), CE 1/N)
    D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr, D4: tl.constexpr,  # widths (1 past L)
    B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr, B4: tl.constexpr,  # padded widths
    BN: tl.constexpr, DO: tl.constexpr, BO: tl.constexpr,  # padded N, output width and its block
    L: tl.constexpr, LOSS: tl.constexpr, ACT: tl.constexpr,  # depth, 0 MSE / 1 CE, activation
    DOT1: tl.constexpr, DOT2: tl.constexpr, DOT3: tl.constexpr, DOT4: tl.constexpr,  # tl.dot per layer
    PREC: tl.constexpr,  # tl.dot input precision: "ieee" (default) or "tf32"
):
    """theta_K of K inner SGD steps for one task (docs/kernels.md, forward)."""
    pid = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BN)
    cols = tl.arange(0, BO)
    m_out = (rows[:, None] < N) & (cols[None, :] < DO)
    x = _load_rows(x_ptr + pid * stride_x_t, stride_x_n, N, D0, BN, B0)
    y = _load_targets(y_ptr + pid * stride_y_t, stride_y_n, N, DO, BN, BO, LOSS)
    W1, b1, W2, b2, W3, b3, W4, b4 = _load_params(theta_ptr + pid * stride_theta_t,
                                                  D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)
    for _k in range(steps):
        # lr is re-read every step (shared by all tasks: cache-resident) to spare registers
        l1, l2, l3, l4, l5, l6, l7, l8 = _load_params(lr_ptr, D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)
        g1, g2, g3, g4, g5, g6, g7, g8 = _grad(x, y, m_out, cols, scale, W1, b1, W2, b2, W3, b3, W4, b4,
                                               DO, L, LOSS, ACT, DOT1, DOT2, DOT3, DOT4, PREC)
        W1, b1, W2, b2, W3, b3, W4, b4 = _sub_prod(W1, b1, W2, b2, W3, b3, W4, b4, l1, l2, l3, l4, l5, l6, l7, l8,
                                                   g1, g2, g3, g4, g5, g6, g7, g8, L)
    _store_params(out_ptr + pid * stride_out_t, W1, b1, W2, b2, W3, b3, W4, b4,
                  D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)


@triton.jit
def _adapt_bwd_kernel(
    gtheta_ptr, stride_gtheta_t,  # g_theta [T, P]
    glr_ptr, stride_glr_t,  # g_lr [T, P]
    gx_ptr, stride_gx_t, stride_gx_n,  # g_x [T, N, D0] (written iff SECOND and NEED_X)
    scratch_ptr, stride_scratch_t,  # [T, K, P] scratch: theta_0 .. theta_{K-1}
    grad_ptr, stride_grad_t,  # v_K [T, P]
    theta_ptr, stride_theta_t,  # theta [T, P] or [P] (stride 0)
    lr_ptr,  # lr [P]
    x_ptr, stride_x_t, stride_x_n,  # x [T, N, D0]
    y_ptr, stride_y_t, stride_y_n,  # y [T, N, DO] float (MSE) or [T, N] int64 (CE)
    N, steps, scale,  # points, inner steps K, loss scale
    D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr, D4: tl.constexpr,
    B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr, B4: tl.constexpr,
    BN: tl.constexpr, DO: tl.constexpr, BO: tl.constexpr,
    P: tl.constexpr,  # packed parameter count
    L: tl.constexpr, LOSS: tl.constexpr, ACT: tl.constexpr,
    DOT1: tl.constexpr, DOT2: tl.constexpr, DOT3: tl.constexpr, DOT4: tl.constexpr,
    PREC: tl.constexpr,
    SECOND: tl.constexpr,  # second order (HVP) or first order
    NEED_X: tl.constexpr,  # accumulate g_x
):
    """Reverse pass through K inner SGD steps for one task (docs/kernels.md, backward)."""
    pid = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BN)
    cols = tl.arange(0, BO)
    m_out = (rows[:, None] < N) & (cols[None, :] < DO)
    x = _load_rows(x_ptr + pid * stride_x_t, stride_x_n, N, D0, BN, B0)
    y = _load_targets(y_ptr + pid * stride_y_t, stride_y_n, N, DO, BN, BO, LOSS)
    W1, b1, W2, b2, W3, b3, W4, b4 = _load_params(theta_ptr + pid * stride_theta_t,
                                                  D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)

    # 1. recompute theta_0 .. theta_{K-1} into this task's scratch rows
    sp = scratch_ptr + pid * stride_scratch_t
    for _k in range(steps):
        _store_params(sp, W1, b1, W2, b2, W3, b3, W4, b4, D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)
        sp += P
        l1, l2, l3, l4, l5, l6, l7, l8 = _load_params(lr_ptr, D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)
        g1, g2, g3, g4, g5, g6, g7, g8 = _grad(x, y, m_out, cols, scale, W1, b1, W2, b2, W3, b3, W4, b4,
                                               DO, L, LOSS, ACT, DOT1, DOT2, DOT3, DOT4, PREC)
        W1, b1, W2, b2, W3, b3, W4, b4 = _sub_prod(W1, b1, W2, b2, W3, b3, W4, b4, l1, l2, l3, l4, l5, l6, l7, l8,
                                                   g1, g2, g3, g4, g5, g6, g7, g8, L)
    tl.debug_barrier()  # scratch written by some threads is read back by others

    # 2. reverse loop, k = K-1 .. 0
    v1, v2, v3, v4, v5, v6, v7, v8 = _load_params(grad_ptr + pid * stride_grad_t,
                                                  D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)
    q1 = tl.zeros_like(v1)
    q2 = tl.zeros_like(v2)
    q3 = tl.zeros_like(v3)
    q4 = tl.zeros_like(v4)
    q5 = tl.zeros_like(v5)
    q6 = tl.zeros_like(v6)
    q7 = tl.zeros_like(v7)
    q8 = tl.zeros_like(v8)
    gx = tl.zeros_like(x)
    for _k in range(steps):
        sp -= P
        t1, t2, t3, t4, t5, t6, t7, t8 = _load_params(sp, D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)  # theta_k
        if SECOND:
            l1, l2, l3, l4, l5, l6, l7, l8 = _load_params(lr_ptr, D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)
            u1, u2, u3, u4, u5, u6, u7, u8 = _mul(l1, l2, l3, l4, l5, l6, l7, l8,
                                                  v1, v2, v3, v4, v5, v6, v7, v8, L)
            (g1, g2, g3, g4, g5, g6, g7, g8, h1, h2, h3, h4, h5, h6, h7, h8, Rd0) = _rop(
                x, y, m_out, cols, scale, t1, t2, t3, t4, t5, t6, t7, t8, u1, u2, u3, u4, u5, u6, u7, u8,
                DO, L, LOSS, ACT, DOT1, DOT2, DOT3, DOT4, PREC, NEED_X)
            # g_lr -= g_k * v_{k+1}  (before v is updated)
            q1, q2, q3, q4, q5, q6, q7, q8 = _sub_prod(q1, q2, q3, q4, q5, q6, q7, q8, g1, g2, g3, g4, g5, g6, g7,
                                                       g8, v1, v2, v3, v4, v5, v6, v7, v8, L)
            v1, v2, v3, v4, v5, v6, v7, v8 = _sub(v1, v2, v3, v4, v5, v6, v7, v8, h1, h2, h3, h4, h5, h6, h7, h8, L)
            if NEED_X:
                gx = gx - Rd0
        else:
            g1, g2, g3, g4, g5, g6, g7, g8 = _grad(x, y, m_out, cols, scale, t1, t2, t3, t4, t5, t6, t7, t8,
                                                   DO, L, LOSS, ACT, DOT1, DOT2, DOT3, DOT4, PREC)
            q1, q2, q3, q4, q5, q6, q7, q8 = _sub_prod(q1, q2, q3, q4, q5, q6, q7, q8, g1, g2, g3, g4, g5, g6, g7,
                                                       g8, v1, v2, v3, v4, v5, v6, v7, v8, L)

    _store_params(gtheta_ptr + pid * stride_gtheta_t, v1, v2, v3, v4, v5, v6, v7, v8,
                  D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)
    _store_params(glr_ptr + pid * stride_glr_t, q1, q2, q3, q4, q5, q6, q7, q8,
                  D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)
    if SECOND:
        if NEED_X:
            _store_rows(gx_ptr + pid * stride_gx_t, stride_gx_n, gx, N, D0, BN, B0)


@triton.jit
def _mlp_fwd_kernel(
    out_ptr, stride_out_t, stride_out_n,  # out [T, N, DO]
    theta_ptr, stride_theta_t,  # theta [T, P] or [P] (stride 0)
    x_ptr, stride_x_t, stride_x_n,  # x [T, N, D0]
    N,
    D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr, D4: tl.constexpr,
    B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr, B4: tl.constexpr,
    BN: tl.constexpr, DO: tl.constexpr, BO: tl.constexpr,
    L: tl.constexpr, ACT: tl.constexpr,
    DOT1: tl.constexpr, DOT2: tl.constexpr, DOT3: tl.constexpr, DOT4: tl.constexpr,
    PREC: tl.constexpr,
):
    """out = MLP(theta_t, x_t) for one task."""
    pid = tl.program_id(0).to(tl.int64)
    x = _load_rows(x_ptr + pid * stride_x_t, stride_x_n, N, D0, BN, B0)
    W1, b1, W2, b2, W3, b3, W4, b4 = _load_params(theta_ptr + pid * stride_theta_t,
                                                  D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)
    z1, a1, z2, a2, z3, a3, z4 = _forward(x, W1, b1, W2, b2, W3, b3, W4, b4, L, ACT, DOT1, DOT2, DOT3, DOT4, PREC)
    zL = _pick(L, z1, z2, z3, z4)
    _store_rows(out_ptr + pid * stride_out_t, stride_out_n, zL, N, DO, BN, BO)


@triton.jit
def _mlp_bwd_kernel(
    gtheta_ptr, stride_gtheta_t,  # g_theta [T, P]
    gx_ptr, stride_gx_t, stride_gx_n,  # g_x [T, N, D0] (written iff NEED_X)
    gout_ptr, stride_gout_t, stride_gout_n,  # grad_out [T, N, DO]
    theta_ptr, stride_theta_t,  # theta [T, P] or [P] (stride 0)
    x_ptr, stride_x_t, stride_x_n,  # x [T, N, D0]
    N,
    D0: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr, D3: tl.constexpr, D4: tl.constexpr,
    B0: tl.constexpr, B1: tl.constexpr, B2: tl.constexpr, B3: tl.constexpr, B4: tl.constexpr,
    BN: tl.constexpr, DO: tl.constexpr, BO: tl.constexpr,
    L: tl.constexpr, ACT: tl.constexpr,
    DOT1: tl.constexpr, DOT2: tl.constexpr, DOT3: tl.constexpr, DOT4: tl.constexpr,
    PREC: tl.constexpr,
    NEED_X: tl.constexpr,
):
    """Gradients of <grad_out, MLP(theta_t, x_t)> w.r.t. theta_t and x_t for one task."""
    pid = tl.program_id(0).to(tl.int64)
    x = _load_rows(x_ptr + pid * stride_x_t, stride_x_n, N, D0, BN, B0)
    delta = _load_rows(gout_ptr + pid * stride_gout_t, stride_gout_n, N, DO, BN, BO)
    W1, b1, W2, b2, W3, b3, W4, b4 = _load_params(theta_ptr + pid * stride_theta_t,
                                                  D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)
    z1, a1, z2, a2, z3, a3, z4 = _forward(x, W1, b1, W2, b2, W3, b3, W4, b4, L, ACT, DOT1, DOT2, DOT3, DOT4, PREC)
    gW1, gb1, gW2, gb2, gW3, gb3, gW4, gb4, d0 = _backward(delta, x, z1, a1, z2, a2, z3, a3, W1, W2, W3, W4,
                                                           L, ACT, DOT1, DOT2, DOT3, DOT4, PREC, NEED_X)
    _store_params(gtheta_ptr + pid * stride_gtheta_t, gW1, gb1, gW2, gb2, gW3, gb3, gW4, gb4,
                  D0, D1, D2, D3, D4, B0, B1, B2, B3, B4, L)
    if NEED_X:
        _store_rows(gx_ptr + pid * stride_gx_t, stride_gx_n, d0, N, D0, BN, B0)
