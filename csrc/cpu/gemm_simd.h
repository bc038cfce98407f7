// cpu/gemm_simd.h — host (CPU) small-matrix product for cpu/gemm.h.
//
//   C[M, Nc] = epilogue(init + A(M, K) B[K, Nc]),   A(m, k) = A[m*sam + k*sak],  B, C row-major
//   (the contract of task::gemm in cpu/gemm.h).
//
// The matrices of one task are tiny (10 x 40 times 40 x 40 in the sine benchmark),
// so BLAS calls would cost more than the arithmetic. Instead: register tiles of MR
// rows x NV vectors of C, written with GCC/Clang vector extensions so the compiler
// keeps the accumulators in vector registers; B rows are loaded as vectors, A
// elements broadcast (an axpy per k, innermost loop contiguous, no reductions).
// With AVX-512 the last vector of a row block is masked, so any width runs without
// scalar tails; otherwise leftover columns take half/quarter vectors then scalars.
//
// Summation order: every element of C is  init + sum_k A(m,k) B(k,j)  accumulated over k
// in increasing order (fused multiply-add where the target has it); which tile variant
// an element takes depends on the shapes only. Results depend on the inputs only:
// deterministic for any thread split. Epilogues are applied to each finished vector
// in registers, before the store.
//
// Included by cpu/gemm.h for host compilers with vector extensions (not nvcc).
#pragma once

#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace metakern {
namespace task {
namespace simd {

using i64 = int64_t;

// Fully unroll the fixed-length tile loops before scalar replacement, so the
// accumulator array lives in registers (masked-load builtins otherwise keep it in memory).
#define MK_UNROLL _Pragma("GCC unroll 16")

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;  // one zmm register
constexpr int kMR = 10;        // 10 x 2 accumulators + 2 B vectors + 1 broadcast of 32 registers
constexpr bool kMasked = true;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;  // one ymm register
constexpr int kMR = 6;         // 6 x 2 + 2 + 1 of 16 registers
constexpr bool kMasked = false;
#else
constexpr int kVecBytes = 16;  // SSE / NEON
constexpr int kMR = 6;
constexpr bool kMasked = false;
#endif

template <typename T>
struct Vec {
  static constexpr int L = kVecBytes / int(sizeof(T));  // lanes
  typedef T type __attribute__((vector_size(kVecBytes)));
};

template <typename T>
inline typename Vec<T>::type vload(const T* p) {
  typename Vec<T>::type v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void vstore(T* p, typename Vec<T>::type v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

#if defined(__AVX512F__)
// Masked loads read nothing (and cannot fault) outside the first n lanes.
inline Vec<float>::type vload_n(const float* p, int n) {
  return (Vec<float>::type)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
}
inline Vec<double>::type vload_n(const double* p, int n) {
  return (Vec<double>::type)_mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1u), p);
}
inline void vstore_n(float* p, Vec<float>::type v, int n) {
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), (__m512)v);
}
inline void vstore_n(double* p, Vec<double>::type v, int n) {
  _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1u), (__m512d)v);
}
#endif

// The epilogue on one vector of C at element offset `off` (aux matrices share C's
// layout); `n` valid lanes (n < L only for the masked last vector).
template <typename T>
inline typename Vec<T>::type vload_aux(const T* p, int n) {
#if defined(__AVX512F__)
  if (n < Vec<T>::L) return vload_n(p, n);
#endif
  (void)n;
  return vload(p);
}
template <typename T>
inline void vstore_any(T* p, typename Vec<T>::type v, int n) {
#if defined(__AVX512F__)
  if (n < Vec<T>::L) {
    vstore_n(p, v, n);
    return;
  }
#endif
  (void)n;
  vstore(p, v);
}

// The epilogue on one finished vector of C at element offset `off` (aux matrices share
// C's layout), `n` valid lanes. EPI is a compile-time EpiKind: the product tiles carry
// only the code of their own epilogue (the instruction cache matters at these sizes).
template <typename T, int EPI>
inline typename Vec<T>::type epilogue(const Epilogue<T>& epi, typename Vec<T>::type c, i64 off, int n) {
  using V = typename Vec<T>::type;
  const V zero = V{};
  const V one = zero + T(1);
  if constexpr (EPI == kEpiRelu) {
    return c < zero ? zero : c;  // NaN kept
  } else if constexpr (EPI == kEpiDeriv || EPI == kEpiRDelta) {
    const V a = vload_aux(epi.a + off, n);
    V d;
    if (epi.act == kRelu) {
      d = a > zero ? c : zero;
    } else if (epi.act == kTanh) {
      const V d1 = one - a * a;
      d = c * d1;
      if constexpr (EPI == kEpiRDelta) d = d + vload_aux(epi.e + off, n) * ((T(-2) * a) * d1) * vload_aux(epi.rz + off, n);
    } else if (epi.act == kSigmoid) {
      const V d1 = a * (one - a);
      d = c * d1;
      if constexpr (EPI == kEpiRDelta)
        d = d + vload_aux(epi.e + off, n) * (d1 * (one - T(2) * a)) * vload_aux(epi.rz + off, n);
    } else {
      d = c;
    }
    if constexpr (EPI == kEpiRDelta) {
      return d;
    } else {
      vstore_any(epi.out2 + off, d, n);
      return c;
    }
  } else {
    (void)epi, (void)off, (void)n, (void)one;
    return c;
  }
}

// One register tile: MR rows x NV vectors; the last vector holds `last` valid lanes
// (1..L; only below L when MASK). INIT: GemmInit (zero, C, bias row); EPI: EpiKind.
template <typename T, int MR, int NV, bool MASK, int INIT, int EPI>
inline void tile(i64 K, const T* __restrict__ A, i64 sam, i64 sak, const T* __restrict__ B, i64 ldb,
                 T* __restrict__ C, i64 ldc, int last, const T* bias, const Epilogue<T>& epi, i64 off) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L;
  V c[MR][NV];
  MK_UNROLL for (int r = 0; r < MR; ++r)
    MK_UNROLL for (int v = 0; v < NV; ++v) {
      const int n = (MASK && v == NV - 1) ? last : L;
      if (INIT == kInitZero)
        c[r][v] = V{};
      else if (INIT == kInitBias)
        c[r][v] = vload_aux(bias + v * L, n);
      else
        c[r][v] = vload_aux(C + r * ldc + v * L, n);
    }
  for (i64 k = 0; k < K; ++k) {
    const T* b = B + k * ldb;
    V bv[NV];
    MK_UNROLL for (int v = 0; v < NV; ++v) {
#if defined(__AVX512F__)
      if (MASK && v == NV - 1)
        bv[v] = vload_n(b + v * L, last);
      else
#endif
        bv[v] = vload(b + v * L);
    }
    MK_UNROLL for (int r = 0; r < MR; ++r) {
      const T a = A[r * sam + k * sak];
      MK_UNROLL for (int v = 0; v < NV; ++v) c[r][v] += a * bv[v];
    }
  }
  MK_UNROLL for (int r = 0; r < MR; ++r)
    MK_UNROLL for (int v = 0; v < NV; ++v) {
      const int n = (MASK && v == NV - 1) ? last : L;
      vstore_any(C + r * ldc + v * L, epilogue<T, EPI>(epi, c[r][v], off + r * ldc + v * L, n), n);
    }
}

// Scalar tile for leftover columns (targets without masking): MR rows, one column.
template <typename T, int MR, int INIT>
inline void tile_scalar(i64 K, const T* __restrict__ A, i64 sam, i64 sak, const T* __restrict__ B, i64 ldb,
                        T* __restrict__ C, i64 ldc, const T* bias, const Epilogue<T>& epi, i64 off) {
  T c[MR];
  for (int r = 0; r < MR; ++r) c[r] = INIT == kInitC ? C[r * ldc] : INIT == kInitBias ? bias[0] : T(0);
  for (i64 k = 0; k < K; ++k) {
    const T b = B[k * ldb];
    for (int r = 0; r < MR; ++r) c[r] += A[r * sam + k * sak] * b;
  }
  for (int r = 0; r < MR; ++r) C[r * ldc] = epi.apply(c[r], off + r * ldc);
}

// All columns of a block of MR rows; `off` is the block's element offset in C.
template <typename T, int MR, int INIT, int EPI>
inline void row_block(i64 Nc, i64 K, const T* A, i64 sam, i64 sak, const T* B, i64 ldb, T* C, i64 ldc,
                      const T* bias, const Epilogue<T>& epi, i64 off) {
  constexpr int L = Vec<T>::L;
  i64 j = 0;
  for (; j + 2 * L <= Nc; j += 2 * L)
    tile<T, MR, 2, false, INIT, EPI>(K, A, sam, sak, B + j, ldb, C + j, ldc, L, bias + j, epi, off + j);
  const i64 rem = Nc - j;
  if (rem == 0) return;
  if (kMasked) {
    if (rem > L)
      tile<T, MR, 2, true, INIT, EPI>(K, A, sam, sak, B + j, ldb, C + j, ldc, static_cast<int>(rem - L), bias + j,
                                      epi, off + j);
    else
      tile<T, MR, 1, true, INIT, EPI>(K, A, sam, sak, B + j, ldb, C + j, ldc, static_cast<int>(rem), bias + j, epi,
                                      off + j);
    return;
  }
  if (rem >= L) {
    tile<T, MR, 1, false, INIT, EPI>(K, A, sam, sak, B + j, ldb, C + j, ldc, L, bias + j, epi, off + j);
    j += L;
  }
  for (; j < Nc; ++j) tile_scalar<T, MR, INIT>(K, A, sam, sak, B + j, ldb, C + j, ldc, bias + j, epi, off + j);
}

// Row blocks of kMR, then the remaining rows in blocks of kMR/2, 2 and 1 (four tile
// heights in all, which keeps the number of compiled tile variants down).
template <typename T, int INIT, int EPI>
inline void gemm_rows(i64 M, i64 Nc, i64 K, const T* A, i64 sam, i64 sak, const T* B, i64 ldb, T* C, i64 ldc,
                      const T* bias, const Epilogue<T>& epi) {
  constexpr int kHalf = kMR / 2;
  i64 m = 0;
  for (; m + kMR <= M; m += kMR)
    row_block<T, kMR, INIT, EPI>(Nc, K, A + m * sam, sam, sak, B, ldb, C + m * ldc, ldc, bias, epi, m * ldc);
  for (; m + kHalf <= M; m += kHalf)
    row_block<T, kHalf, INIT, EPI>(Nc, K, A + m * sam, sam, sak, B, ldb, C + m * ldc, ldc, bias, epi, m * ldc);
  for (; m + 2 <= M; m += 2)
    row_block<T, 2, INIT, EPI>(Nc, K, A + m * sam, sam, sak, B, ldb, C + m * ldc, ldc, bias, epi, m * ldc);
  for (; m < M; ++m)
    row_block<T, 1, INIT, EPI>(Nc, K, A + m * sam, sam, sak, B, ldb, C + m * ldc, ldc, bias, epi, m * ldc);
}

// The sum of a vector's lanes as a fixed pairwise tree: lane l + lane l + L/2, then
// l + l + L/4, ... (depth log2 L instead of a chain of L adds). With AVX-512 the
// same pairs are added in registers (halves, quarters, ...), written out rather than
// left to a reduce intrinsic, whose order is the compiler's choice, and without a
// round trip through memory (which stalls on store forwarding).
template <typename T>
inline T lane_sum(typename Vec<T>::type v) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    const __m512 x = (__m512)v;
    const __m256 a = _mm512_castps512_ps256(x) + _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
    const __m128 b = _mm256_castps256_ps128(a) + _mm256_extractf128_ps(a, 1);
    const __m128 c = b + _mm_movehl_ps(b, b);
    return c[0] + c[1];
  } else {
    const __m512d x = (__m512d)v;
    const __m256d a = _mm512_castpd512_pd256(x) + _mm512_extractf64x4_pd(x, 1);
    const __m128d b = _mm256_castpd256_pd128(a) + _mm256_extractf128_pd(a, 1);
    return b[0] + b[1];
  }
#else
  constexpr int L = Vec<T>::L;
  T t[L];
  __builtin_memcpy(t, &v, sizeof(t));
  MK_UNROLL for (int w = L / 2; w >= 1; w /= 2)
    MK_UNROLL for (int l = 0; l < w; ++l) t[l] += t[l + w];
  return t[0];
#endif
}

// Single output column with A rows and B contiguous along k: one dot product per row,
// vector partial sums over k then a fixed-order lane sum (deterministic).
template <typename T>
inline void gemv_dot(i64 M, i64 K, const T* A, i64 sam, const T* B, T* C, i64 ldc, int init, const T* bias,
                     const Epilogue<T>& epi) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L;
  for (i64 m = 0; m < M; ++m) {
    const T* a = A + m * sam;
    V acc = V{};
    i64 k = 0;
    for (; k + L <= K; k += L) acc += vload(a + k) * vload(B + k);
    T s = T(0);
#if defined(__AVX512F__)
    if (k < K) acc += vload_n(a + k, static_cast<int>(K - k)) * vload_n(B + k, static_cast<int>(K - k));
#else
    for (i64 kk = k; kk < K; ++kk) s += a[kk] * B[kk];
#endif
    s += lane_sum<T>(acc);
    const T c0 = init == kInitC ? C[m * ldc] : init == kInitBias ? bias[0] : T(0);
    C[m * ldc] = epi.apply(c0 + s, m * ldc);
  }
}

// ------------------------------------------------------------------ transpose
// WT[i, j] = W[j, i], W: [rows, cols]. With AVX-512: 16 x 16 (float) / 8 x 8 (double)
// register tiles (masked at the edges), shuffles instead of strided scalar stores.
#if defined(__AVX512F__)
// GCC 12's unpack/shuffle intrinsics start from _mm512_undefined_*(), which trips a
// spurious -Wmaybe-uninitialized once inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
inline void transpose_tile(const float* src, i64 lds, float* dst, i64 ldd, int nr, int nc) {
  __m512 r[16], t[16];
  const __mmask16 mc = static_cast<__mmask16>((1u << nc) - 1u);
  MK_UNROLL for (int i = 0; i < 16; ++i) r[i] = i < nr ? _mm512_maskz_loadu_ps(mc, src + i * lds) : _mm512_setzero_ps();
  MK_UNROLL for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  MK_UNROLL for (int i = 0; i < 4; ++i) {
    r[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i + 0]), _mm512_castps_pd(t[4 * i + 2])));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i + 0]), _mm512_castps_pd(t[4 * i + 2])));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
  }
  MK_UNROLL for (int i = 0; i < 2; ++i)
    MK_UNROLL for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
      t[8 * i + j + 4] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0xdd);
    }
  MK_UNROLL for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
  const __mmask16 mr = static_cast<__mmask16>((1u << nr) - 1u);
  MK_UNROLL for (int c = 0; c < 16; ++c)
    if (c < nc) _mm512_mask_storeu_ps(dst + c * ldd, mr, r[c]);
}
inline void transpose_tile(const double* src, i64 lds, double* dst, i64 ldd, int nr, int nc) {
  __m512d r[8], t[8];
  const __mmask8 mc = static_cast<__mmask8>((1u << nc) - 1u);
  MK_UNROLL for (int i = 0; i < 8; ++i) r[i] = i < nr ? _mm512_maskz_loadu_pd(mc, src + i * lds) : _mm512_setzero_pd();
  MK_UNROLL for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm512_unpacklo_pd(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_pd(r[2 * i], r[2 * i + 1]);
  }
  MK_UNROLL for (int i = 0; i < 2; ++i)
    MK_UNROLL for (int j = 0; j < 2; ++j) {
      r[4 * i + j] = _mm512_shuffle_f64x2(t[4 * i + j], t[4 * i + j + 2], 0x88);
      r[4 * i + j + 2] = _mm512_shuffle_f64x2(t[4 * i + j], t[4 * i + j + 2], 0xdd);
    }
  MK_UNROLL for (int j = 0; j < 4; ++j) {
    t[j] = _mm512_shuffle_f64x2(r[j], r[j + 4], 0x88);
    t[j + 4] = _mm512_shuffle_f64x2(r[j], r[j + 4], 0xdd);
  }
  const __mmask8 mr = static_cast<__mmask8>((1u << nr) - 1u);
  MK_UNROLL for (int c = 0; c < 8; ++c)
    if (c < nc) _mm512_mask_storeu_pd(dst + c * ldd, mr, t[c]);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

template <typename T>
inline void transpose(i64 rows, i64 cols, const T* __restrict__ W, T* __restrict__ WT) {
  if (rows == 1 || cols == 1) {  // a vector: WT = W
    __builtin_memcpy(WT, W, sizeof(T) * static_cast<size_t>(rows * cols));
    return;
  }
#if defined(__AVX512F__)
  constexpr int B = Vec<T>::L;
  {
    for (i64 j0 = 0; j0 < rows; j0 += B)
      for (i64 i0 = 0; i0 < cols; i0 += B)
        transpose_tile(W + j0 * cols + i0, cols, WT + i0 * rows + j0, rows,
                       static_cast<int>(rows - j0 < B ? rows - j0 : B), static_cast<int>(cols - i0 < B ? cols - i0 : B));
    return;
  }
#endif
  // contiguous writes, strided reads (faster than the other order)
  for (i64 i = 0; i < cols; ++i)
    for (i64 j = 0; j < rows; ++j) WT[i * rows + j] = W[j * cols + i];
}

template <typename T>
inline void gemm(i64 M, i64 Nc, i64 K, const T* A, i64 sam, i64 sak, const T* B, i64 ldb, T* C, i64 ldc, int init,
                 const T* bias, const Epilogue<T>& epi) {
  if (M <= 0 || Nc <= 0) return;
  if (Nc == 1 && M > 1) {
    if (sam == 1 && ldc == 1 && init != kInitBias && epi.kind == kEpiStore) {
      // C^T [1, M] = B^T [1, K] A^T [K, M]: the rows of A^T are contiguous, so the M
      // outputs become the vector lanes.
      if (init == kInitC)
        gemm_rows<T, kInitC, kEpiStore>(1, M, K, B, 0, ldb, A, sak, C, 1, bias, epi);
      else
        gemm_rows<T, kInitZero, kEpiStore>(1, M, K, B, 0, ldb, A, sak, C, 1, bias, epi);
      return;
    }
    if (sak == 1 && ldb == 1) {
      gemv_dot<T>(M, K, A, sam, B, C, ldc, init, bias, epi);
      return;
    }
  }
  // (init, epilogue) pairs that the kernels use get their own tiles; any other pair
  // runs the plain product and then the epilogue element by element.
  const int key = init * 4 + epi.kind;
  switch (key) {
    case kInitZero * 4 + kEpiStore: gemm_rows<T, kInitZero, kEpiStore>(M, Nc, K, A, sam, sak, B, ldb, C, ldc, bias, epi); return;
    case kInitC * 4 + kEpiStore: gemm_rows<T, kInitC, kEpiStore>(M, Nc, K, A, sam, sak, B, ldb, C, ldc, bias, epi); return;
    case kInitBias * 4 + kEpiStore: gemm_rows<T, kInitBias, kEpiStore>(M, Nc, K, A, sam, sak, B, ldb, C, ldc, bias, epi); return;
    case kInitBias * 4 + kEpiRelu: gemm_rows<T, kInitBias, kEpiRelu>(M, Nc, K, A, sam, sak, B, ldb, C, ldc, bias, epi); return;
    case kInitZero * 4 + kEpiDeriv: gemm_rows<T, kInitZero, kEpiDeriv>(M, Nc, K, A, sam, sak, B, ldb, C, ldc, bias, epi); return;
    case kInitBias * 4 + kEpiDeriv: gemm_rows<T, kInitBias, kEpiDeriv>(M, Nc, K, A, sam, sak, B, ldb, C, ldc, bias, epi); return;
    case kInitC * 4 + kEpiDeriv: gemm_rows<T, kInitC, kEpiDeriv>(M, Nc, K, A, sam, sak, B, ldb, C, ldc, bias, epi); return;
    case kInitC * 4 + kEpiRDelta: gemm_rows<T, kInitC, kEpiRDelta>(M, Nc, K, A, sam, sak, B, ldb, C, ldc, bias, epi); return;
    default: break;
  }
  simd::gemm<T>(M, Nc, K, A, sam, sak, B, ldb, C, ldc, init, bias, Epilogue<T>());
  for (i64 m = 0; m < M; ++m)
    for (i64 j = 0; j < Nc; ++j) C[m * ldc + j] = epi.apply(C[m * ldc + j], m * ldc + j);
}

}  // namespace simd
}  // namespace task
}  // namespace metakern
