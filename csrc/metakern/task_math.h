// metakern/task_math.h — the per-task arithmetic of every fused C++/CUDA kernel.
//
// Written once, used by the CPU kernels (csrc/cpu) and usable from CUDA device code
// (every function is MK_HD: `__host__ __device__` under nvcc). No torch includes:
// raw pointers, int64 sizes, one task at a time. The arithmetic mirrors
// metakern/backends/torch_backend.py stage by stage (see docs/kernels.md).
//
// Notation, per task (N points; layer l = 1..L; widths d_0 = D .. d_L = O):
//   a_0 = x                                  [N, d_0]
//   z_l = a_{l-1} W_l^T + b_l                [N, d_l]    W_l: [d_l, d_{l-1}] (nn.Linear)
//   a_l = s(z_l) for l < L,   out = z_L
//   delta_L = dLoss/dout
//   e_{l-1} = delta_l W_l                    (gradient at layer l's input, before s')
//   delta_{l-1} = e_{l-1} * s'(z_{l-1})
//   gW_l = delta_l^T a_{l-1},   gb_l = sum_n delta_l
//
// Storage (all row-major, leading dimension = width, no padding):
//   every [N, d_l] matrix of layers 1..L lives in one buffer of N * H elements,
//   H = d_1 + .. + d_L, layer l at offset N * (d_1 + .. + d_{l-1});
//   WT holds W_l^T ([d_{l-1}, d_l]) for every layer, layer l at sum_{j<l} d_j d_{j-1}.
//
// Determinism: every output element is accumulated by one thread in a fixed order
// (matrix products sum over k in increasing order), so results do not depend on
// how tasks are split between threads.
#pragma once

#include <cmath>
#include <cstdint>

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

// Integer codes of the op schemas (docs/kernels.md).
enum Act : int { kIdentity = 0, kRelu = 1, kTanh = 2, kSigmoid = 3 };
enum Loss : int { kMSE = 0, kCrossEntropy = 1 };

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
// libm's expf/tanhf are opaque calls, ~10x slower per element than the matrix work
// they sit next to. float64 uses libm (it is the accuracy / gradcheck dtype).
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
// The forward is act_inplace / kEpiRelu; s' and s'' appear in the epilogues below.

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

// ------------------------------------------------------------------ small dense products
// Every matrix product of a task goes through one routine:
//
//   C[m, j] = init(m, j) + sum_k A(m, k) B[k, j],   A(m, k) = A[m*sam + k*sak]
//
// B and C row-major (leading dimensions ldb, ldc), A anywhere (A^T: sam = 1, sak = ld).
// init: 0, the current C (accumulate), or a bias row b[j]. k runs in increasing order
// for every element on every code path, so results depend on the inputs only.
// An epilogue, applied to each finished element before it is stored, fuses the
// elementwise step that follows the product (activation, s' mask, R-operator term);
// its auxiliary matrices share C's layout (element (m, j) at offset m*ldc + j).
enum GemmInit : int { kInitZero = 0, kInitC = 1, kInitBias = 2 };

enum EpiKind : int {
  kEpiStore = 0,   // C = c
  kEpiRelu = 1,    // C = max(c, 0)                       (forward, relu)
  kEpiDeriv = 2,   // C = c, out2 = c * s'(z), s' from a  (e and delta; R{z} and R{a})
  kEpiRDelta = 3,  // C = c * s'(z) + e * s''(z) * rz     (R{delta} of a hidden layer)
};

template <typename T>
struct Epilogue {
  int kind = kEpiStore;
  int act = kIdentity;
  const T* a = nullptr;   // activations s(z)
  const T* e = nullptr;   // kEpiRDelta: e = delta W (before s')
  const T* rz = nullptr;  // kEpiRDelta: R{z}
  T* out2 = nullptr;      // kEpiDeriv: second output

  // The same epilogue for a sub-block starting at element offset `off` of C.
  MK_HD Epilogue shifted(i64 off) const {
    Epilogue s = *this;
    if (a) s.a += off;
    if (e) s.e += off;
    if (rz) s.rz += off;
    if (out2) s.out2 += off;
    return s;
  }

  // Finished element c at offset i: returns the value stored in C (and writes out2).
  MK_HD T apply(T c, i64 i) const {
    switch (kind) {
      case kEpiRelu: return c < T(0) ? T(0) : c;
      case kEpiDeriv: out2[i] = mul_d1_one(c, a[i]); return c;
      case kEpiRDelta: {
        if (act == kTanh) {
          const T d1 = T(1) - a[i] * a[i];
          return c * d1 + e[i] * (T(-2) * a[i] * d1) * rz[i];
        }
        if (act == kSigmoid) {
          const T d1 = a[i] * (T(1) - a[i]);
          return c * d1 + e[i] * (d1 * (T(1) - T(2) * a[i])) * rz[i];
        }
        return mul_d1_one(c, a[i]);
      }
      default: return c;
    }
  }
  // c * s'(z) with s' from a; relu selects (0 where a <= 0, as autograd), not multiplies.
  MK_HD T mul_d1_one(T c, T av) const {
    switch (act) {
      case kRelu: return av > T(0) ? c : T(0);
      case kTanh: return c * (T(1) - av * av);
      case kSigmoid: return c * (av * (T(1) - av));
      default: return c;
    }
  }
};

// Portable register tile (device code and hosts without vector extensions): MR rows
// x NR columns of C in a local array.
template <typename T, int MR, int NR>
MK_HD void gemm_micro(i64 K, const T* MK_RESTRICT A, i64 sam, i64 sak, const T* MK_RESTRICT B, i64 ldb,
                      T* MK_RESTRICT C, i64 ldc, int init, const T* bias, const Epilogue<T>& epi) {
  T c[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) c[r][j] = init == kInitC ? C[r * ldc + j] : init == kInitBias ? bias[j] : T(0);
  for (i64 k = 0; k < K; ++k) {
    const T* MK_RESTRICT b = B + k * ldb;
    for (int r = 0; r < MR; ++r) {
      const T a = A[r * sam + k * sak];
      for (int j = 0; j < NR; ++j) c[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) C[r * ldc + j] = epi.apply(c[r][j], r * ldc + j);
}

template <typename T>
struct GemmBlock {
  static constexpr int MR = 8;                    // rows of C per micro-tile
  static constexpr int NR = 64 / int(sizeof(T));  // columns per micro-tile
};

// Column sweep for a block of MR rows: NR-wide tiles, then NR/2, NR/4, then single
// columns (any width; no padding needed).
template <typename T, int MR>
MK_HD void gemm_rows_portable(i64 Nc, i64 K, const T* A, i64 sam, i64 sak, const T* B, i64 ldb, T* C, i64 ldc,
                              int init, const T* bias, const Epilogue<T>& epi) {
  constexpr int NR = GemmBlock<T>::NR;
  i64 j = 0;
  for (; j + NR <= Nc; j += NR)
    gemm_micro<T, MR, NR>(K, A, sam, sak, B + j, ldb, C + j, ldc, init, bias + j, epi.shifted(j));
  if (j + NR / 2 <= Nc) {
    gemm_micro<T, MR, NR / 2>(K, A, sam, sak, B + j, ldb, C + j, ldc, init, bias + j, epi.shifted(j));
    j += NR / 2;
  }
  if (j + NR / 4 <= Nc) {
    gemm_micro<T, MR, NR / 4>(K, A, sam, sak, B + j, ldb, C + j, ldc, init, bias + j, epi.shifted(j));
    j += NR / 4;
  }
  for (; j < Nc; ++j) gemm_micro<T, MR, 1>(K, A, sam, sak, B + j, ldb, C + j, ldc, init, bias + j, epi.shifted(j));
}

template <typename T>
MK_HD void gemm_portable(i64 M, i64 Nc, i64 K, const T* A, i64 sam, i64 sak, const T* B, i64 ldb, T* C, i64 ldc,
                         int init, const T* bias, const Epilogue<T>& epi) {
  constexpr int MR = GemmBlock<T>::MR;
  static_assert(MR == 8, "the row-tail switch below assumes MR == 8");
  i64 m = 0;
  for (; m + MR <= M; m += MR)
    gemm_rows_portable<T, MR>(Nc, K, A + m * sam, sam, sak, B, ldb, C + m * ldc, ldc, init, bias,
                              epi.shifted(m * ldc));
  const T* Am = A + m * sam;
  T* Cm = C + m * ldc;
  const Epilogue<T> em = epi.shifted(m * ldc);
  switch (M - m) {
    case 7: gemm_rows_portable<T, 7>(Nc, K, Am, sam, sak, B, ldb, Cm, ldc, init, bias, em); break;
    case 6: gemm_rows_portable<T, 6>(Nc, K, Am, sam, sak, B, ldb, Cm, ldc, init, bias, em); break;
    case 5: gemm_rows_portable<T, 5>(Nc, K, Am, sam, sak, B, ldb, Cm, ldc, init, bias, em); break;
    case 4: gemm_rows_portable<T, 4>(Nc, K, Am, sam, sak, B, ldb, Cm, ldc, init, bias, em); break;
    case 3: gemm_rows_portable<T, 3>(Nc, K, Am, sam, sak, B, ldb, Cm, ldc, init, bias, em); break;
    case 2: gemm_rows_portable<T, 2>(Nc, K, Am, sam, sak, B, ldb, Cm, ldc, init, bias, em); break;
    case 1: gemm_rows_portable<T, 1>(Nc, K, Am, sam, sak, B, ldb, Cm, ldc, init, bias, em); break;
    default: break;
  }
}

}  // namespace task
}  // namespace metakern

// Host builds with GCC/Clang: explicit vector tiles (metakern/gemm_simd.h). nvcc
// translation units, other compilers, and -DMETAKERN_PORTABLE_GEMM use the loops above.
#if !defined(__CUDACC__) && (defined(__GNUC__) || defined(__clang__)) && !defined(METAKERN_PORTABLE_GEMM)
#define MK_HOST_SIMD 1
#include "metakern/gemm_simd.h"
#endif

namespace metakern {
namespace task {

// C[M, Nc] = init + A(M, K) B[K, Nc], then the epilogue (see above). C must not
// overlap A, B or bias.
template <typename T>
MK_HD void gemm(i64 M, i64 Nc, i64 K, const T* A, i64 sam, i64 sak, const T* B, i64 ldb, T* C, i64 ldc,
                int init, const T* bias = nullptr, const Epilogue<T>& epi = Epilogue<T>()) {
#ifdef MK_HOST_SIMD
  simd::gemm<T>(M, Nc, K, A, sam, sak, B, ldb, C, ldc, init, bias, epi);
#else
  gemm_portable<T>(M, Nc, K, A, sam, sak, B, ldb, C, ldc, init, bias, epi);
#endif
}

// s[j] = sum_n M[n, j] (n in increasing order): a product with a row of ones.
template <typename T>
MK_HD void sum_rows(i64 N, i64 n, const T* Mx, T* s) {
  const T one = T(1);
  gemm(i64(1), n, N, &one, i64(0), i64(0), Mx, n, s, n, kInitZero);
}

template <typename T>
MK_HD Epilogue<T> epi_deriv(int act, const T* a, T* out2) {
  Epilogue<T> e;
  e.kind = kEpiDeriv;
  e.act = act;
  e.a = a;
  e.out2 = out2;
  return e;
}

// WT[i, j] = W[j, i]   (W: [rows, cols] -> WT: [cols, rows])
template <typename T>
MK_HD void transpose(i64 rows, i64 cols, const T* MK_RESTRICT W, T* MK_RESTRICT WT) {
#ifdef MK_HOST_SIMD
  simd::transpose<T>(rows, cols, W, WT);
#else
  if (rows == 1 || cols == 1) {
    for (i64 i = 0; i < rows * cols; ++i) WT[i] = W[i];
    return;
  }
  for (i64 i = 0; i < cols; ++i)
    for (i64 j = 0; j < rows; ++j) WT[i * rows + j] = W[j * cols + i];
#endif
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

// ------------------------------------------------------------------ forward
// z_l = a_{l-1} W_l^T + b_l, a_l = s(z_l) (l < L). Writes W_l^T to WT (kept for the
// R-operator) and a_1 .. a_{L-1}, out = z_L to A.
template <typename T>
MK_HD void forward(const Mlp& net, i64 N, const T* theta, const T* x, int act, T* WT, T* A) {
  LayerOff o{0, 0, 0};
  const T* a_prev = x;
  for (int l = 1; l <= net.L; ++l) {
    const i64 ni = net.in(l), no = net.out(l);
    const T* W = theta + o.w;
    const T* b = W + no * ni;
    T* wt = WT + o.wt;
    T* z = A + N * o.h;
    transpose(no, ni, W, wt);
    // z = b + a_prev W^T; relu fused into the store, tanh / sigmoid a separate pass
    Epilogue<T> epi;
    if (l < net.L && act == kRelu) epi.kind = kEpiRelu;
    gemm(N, no, ni, a_prev, ni, i64(1), wt, no, z, no, kInitBias, b, epi);
    if (l < net.L && (act == kTanh || act == kSigmoid)) act_inplace(act, N * no, z);
    a_prev = z;
    o.w += no * (ni + 1);
    o.wt += no * ni;
    o.h += no;
  }
}

// Output of the forward pass (z_L) inside A.
template <typename T>
MK_HD T* output_of(const Mlp& net, i64 N, T* A) {
  return A + N * (net.H - net.d[net.L]);
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

// ------------------------------------------------------------------ backward
// Reverse sweep from delta_L (already in D at layer L):
//   gW_l = delta_l^T a_{l-1},  gb_l = sum_n delta_l,
//   e_{l-1} = delta_l W_l (kept in E for the R-operator), delta_{l-1} = e_{l-1} s'(z_{l-1}),
//   gx = delta_1 W_1 when gx != nullptr.
// g: [P] packed like theta.
template <typename T>
MK_HD void backward(const Mlp& net, i64 N, const T* theta, const T* x, int act, const T* A, T* E, T* D, T* g,
                    T* gx) {
  LayerOff o = layer_off(net, net.L);
  for (int l = net.L; l >= 1; --l) {
    const i64 ni = net.in(l), no = net.out(l);
    const T* W = theta + o.w;
    const T* delta = D + N * o.h;
    const i64 h_prev = o.h - ni;  // layer l-1's offset (meaningful for l > 1)
    const T* a_prev = l > 1 ? A + N * h_prev : x;
    // gW_l[j, i] = sum_n delta[n, j] a_prev[n, i]   (A operand = delta^T)
    gemm(no, ni, N, delta, i64(1), no, a_prev, ni, g + o.w, ni, kInitZero);
    sum_rows(N, no, delta, g + o.w + no * ni);
    if (l > 1) {
      T* e = E + N * h_prev;
      T* dp = D + N * h_prev;
      // e = delta W (kept), delta_prev = e * s'(z_prev) fused into the store
      gemm(N, ni, no, delta, no, i64(1), W, ni, e, ni, kInitZero, static_cast<const T*>(nullptr),
           epi_deriv<T>(act, a_prev, dp));
    } else if (gx != nullptr) {
      gemm(N, ni, no, delta, no, i64(1), W, ni, gx, ni, kInitZero);
    }
    if (l > 1) {
      o.w -= net.d[l - 1] * (net.d[l - 2] + 1);
      o.wt -= net.d[l - 1] * net.d[l - 2];
      o.h = h_prev;
    }
  }
}

// ------------------------------------------------------------------ R-operator
// One forward-over-reverse sweep at theta in direction u (packed like theta), after
// forward() and backward() at theta filled WT, A, E, D (and prob for CE):
//   R{a_0} = 0,  R{z_l} = R{a_{l-1}} W_l^T + a_{l-1} uW_l^T + ub_l,  R{a_l} = s'(z_l) R{z_l}
//   R{delta_L} = H_out R{z_L}
//   R{gW_l} = R{delta_l}^T a_{l-1} + delta_l^T R{a_{l-1}},  R{gb_l} = sum_n R{delta_l}
//   R{delta_{l-1}} = (R{delta_l} W_l + delta_l uW_l) s'(z_{l-1}) + e_{l-1} s''(z_{l-1}) R{z_{l-1}}
//   R{delta_0} = R{delta_1} W_1 + delta_1 uW_1    (= d/dx (u . grad_theta L))
// Writes hu = H u ([P]) and, when rd0 != nullptr, R{delta_0} ([N, d_0]).
template <typename T>
MK_HD void rop(const Mlp& net, i64 N, const T* theta, const T* u, const T* x, int act, int loss, const T* WT,
               const T* A, const T* E, const T* D, const T* prob, T* uWT, T* RZ, T* RA, T* RD, T* hu, T* rd0) {
  // R-forward
  LayerOff o{0, 0, 0};
  for (int l = 1; l <= net.L; ++l) {
    const i64 ni = net.in(l), no = net.out(l);
    const T* uW = u + o.w;
    const T* ub = uW + no * ni;
    T* uwt = uWT + o.wt;
    T* rz = RZ + N * o.h;
    const T* a_prev = l > 1 ? A + N * (o.h - ni) : x;
    transpose(no, ni, uW, uwt);
    // R{z} = ub + a_prev uW^T + R{a_prev} W^T;  R{a} = R{z} s'(z) fused into the last store
    const Epilogue<T> epi = l < net.L ? epi_deriv<T>(act, A + N * o.h, RA + N * o.h) : Epilogue<T>();
    if (l > 1) {
      gemm(N, no, ni, a_prev, ni, i64(1), uwt, no, rz, no, kInitBias, ub);
      gemm(N, no, ni, RA + N * (o.h - ni), ni, i64(1), WT + o.wt, no, rz, no, kInitC, static_cast<const T*>(nullptr),
           epi);
    } else {
      gemm(N, no, ni, a_prev, ni, i64(1), uwt, no, rz, no, kInitBias, ub, epi);
    }
    if (l < net.L) {
      o.w += no * (ni + 1);
      o.wt += no * ni;
      o.h += no;
    }
  }
  // output: R{delta_L}
  const i64 O = net.d[net.L];
  loss_hvp(loss, N, O, RZ + N * o.h, prob, RD + N * o.h);
  // R-backward
  for (int l = net.L; l >= 1; --l) {
    const i64 ni = net.in(l), no = net.out(l);
    const T* W = theta + o.w;
    const T* uW = u + o.w;
    const T* delta = D + N * o.h;
    const T* rdelta = RD + N * o.h;
    const i64 h_prev = o.h - ni;
    const T* a_prev = l > 1 ? A + N * h_prev : x;
    T* rgW = hu + o.w;
    gemm(no, ni, N, rdelta, i64(1), no, a_prev, ni, rgW, ni, kInitZero);
    if (l > 1) gemm(no, ni, N, delta, i64(1), no, RA + N * h_prev, ni, rgW, ni, kInitC);
    sum_rows(N, no, rdelta, rgW + no * ni);
    T* back = l > 1 ? RD + N * h_prev : rd0;
    if (back != nullptr) {
      // back = R{delta} W + delta uW, then (hidden layers) the activation step
      //   R{delta_prev} = back s'(z_prev) + e_prev s''(z_prev) R{z_prev}   fused into the store
      Epilogue<T> epi;
      if (l > 1) {
        epi.kind = kEpiRDelta;
        epi.act = act;
        epi.a = A + N * h_prev;
        epi.e = E + N * h_prev;
        epi.rz = RZ + N * h_prev;
      }
      gemm(N, ni, no, rdelta, no, i64(1), W, ni, back, ni, kInitZero);
      gemm(N, ni, no, delta, no, i64(1), uW, ni, back, ni, kInitC, static_cast<const T*>(nullptr), epi);
    }
    if (l > 1) {
      o.w -= net.d[l - 1] * (net.d[l - 2] + 1);
      o.wt -= net.d[l - 1] * net.d[l - 2];
      o.h = h_prev;
    }
  }
}

// ------------------------------------------------------------------ per-task scratch
// One contiguous block per worker, carved into the buffers below; sizes in elements,
// each piece rounded up to 16 elements (64-byte aligned when the block is).
template <typename T>
struct Scratch {
  T* WT;      // [nW]   W_l^T of the current parameters
  T* uWT;     // [nW]   uW_l^T of the R-operator direction
  T* A;       // [N H]  a_1 .. a_{L-1}, z_L
  T* E;       // [N H]  e_l = delta_{l+1} W_{l+1}
  T* D;       // [N H]  delta_l
  T* RZ;      // [N H]  R{z_l}
  T* RA;      // [N H]  R{a_l}
  T* RD;      // [N H]  R{delta_l}
  T* prob;    // [N O]  softmax (cross-entropy)
  T* rd0;     // [N D]  R{delta_0}
  T* g;       // [P]    gradient
  T* hu;      // [P]    H u
  T* u;       // [P]    lr * v
  T* thetas;  // [max(K,1) P]  theta_0 .. theta_{K-1}

  MK_HD static i64 round16(i64 n) { return (n + 15) / 16 * 16; }

  // Elements needed; with_rop = false leaves out the R-operator buffers.
  MK_HD static i64 size(const Mlp& net, i64 N, i64 K, bool with_rop) {
    const i64 nH = round16(N * net.H), nW = round16(net.nW), P = round16(net.P);
    const i64 nO = round16(N * net.d[net.L]), nD = round16(N * net.d[0]);
    i64 s = nW + 3 * nH + nO + P + (K > 1 ? K : 1) * P;
    if (with_rop) s += nW + 3 * nH + nD + 2 * P;
    return s;
  }

  MK_HD static Scratch carve(T* base, const Mlp& net, i64 N, i64 K, bool with_rop) {
    const i64 nH = round16(N * net.H), nW = round16(net.nW), P = round16(net.P);
    const i64 nO = round16(N * net.d[net.L]), nD = round16(N * net.d[0]);
    Scratch s{};
    T* p = base;
    s.WT = p; p += nW;
    s.A = p; p += nH;
    s.E = p; p += nH;
    s.D = p; p += nH;
    s.prob = p; p += nO;
    s.g = p; p += P;
    s.thetas = p; p += (K > 1 ? K : 1) * P;
    if (with_rop) {
      s.uWT = p; p += nW;
      s.RZ = p; p += nH;
      s.RA = p; p += nH;
      s.RD = p; p += nH;
      s.rd0 = p; p += nD;
      s.hu = p; p += P;
      s.u = p; p += P;
    }
    return s;
  }
};

// Targets of one task: yf [N, O] (MSE) or yi [N] class indices (cross-entropy).
template <typename T>
struct Targets {
  const T* yf;
  const int64_t* yi;
};

// Forward + loss gradient + backward at theta: leaves g = grad L(theta) in s.g and
// the activations/deltas the R-operator needs in s.
template <typename T>
MK_HD void grad_at(const Mlp& net, i64 N, const T* theta, const T* x, Targets<T> y, int act, int loss,
                   Scratch<T>& s) {
  forward(net, N, theta, x, act, s.WT, s.A);
  const i64 O = net.d[net.L];
  const i64 hL = net.H - O;
  loss_grad(loss, N, O, s.A + N * hL, y.yf, y.yi, s.D + N * hL, s.prob);
  backward(net, N, theta, x, act, s.A, s.E, s.D, s.g, static_cast<T*>(nullptr));
}

// ------------------------------------------------------------------ task drivers
// adapt_fwd for one task: theta_{k+1} = theta_k - lr * g_k, k < K; out = theta_K [P].
template <typename T>
MK_HD void adapt_forward_task(const Mlp& net, i64 N, i64 K, const T* theta0, const T* lr, const T* x,
                              Targets<T> y, int act, int loss, T* out, Scratch<T>& s) {
  const i64 P = net.P;
  copy(P, theta0, out);
  for (i64 k = 0; k < K; ++k) {
    grad_at(net, N, out, x, y, act, loss, s);
    sgd_step_inplace(P, lr, s.g, out);
  }
}

// adapt_bwd for one task, from v_K = vK:
//   recompute theta_0 .. theta_{K-1} (second order; only those K vectors are kept),
//   then for k = K-1 .. 0:  u = lr * v_{k+1};  g_lr -= g_k * v_{k+1};
//   second order: v_k = v_{k+1} - H_k u,  g_x -= R{delta_0};  first order: v_k = v_{k+1}.
// Outputs g_theta = v_0 [P], g_lr [P], g_x [N, D] (zeros unless second order and need_x).
// kept (second order; K blocks of Scratch::size(net, N, 1, false), or nullptr): the
// recomputing walk leaves grad_at's state of step k in kept[k], so the reverse loop
// recomputes only step K-1 instead of all K (see maml_task).
template <typename T>
MK_HD void adapt_backward_task(const Mlp& net, i64 N, i64 K, const T* theta0, const T* lr, const T* x,
                               Targets<T> y, const T* vK, int act, int loss, bool first_order, bool need_x,
                               T* g_theta, T* g_lr, T* g_x, Scratch<T>& s, Scratch<T>* kept) {
  const i64 P = net.P, ND = N * net.d[0];
  T* v = g_theta;  // v_k lives in the output row
  copy(P, vK, v);
  fill(P, T(0), g_lr);
  fill(ND, T(0), g_x);
  if (K == 0) return;

  if (first_order) {
    // v is constant; g_lr = -sum_k g_k * v_K, walking theta_0 .. theta_{K-1} forward.
    T* cur = s.thetas;
    copy(P, theta0, cur);
    for (i64 k = 0; k < K; ++k) {
      grad_at(net, N, cur, x, y, act, loss, s);
      lr_grad(P, s.g, v, g_lr);
      if (k + 1 < K) sgd_step_inplace(P, lr, s.g, cur);
    }
    return;
  }

  // theta_0 .. theta_{K-1}
  copy(P, theta0, s.thetas);
  for (i64 k = 0; k + 1 < K; ++k) {
    const T* th = s.thetas + k * P;
    Scratch<T>& w = kept != nullptr ? kept[k] : s;
    grad_at(net, N, th, x, y, act, loss, w);
    sgd_step(P, th, lr, w.g, s.thetas + (k + 1) * P);
  }
  // reverse loop
  for (i64 k = K - 1; k >= 0; --k) {
    const T* th = s.thetas + k * P;
    Scratch<T>& w = kept != nullptr ? kept[k] : s;
    if (kept == nullptr || k + 1 == K) grad_at(net, N, th, x, y, act, loss, w);
    reverse_step_pre(P, lr, w.g, v, s.u, g_lr);
    rop(net, N, th, s.u, x, act, loss, w.WT, w.A, w.E, w.D, w.prob, s.uWT, s.RZ, s.RA, s.RD, s.hu,
        need_x ? s.rd0 : static_cast<T*>(nullptr));
    sub_inplace(P, s.hu, v);
    if (need_x) sub_inplace(ND, s.rd0, g_x);
  }
}

// maml_fwd for one task: the meta-objective l = L_query(theta_K) and, when need_grad,
// its gradient, in one pass:
//   walk   theta_{k+1} = theta_k - lr * g_k on the support set, k < K (theta_0 .. theta_K
//          kept in s.thetas);
//   query  forward at theta_K in q's buffers, l, and v_K = grad L_query(theta_K);
//   back   the reverse loop of adapt_backward_task from v_K.
// The reverse loop needs grad_at's state (W^T, activations, e, deltas, softmax, g)
// at every theta_k. With `kept` (K blocks of Scratch::size(net, Ns, 1, false), one
// per step) the walk leaves each step's state in its own block and nothing is
// recomputed; without it the walk's state lives in s, survives only for k = K-1,
// and steps 0 .. K-2 are recomputed. The caller keeps them when K blocks fit a
// per-thread budget (the blocks are per worker thread, not per task).
// First order: g_theta = v_K and g_lr = -(sum_k g_k) * v_K, summed during the walk.
// g_lr may be null when no lr gradient is wanted (maml_fwd's need_lr).
// s: Scratch::size(net, Ns, K + 1, !first_order); q: Scratch::size(net, Nq, 0, false).
template <typename T>
MK_HD void maml_task(const Mlp& net, i64 Ns, i64 Nq, i64 K, const T* theta0, const T* lr, const T* xs,
                     Targets<T> ys, const T* xq, Targets<T> yq, int act, int loss, bool first_order,
                     bool need_grad, T* loss_out, T* g_theta, T* g_lr, Scratch<T>& s, Scratch<T>& q,
                     Scratch<T>* kept) {
  const i64 P = net.P;
  const bool sum_g = need_grad && first_order && g_lr != nullptr;
  if (sum_g) fill(P, T(0), g_lr);
  copy(P, theta0, s.thetas);
  for (i64 k = 0; k < K; ++k) {
    const T* th = s.thetas + k * P;
    Scratch<T>& w = kept != nullptr ? kept[k] : s;
    grad_at(net, Ns, th, xs, ys, act, loss, w);
    if (sum_g)
      for (i64 i = 0; i < P; ++i) g_lr[i] += w.g[i];
    sgd_step(P, th, lr, w.g, s.thetas + (k + 1) * P);
  }
  const T* thK = s.thetas + K * P;
  forward(net, Nq, thK, xq, act, q.WT, q.A);
  const i64 O = net.d[net.L];
  const i64 hL = net.H - O;
  *loss_out = loss_value(loss, Nq, O, q.A + Nq * hL, yq.yf, yq.yi);
  if (!need_grad) return;
  loss_grad(loss, Nq, O, q.A + Nq * hL, yq.yf, yq.yi, q.D + Nq * hL, q.prob);
  T* v = g_theta;  // v_k lives in the output row
  backward(net, Nq, thK, xq, act, q.A, q.E, q.D, v, static_cast<T*>(nullptr));
  if (first_order) {
    if (sum_g)
      for (i64 i = 0; i < P; ++i) g_lr[i] = -g_lr[i] * v[i];
    return;
  }
  if (g_lr != nullptr) fill(P, T(0), g_lr);
  for (i64 k = K - 1; k >= 0; --k) {
    const T* th = s.thetas + k * P;
    Scratch<T>& w = kept != nullptr ? kept[k] : s;
    if (kept == nullptr && k + 1 < K) grad_at(net, Ns, th, xs, ys, act, loss, s);
    reverse_step_pre(P, lr, w.g, v, s.u, g_lr);
    rop(net, Ns, th, s.u, xs, act, loss, w.WT, w.A, w.E, w.D, w.prob, s.uWT, s.RZ, s.RA, s.RD, s.hu,
        static_cast<T*>(nullptr));
    sub_inplace(P, s.hu, v);
  }
}

// mlp_fwd for one task: out = z_L [N, O].
template <typename T>
MK_HD void mlp_forward_task(const Mlp& net, i64 N, const T* theta, const T* x, int act, T* out, Scratch<T>& s) {
  forward(net, N, theta, x, act, s.WT, s.A);
  const i64 O = net.d[net.L];
  const T* z = output_of(net, N, s.A);
  copy(N * O, z, out);
}

// mlp_bwd for one task: from delta_L = grad_out [N, O], g_theta [P] and g_x [N, D]
// (g_x = delta_1 W_1 when need_x, zeros otherwise).
template <typename T>
MK_HD void mlp_backward_task(const Mlp& net, i64 N, const T* theta, const T* x, const T* grad_out, int act,
                             bool need_x, T* g_theta, T* g_x, Scratch<T>& s) {
  forward(net, N, theta, x, act, s.WT, s.A);
  const i64 O = net.d[net.L];
  T* dL = s.D + N * (net.H - O);
  copy(N * O, grad_out, dL);
  if (!need_x) fill(N * net.d[0], T(0), g_x);
  backward(net, N, theta, x, act, s.A, s.E, s.D, g_theta, need_x ? g_x : static_cast<T*>(nullptr));
}

}  // namespace task
}  // namespace metakern
