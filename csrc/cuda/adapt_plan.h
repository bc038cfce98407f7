// metakern CUDA kernels: the shape of one call and its shared-memory plan.
//
// Plain C++ (no CUDA runtime): the kernels (adapt_kernels.cuh) read MlpShape and
// SmemPlan, the launchers (adapt_cuda.cu) build them with make_shape() and
// configure(). Keeping this host logic free of CUDA lets it be exercised without a
// GPU, and built without CUDA: metakern._C.cuda_smem_bytes and cuda_max_layers
// (schema/module.cpp) report from it in every build.
//
// Shared memory per thread block (one task, nb points at a time), in elements of
// the dtype (float32 or float64), ld_l = d_l | 1 (odd row stride),
// S = ld_0 + .. + ld_L, Wd = max_{l>=1} ld_l, Wi = max_{l<L} ld_l:
//   adapt_fwd, adapt_bwd first order:  2 P + nb (S + 2 Wd)
//   adapt_bwd second order:            4 P + nb (S + (S - ld_0) + 4 Wd)
//   mlp_bwd:                           2 P + nb (S - ld_L + 2 Wd)
//   mlp_fwd:                           1 P + nb (2 Wi)
// lr ([P], or row k of [K, P] at step k) is read from global memory and is not in
// the plan, so the plan does not depend on lr's form.
// The call is accepted when nb = 1 fits the device's opt-in limit per block
// (227 KiB on H100/H200, 163 KiB on A100); nb is then as large as fits (all N
// points when possible) and the points are processed in ceil(N / nb) chunks.
#pragma once

#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <iterator>

#include "common/codes.h"

namespace metakern {
namespace cuda_kernels {

constexpr int kMaxLayers = 16;    // layers per MLP supported by the CUDA kernels
constexpr int kMaxThreads = 256;  // largest block the host launches (kernels' __launch_bounds__)
constexpr int64_t kDefaultSmem = 48 * 1024;      // dynamic shared memory without opt-in
constexpr int64_t kMaxElems = int64_t(1) << 24;  // far above any shared-memory plan; keeps int math exact

// The loss a kernel is instantiated for: the op's loss code (common/codes.h), or
// kLossExternal when delta_L is given (mlp_bwd's grad_out).
enum LossKind : int { kLossMSE = kMSE, kLossCE = kCrossEntropy, kLossExternal = 2 };
static_assert(kLossExternal != kLossMSE && kLossExternal != kLossCE, "kLossExternal must not be a Loss code");
enum GxMode : int { kGxNone = 0, kGxDelta = 1 /* g_x = delta_0 */, kGxMinusRDelta = 2 /* g_x -= R{delta_0} */ };
enum PlanKind : int { kPlanAdapt = 0, kPlanMlpBwd = 1, kPlanMlpFwd = 2 };

// Shape of the MLP and where everything sits (all sizes in elements).
struct MlpShape {
  int L;                      // layers
  int P;                      // parameters per task: sum_l d_l (d_{l-1} + 1)
  int d[kMaxLayers + 1];      // widths d_0 .. d_L
  int ld[kMaxLayers + 1];     // row stride of layer l's [nb, d_l] buffers in shared memory: d_l | 1
                              // (odd, so threads reading rows n, n+1, .. hit different banks)
  int pre[kMaxLayers + 2];    // pre[l] = ld_0 + .. + ld_{l-1}: per-point offset of layer l in `act`
  int woff[kMaxLayers + 2];   // woff[l] (l >= 1): offset of W_l in the packed vector; b_l at woff[l] + d_l d_{l-1}
  int maxld;                  // Wd = max ld_l over l = 1..L     (delta buffers)
  int maxld_in;               // Wi = max ld_l over l = 0..L-1   (mlp_fwd ping-pong buffers)
};

// Element offsets of the shared-memory buffers (0 = unused), total = elements.
struct SmemPlan {
  int64_t th, gacc, u, hacc, act, rz, d0, d1, rd0, rd1, total;
};

// Shared-memory carving, one definition for host (sizes) and kernels (offsets):
//   kPlanAdapt  (adapt_fwd, adapt_bwd):
//     th [P], gacc [P], (second order: u [P], hacc [P]),
//     act [nb * (ld_0 + .. + ld_L)]          a_0 = x, a_1 .. a_{L-1}, z_L
//     (second order: rz [nb * (ld_1 + .. + ld_L)]   R{z_1} .. R{z_L})
//     d0, d1 [nb * Wd]                       delta ping-pong
//     (second order: rd0, rd1 [nb * Wd])     R{delta} ping-pong
//   kPlanMlpBwd (mlp_bwd): as kPlanAdapt first order, act without z_L.
//   kPlanMlpFwd (mlp_fwd): th [P], d0, d1 [nb * Wi] (activation ping-pong).
inline SmemPlan plan_smem(const MlpShape& s, int64_t nb, int kind, bool rpass) {
  SmemPlan p{};
  int64_t off = 0;
  auto take = [&off](int64_t n) {
    const int64_t o = off;
    off += n;
    return o;
  };
  p.th = take(s.P);
  if (kind == kPlanMlpFwd) {
    p.d0 = take(nb * s.maxld_in);
    p.d1 = take(nb * s.maxld_in);
  } else {
    p.gacc = take(s.P);
    if (rpass) {
      p.u = take(s.P);
      p.hacc = take(s.P);
    }
    const int kept = kind == kPlanAdapt ? s.L + 1 : s.L;  // layers 0..kept-1 stored
    p.act = take(nb * s.pre[kept]);
    if (rpass) p.rz = take(nb * (s.pre[s.L + 1] - s.pre[1]));
    p.d0 = take(nb * s.maxld);
    p.d1 = take(nb * s.maxld);
    if (rpass) {
      p.rd0 = take(nb * s.maxld);
      p.rd1 = take(nb * s.maxld);
    }
  }
  p.total = off;
  return p;
}

// Widths, strides and packed offsets of the MLP (see MlpShape). dims were
// validated by the op wrapper (length >= 2, positive); this adds the CUDA limits.
inline MlpShape make_shape(const char* op, c10::IntArrayRef dims) {
  const int64_t L = static_cast<int64_t>(dims.size()) - 1;
  TORCH_CHECK(L >= 1 && L <= kMaxLayers, op, ": the CUDA kernels support 1 to ", kMaxLayers,
              " layers (dims of length 2 to ", kMaxLayers + 1, "), got dims ", dims);
  MlpShape s{};
  s.L = static_cast<int>(L);
  int64_t P = 0, pre = 0, maxld = 0, maxld_in = 0;
  for (int64_t l = 0; l <= L; ++l) {
    TORCH_CHECK(dims[l] >= 1 && dims[l] < kMaxElems, op, ": dims[", l, "] = ", dims[l],
                " is outside what the CUDA kernels support (1 to ", kMaxElems - 1, ")");
    const int64_t ld = dims[l] | 1;
    s.d[l] = static_cast<int>(dims[l]);
    s.ld[l] = static_cast<int>(ld);
    s.pre[l] = static_cast<int>(pre);
    pre += ld;
    if (l >= 1) maxld = std::max(maxld, ld);
    if (l < L) maxld_in = std::max(maxld_in, ld);
    if (l >= 1) {
      s.woff[l] = static_cast<int>(P);
      P += dims[l] * (dims[l - 1] + 1);
      TORCH_CHECK(P < kMaxElems, op, ": dims ", dims, " give more than ", kMaxElems,
                  " parameters per task, far beyond the CUDA kernels' shared-memory limit");
    }
  }
  TORCH_CHECK(pre < kMaxElems, op, ": dims ", dims, " are too wide for the CUDA kernels");
  s.pre[L + 1] = static_cast<int>(pre);
  s.woff[L + 1] = static_cast<int>(P);
  s.P = static_cast<int>(P);
  s.maxld = static_cast<int>(maxld);
  s.maxld_in = static_cast<int>(maxld_in);
  return s;
}

// Shared memory per block (bytes) that every op on this model needs with one point
// per chunk, the least configure() accepts for all four: the largest of their plans
// at nb = 1 (adapt_bwd second order, 4 P + 2 S - ld_0 + 4 Wd elements).
// Reported by metakern._C.cuda_smem_bytes, to compare with a device's limit.
inline int64_t smem_bytes_one_point(const MlpShape& s, int64_t elt) {
  const int64_t plans[] = {plan_smem(s, 1, kPlanAdapt, false).total, plan_smem(s, 1, kPlanAdapt, true).total,
                           plan_smem(s, 1, kPlanMlpBwd, false).total, plan_smem(s, 1, kPlanMlpFwd, false).total};
  return *std::max_element(std::begin(plans), std::end(plans)) * elt;
}

struct LaunchCfg {
  SmemPlan pl{};
  int nb = 1;         // points per chunk (rows of the per-point buffers)
  int nchunks = 0;    // chunks per task (0 when N == 0)
  int threads = 128;  // threads per block
  int64_t smem_bytes = 0;
};

// Shared-memory plan, chunk size and block size of one call. bytes(nb) =
// elt * (fixed + nb * per_point) must fit `limit` (the device's opt-in shared
// memory per block) for nb = 1; nb is then as large as the budget allows (all of
// N when it fits), balanced so all chunks have about the same size. mlp_fwd,
// whose blocks are (task, chunk) pairs, keeps a block within 48 KiB when its
// parameters allow (occupancy). max_nb (> 0) caps nb (tests of the chunked path).
inline LaunchCfg configure(const char* op, const MlpShape& s, int64_t N, int kind, bool rpass, int64_t elt,
                           int64_t limit, int64_t max_nb = 0) {
  const int64_t fixed = plan_smem(s, 0, kind, rpass).total;
  const int64_t per_point = plan_smem(s, 1, kind, rpass).total - fixed;
  const int64_t need = (fixed + per_point) * elt;
  TORCH_CHECK(need <= limit, op, ": the model is too large for the CUDA kernels, which keep one task in shared "
              "memory: it needs ", elt, " * (", fixed, " + ", per_point, " * points) bytes, ", need,
              " bytes even one point at a time, over this GPU's limit of ", limit,
              " bytes of shared memory per block; use backend='triton' or 'torch'");
  int64_t budget = limit;
  if (kind == kPlanMlpFwd)
    budget = std::min(limit, std::max<int64_t>(kDefaultSmem, (fixed + 64 * per_point) * elt));
  int64_t nb_max = std::max<int64_t>(1, (budget / elt - fixed) / per_point);
  if (max_nb > 0) nb_max = std::min(nb_max, max_nb);
  const int64_t n = std::max<int64_t>(N, 1);
  int64_t nb = std::min(n, nb_max);
  int64_t nchunks = (n + nb - 1) / nb;
  nb = (n + nchunks - 1) / nchunks;  // balanced, <= the previous nb
  nchunks = (n + nb - 1) / nb;
  LaunchCfg cfg;
  cfg.nb = static_cast<int>(nb);
  cfg.nchunks = N == 0 ? 0 : static_cast<int>(nchunks);
  cfg.pl = plan_smem(s, nb, kind, rpass);
  cfg.smem_bytes = cfg.pl.total * elt;
  TORCH_INTERNAL_ASSERT(cfg.smem_bytes <= limit);
  const int64_t widest = nb * std::max(s.maxld, s.maxld_in);
  cfg.threads = (s.P >= 4096 || widest >= 2048) ? kMaxThreads : 128;
  return cfg;
}

}  // namespace cuda_kernels
}  // namespace metakern
