// common/task_math.h — the host-device per-task arithmetic of the fused kernels.
//
// Written once, used by the CPU kernels (csrc/cpu) and from CUDA device code (every
// function is MK_HD: `__host__ __device__` under nvcc). No torch includes: raw
// pointers, int64 sizes, one task at a time. The arithmetic mirrors
// metakern/backends/torch_backend.py stage by stage (see docs/kernels.md).
//
// Here: the network shape and packed offsets, the scalar exp / tanh, the activations
// and their derivatives, elementwise vector helpers, and the task-mean losses with
// their gradient and Hessian-vector product. The matrix products and the passes built
// on them (forward, backward, R-operator, the per-task drivers) are the CPU's:
// cpu/gemm.h and cpu/task_passes.h.
//
// Notation, per task (N points; layer l = 1..L; widths d_0 = D .. d_L = O):
//   a_0 = x                                  [N, d_0]
//   z_l = a_{l-1} W_l^T + b_l                [N, d_l]    W_l: [d_l, d_{l-1}] (nn.Linear)
//   a_l = s(z_l) for l < L,   out = z_L
//   delta_L = dLoss/dout
//
// Determinism: every output element is accumulated by one thread in a fixed order,
// so results do not depend on how tasks are split between threads.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/codes.h"

#if defined(__CUDACC__)
#define MK_HD __host__ __device__ __forceinline__
#else
#define MK_HD inline
#endif

#if defined(__CUDACC__) || defined(__GNUC__) || defined(__clang__)
#define MK_RESTRICT __restrict__
#else
#define MK_RESTRICT
#endif

namespace metakern {
namespace task {

using i64 = int64_t;

// ------------------------------------------------------------------ the network shape
struct Mlp {
  int L;           // number of layers
  const i64* d;    // widths d[0..L]
  i64 P;           // sum_l d_l (d_{l-1} + 1)
  i64 H;           // sum_{l>=1} d_l  (rows of the per-layer activation buffers)
  i64 nW;          // sum_l d_l d_{l-1} (weights only)

  MK_HD static Mlp make(const i64* dims, int L) {
    Mlp m{L, dims, 0, 0, 0};
    for (int l = 1; l <= L; ++l) {
      m.P += dims[l] * (dims[l - 1] + 1);
      m.H += dims[l];
      m.nW += dims[l] * dims[l - 1];
    }
    return m;
  }
  MK_HD i64 in(int l) const { return d[l - 1]; }
  MK_HD i64 out(int l) const { return d[l]; }
};

// Offsets of layer l (1-based), advanced layer by layer by the loops below.
struct LayerOff {
  i64 w;   // W_l in the packed parameter vector (b_l follows at w + out*in)
  i64 wt;  // W_l^T in the WT buffer
  i64 h;   // column offset of layer l in the activation buffers (times N)
};

MK_HD LayerOff layer_off(const Mlp& net, int l) {
  LayerOff o{0, 0, 0};
  for (int j = 1; j < l; ++j) {
    o.w += net.d[j] * (net.d[j - 1] + 1);
    o.wt += net.d[j] * net.d[j - 1];
    o.h += net.d[j];
  }
  return o;
}

// ------------------------------------------------------------------ scalar functions
// float32 exp and tanh are written out (Cephes polynomials, within 2 ulp of the
// correctly rounded result over the whole range) so that loops over them vectorise:
// libm's expf/tanhf are opaque calls, which keep those loops scalar. float64 uses
// libm (it is the accuracy / gradcheck dtype).
MK_HD float mk_bits_to_float(int32_t b) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(b);
#else
  float f;
  __builtin_memcpy(&f, &b, sizeof(f));
  return f;
#endif
}

// exp(v): v = n ln2 + r, |r| <= ln2/2, exp(r) by a degree-7 polynomial, 2^n from the
// exponent bits. Clamped to [-87.34, 88.38] (finite, no denormal scale); NaN stays NaN.
MK_HD float mk_exp(float v) {
  float x = v > 88.3762626647949f ? 88.3762626647949f : v;
  x = x < -87.3365447504f ? -87.3365447504f : x;
  const float xn = x == x ? x : 0.0f;                               // integer part of NaN: 0
  const float n = (xn * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;        // x - n ln2 (two-part ln2)
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  return p * mk_bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}
MK_HD double mk_exp(double v) { return exp(v); }

// tanh(v): odd polynomial for |v| < 0.625, else sign(v) (1 - 2 / (exp(2|v|) + 1)).
MK_HD float mk_tanh(float v) {
  const float av = v < 0.0f ? -v : v;
  const float z = v * v;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * v + v;
  const float big = 1.0f - 2.0f / (mk_exp(2.0f * av) + 1.0f);
  return av < 0.625f ? small : (v < 0.0f ? -big : big);
}
MK_HD double mk_tanh(double v) { return tanh(v); }

// Activations (applied after every layer but the last), with derivatives written in
// terms of the output a = s(z), as the kernels keep a and not z:
//   identity  s' = 1              s'' = 0
//   relu      s' = [a > 0]        s'' = 0      (0 at 0, as autograd; NaN kept by the forward)
//   tanh      s' = 1 - a^2        s'' = -2 a (1 - a^2)
//   sigmoid   s' = a (1 - a)      s'' = a (1 - a)(1 - 2 a)
// The forward is act_inplace (below) or the relu epilogue of cpu/gemm.h, where s' and
// s'' appear in the other epilogues.

// Scalar forms of the same formulas, for kernels that work element by element (the
// CUDA kernels use these, so both backends share one definition of each activation).
template <typename T>
MK_HD T act_fn(int act, T z) {
  switch (act) {
    case kRelu: return z < T(0) ? T(0) : z;
    case kTanh: return mk_tanh(z);
    case kSigmoid: return T(1) / (T(1) + mk_exp(-z));
    default: return z;
  }
}
template <typename T>
MK_HD T act_d1(int act, T a) {  // s'(z) from a = s(z)
  switch (act) {
    case kRelu: return a > T(0) ? T(1) : T(0);
    case kTanh: return T(1) - a * a;
    case kSigmoid: return a * (T(1) - a);
    default: return T(1);
  }
}
template <typename T>
MK_HD T act_d2(int act, T a) {  // s''(z) from a = s(z)
  switch (act) {
    case kTanh: return T(-2) * a * (T(1) - a * a);
    case kSigmoid: return a * (T(1) - a) * (T(1) - T(2) * a);
    default: return T(0);
  }
}

// a = s(a) elementwise (the switch hoisted out of the loop so each loop vectorises);
// relu keeps NaN (a < 0 is false for NaN).
template <typename T>
MK_HD void act_inplace(int act, i64 n, T* MK_RESTRICT a) {
  switch (act) {
    case kRelu:
      for (i64 i = 0; i < n; ++i) a[i] = a[i] < T(0) ? T(0) : a[i];
      break;
    case kTanh:
      for (i64 i = 0; i < n; ++i) a[i] = act_fn(kTanh, a[i]);
      break;
    case kSigmoid:
      for (i64 i = 0; i < n; ++i) a[i] = act_fn(kSigmoid, a[i]);
      break;
    default: break;
  }
}

// Small vector helpers (restrict-qualified so the loops vectorise).
template <typename T>
MK_HD void copy(i64 n, const T* MK_RESTRICT src, T* MK_RESTRICT dst) {
  for (i64 i = 0; i < n; ++i) dst[i] = src[i];
}
template <typename T>
MK_HD void fill(i64 n, T value, T* MK_RESTRICT dst) {
  for (i64 i = 0; i < n; ++i) dst[i] = value;
}
// y -= x
template <typename T>
MK_HD void sub_inplace(i64 n, const T* MK_RESTRICT x, T* MK_RESTRICT y) {
  for (i64 i = 0; i < n; ++i) y[i] -= x[i];
}
// SGD step: out = theta - lr * g
template <typename T>
MK_HD void sgd_step(i64 n, const T* MK_RESTRICT theta, const T* MK_RESTRICT lr, const T* MK_RESTRICT g,
                    T* MK_RESTRICT out) {
  for (i64 i = 0; i < n; ++i) out[i] = theta[i] - lr[i] * g[i];
}
// in place: theta -= lr * g
template <typename T>
MK_HD void sgd_step_inplace(i64 n, const T* MK_RESTRICT lr, const T* MK_RESTRICT g, T* MK_RESTRICT theta) {
  for (i64 i = 0; i < n; ++i) theta[i] -= lr[i] * g[i];
}
// g_lr -= g * v
template <typename T>
MK_HD void lr_grad(i64 n, const T* MK_RESTRICT g, const T* MK_RESTRICT v, T* MK_RESTRICT g_lr) {
  for (i64 i = 0; i < n; ++i) g_lr[i] -= g[i] * v[i];
}
// u = lr * v and g_lr -= g * v (one pass of the reverse step); g_lr may be null
// (no lr gradient wanted): then only u.
template <typename T>
MK_HD void reverse_step_pre(i64 n, const T* MK_RESTRICT lr, const T* MK_RESTRICT g, const T* MK_RESTRICT v,
                            T* MK_RESTRICT u, T* MK_RESTRICT g_lr) {
  if (g_lr == nullptr) {
    for (i64 i = 0; i < n; ++i) u[i] = lr[i] * v[i];
    return;
  }
  for (i64 i = 0; i < n; ++i) {
    u[i] = lr[i] * v[i];
    g_lr[i] -= g[i] * v[i];
  }
}

// ------------------------------------------------------------------ loss
// delta_L = dLoss/dout for the task-mean loss over N points.
//   MSE   mean((out - y)^2) over N*O entries:      2 (out - y) / (N O)
//   CE    mean_n(logsumexp(z_n) - z_n[y_n]):       (softmax(z_n) - onehot(y_n)) / N
// For CE also stores p = softmax(z) (the R-operator's loss Hessian needs it).
// yi must be range-checked (0 <= yi < O) by the caller before this runs.
template <typename T>
MK_HD void loss_grad(int loss, i64 N, i64 O, const T* MK_RESTRICT out, const T* MK_RESTRICT yf,
                     const int64_t* MK_RESTRICT yi, T* MK_RESTRICT dL, T* MK_RESTRICT prob) {
  if (loss == kMSE) {
    const T s = T(2) / T(N * O);
    for (i64 i = 0; i < N * O; ++i) dL[i] = (out[i] - yf[i]) * s;
    return;
  }
  const T invN = T(1) / T(N);
  for (i64 n = 0; n < N; ++n) {
    const T* z = out + n * O;
    T* p = prob + n * O;
    T m = z[0];
    for (i64 j = 1; j < O; ++j) m = z[j] > m ? z[j] : m;
    T s = T(0);
    for (i64 j = 0; j < O; ++j) {
      p[j] = mk_exp(z[j] - m);
      s += p[j];
    }
    const T inv = T(1) / s;
    for (i64 j = 0; j < O; ++j) p[j] *= inv;
    for (i64 j = 0; j < O; ++j) dL[n * O + j] = p[j] * invN;
    dL[n * O + yi[n]] = (p[yi[n]] - T(1)) * invN;
  }
}

// The task-mean loss value (the forward of the meta-objective; loss_grad is its gradient).
//   MSE   mean((out - y)^2) over N*O entries
//   CE    mean_n(m_n + log sum_j exp(z_nj - m_n) - z_n[y_n]),  m_n = max_j z_nj
// yi must be range-checked by the caller.
MK_HD float mk_log(float v) { return logf(v); }
MK_HD double mk_log(double v) { return log(v); }

template <typename T>
MK_HD T loss_value(int loss, i64 N, i64 O, const T* MK_RESTRICT out, const T* MK_RESTRICT yf,
                   const int64_t* MK_RESTRICT yi) {
  T acc = T(0);
  if (loss == kMSE) {
    for (i64 i = 0; i < N * O; ++i) {
      const T d = out[i] - yf[i];
      acc += d * d;
    }
    return acc / T(N * O);
  }
  for (i64 n = 0; n < N; ++n) {
    const T* z = out + n * O;
    T m = z[0];
    for (i64 j = 1; j < O; ++j) m = z[j] > m ? z[j] : m;
    T e = T(0);
    for (i64 j = 0; j < O; ++j) e += mk_exp(z[j] - m);
    acc += m + mk_log(e) - z[yi[n]];
  }
  return acc / T(N);
}

// R{delta_L} = H_out R{z_L}:  MSE 2/(N O) R;  CE per point (p * R - p (p . R)) / N.
template <typename T>
MK_HD void loss_hvp(int loss, i64 N, i64 O, const T* MK_RESTRICT rz, const T* MK_RESTRICT prob,
                    T* MK_RESTRICT rd) {
  if (loss == kMSE) {
    const T s = T(2) / T(N * O);
    for (i64 i = 0; i < N * O; ++i) rd[i] = rz[i] * s;
    return;
  }
  const T invN = T(1) / T(N);
  for (i64 n = 0; n < N; ++n) {
    const T* p = prob + n * O;
    const T* r = rz + n * O;
    T pr = T(0);
    for (i64 j = 0; j < O; ++j) pr += p[j] * r[j];
    for (i64 j = 0; j < O; ++j) rd[n * O + j] = p[j] * (r[j] - pr) * invN;
  }
}

// Targets of one task: yf [N, O] (MSE) or yi [N] class indices (cross-entropy).
template <typename T>
struct Targets {
  const T* yf;
  const int64_t* yi;
};


}  // namespace task
}  // namespace metakern
