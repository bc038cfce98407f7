// cpu/gemm.h — the small dense products of the CPU kernels, with fused epilogues.
//
// Every matrix product of a task's passes (cpu/task_passes.h) goes through task::gemm:
// explicit vector tiles (cpu/gemm_simd.h) on GCC/Clang hosts, the portable register
// tiles below elsewhere and with -DMETAKERN_PORTABLE_GEMM. Host code: the CUDA
// kernels do their products themselves (cuda/adapt_kernels.cuh).
#pragma once

#include <cstdint>

#include "common/task_math.h"

namespace metakern {
namespace task {

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

// Portable register tile (hosts without vector extensions, -DMETAKERN_PORTABLE_GEMM):
// MR rows x NR columns of C in a local array.
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

// Host builds with GCC/Clang: explicit vector tiles (cpu/gemm_simd.h). Other
// compilers and -DMETAKERN_PORTABLE_GEMM use the loops above.
#if !defined(__CUDACC__) && (defined(__GNUC__) || defined(__clang__)) && !defined(METAKERN_PORTABLE_GEMM)
#define MK_HOST_SIMD 1
#include "cpu/gemm_simd.h"
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

}  // namespace task
}  // namespace metakern
