// metakern CUDA kernels: host launchers (check, allocate, configure, launch).
//
// The kernels are in adapt_kernels.cuh; this file picks the shared-memory plan and
// block size, fills the kernel arguments and launches one kernel per op on the
// current stream under a device guard. Argument validation (dtypes, shapes,
// devices, contiguity, class-index range) happens before, in adapt_cuda_bind.cpp.
//
// Limits (checked by make_shape / configure in adapt_plan.h, each failure names
// the limit): at most kMaxLayers = 16 layers, and one task's shared-memory plan
// with a single point must fit the device's opt-in shared memory per block
// (227 KiB on H100/H200, 163 KiB on A100); any N is accepted (points are
// processed in chunks that fit). See adapt_plan.h for the formula per op.
// No GPU-side atomics; every output element is written by one thread per block.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <tuple>

#include "cuda/adapt_cuda.h"
#include "cuda/adapt_kernels.cuh"
#include "cuda/static_switch.h"

namespace metakern {
namespace cuda_impl {
namespace {

using namespace metakern::cuda_kernels;

constexpr const char* kAdaptFwd = "metakern::adapt_fwd";
constexpr const char* kAdaptBwd = "metakern::adapt_bwd";
constexpr const char* kMlpFwd = "metakern::mlp_fwd";
constexpr const char* kMlpBwd = "metakern::mlp_bwd";

// Opt-in shared memory per block of the device (227 KiB on H100/H200, 163 KiB on A100).
int64_t max_smem_optin(int device) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return v;
}

template <typename T>
Params<T> base_params(const MlpShape& s, const LaunchCfg& cfg, const at::Tensor& theta, const at::Tensor& x,
                      int64_t N, int64_t K) {
  Params<T> p{};
  p.s = s;
  p.pl = cfg.pl;
  p.theta = theta.data_ptr<T>();
  p.theta_stride = theta.dim() == 1 ? 0 : s.P;
  p.x = x.data_ptr<T>();
  p.N = static_cast<int>(N);
  p.K = static_cast<int>(K);
  p.nb = cfg.nb;
  p.nchunks = cfg.nchunks;
  return p;
}

// lr [P] is every step's rate (row stride 0); lr [K, P] holds step k's rate in row k.
int64_t lr_stride(const at::Tensor& lr, const MlpShape& s) { return lr.dim() == 2 ? s.P : 0; }

template <typename T>
void launch(void (*kernel)(const Params<T>), int64_t blocks, const LaunchCfg& cfg, const Params<T>& p) {
  if (blocks == 0) return;
  TORCH_CHECK(blocks <= INT_MAX, "metakern CUDA: ", blocks, " thread blocks exceed the grid limit");
  if (cfg.smem_bytes > kDefaultSmem)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(cfg.smem_bytes)));
  kernel<<<static_cast<unsigned>(blocks), cfg.threads, static_cast<size_t>(cfg.smem_bytes),
           c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void check_int_sizes(const char* op, int64_t N, int64_t steps) {
  TORCH_CHECK(N <= INT_MAX, op, ": the CUDA kernels support at most ", INT_MAX, " points per task, got ", N);
  TORCH_CHECK(steps <= INT_MAX, op, ": the CUDA kernels support at most ", INT_MAX, " steps, got ", steps);
}

}  // namespace

at::Tensor adapt_fwd(const at::Tensor& theta, const at::Tensor& lr, const at::Tensor& x, const at::Tensor& y,
                     c10::IntArrayRef dims, int64_t steps, int64_t loss, int64_t act) {
  const c10::cuda::CUDAGuard guard(x.device());
  const MlpShape s = make_shape(kAdaptFwd, dims);
  const int64_t T = x.size(0), N = x.size(1);
  check_int_sizes(kAdaptFwd, N, steps);
  at::Tensor out = at::empty({T, static_cast<int64_t>(s.P)}, theta.options());
  if (T == 0) return out;
  const LaunchCfg cfg = configure(kAdaptFwd, s, N, kPlanAdapt, false, theta.element_size(),
                                    max_smem_optin(x.get_device()));
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "adapt_fwd_cuda", [&] {
    Params<scalar_t> p = base_params<scalar_t>(s, cfg, theta, x, N, steps);
    p.lr = lr.data_ptr<scalar_t>();
    p.lr_stride = lr_stride(lr, s);
    if (loss == kLossMSE)
      p.yf = y.data_ptr<scalar_t>();
    else
      p.yi = y.data_ptr<int64_t>();
    p.out = out.data_ptr<scalar_t>();
    MK_ACT_SWITCH(act, kAct, [&] {
      MK_LOSS_SWITCH(loss, kLoss, [&] { launch<scalar_t>(adapt_fwd_kernel<scalar_t, kAct, kLoss>, T, cfg, p); });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adapt_bwd(const at::Tensor& grad, const at::Tensor& theta,
                                                         const at::Tensor& lr, const at::Tensor& x,
                                                         const at::Tensor& y, c10::IntArrayRef dims, int64_t steps,
                                                         int64_t loss, int64_t act, bool first_order, bool need_x) {
  const c10::cuda::CUDAGuard guard(x.device());
  const MlpShape s = make_shape(kAdaptBwd, dims);
  const int64_t T = x.size(0), N = x.size(1), P = s.P;
  check_int_sizes(kAdaptBwd, N, steps);
  at::Tensor g_theta = at::empty({T, P}, theta.options());
  // g_lr keeps lr's step axis: [T, P] for lr [P], [T, K, P] for lr [K, P].
  at::Tensor g_lr = lr.dim() == 2 ? at::empty({T, steps, P}, theta.options()) : at::empty({T, P}, theta.options());
  at::Tensor g_x = at::empty({T, N, static_cast<int64_t>(s.d[0])}, theta.options());
  if (T == 0) return {g_theta, g_lr, g_x};
  const bool second = !first_order;
  const LaunchCfg cfg = configure(kAdaptBwd, s, N, kPlanAdapt, second, theta.element_size(),
                                    max_smem_optin(x.get_device()));
  // Second order keeps theta_1 .. theta_{K-1} per task (theta_0 is the input).
  at::Tensor scratch = at::empty({second && steps > 1 ? T * (steps - 1) * P : 0}, theta.options());
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "adapt_bwd_cuda", [&] {
    Params<scalar_t> p = base_params<scalar_t>(s, cfg, theta, x, N, steps);
    p.lr = lr.data_ptr<scalar_t>();
    p.lr_stride = lr_stride(lr, s);
    if (loss == kLossMSE)
      p.yf = y.data_ptr<scalar_t>();
    else
      p.yi = y.data_ptr<int64_t>();
    p.grad = grad.data_ptr<scalar_t>();
    p.out = g_theta.data_ptr<scalar_t>();
    p.out2 = g_lr.data_ptr<scalar_t>();
    p.gx = g_x.data_ptr<scalar_t>();
    p.scratch = scratch.numel() > 0 ? scratch.data_ptr<scalar_t>() : nullptr;
    p.need_x = need_x ? 1 : 0;
    MK_ACT_SWITCH(act, kAct, [&] {
      MK_LOSS_SWITCH(loss, kLoss, [&] {
        MK_BOOL_SWITCH(second, kSecond, [&] {
          launch<scalar_t>(adapt_bwd_kernel<scalar_t, kAct, kLoss, kSecond>, T, cfg, p);
        });
      });
    });
  });
  return {g_theta, g_lr, g_x};
}

at::Tensor mlp_fwd(const at::Tensor& theta, const at::Tensor& x, c10::IntArrayRef dims, int64_t act) {
  const c10::cuda::CUDAGuard guard(x.device());
  const MlpShape s = make_shape(kMlpFwd, dims);
  const int64_t T = x.size(0), N = x.size(1);
  check_int_sizes(kMlpFwd, N, 0);
  at::Tensor out = at::empty({T, N, static_cast<int64_t>(s.d[s.L])}, theta.options());
  if (T == 0 || N == 0) return out;
  const LaunchCfg cfg = configure(kMlpFwd, s, N, kPlanMlpFwd, false, theta.element_size(),
                                    max_smem_optin(x.get_device()));
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "mlp_fwd_cuda", [&] {
    Params<scalar_t> p = base_params<scalar_t>(s, cfg, theta, x, N, 0);
    p.out = out.data_ptr<scalar_t>();
    MK_ACT_SWITCH(act, kAct, [&] {
      launch<scalar_t>(mlp_fwd_kernel<scalar_t, kAct>, T * static_cast<int64_t>(cfg.nchunks), cfg, p);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mlp_bwd(const at::Tensor& grad_out, const at::Tensor& theta, const at::Tensor& x,
                                           c10::IntArrayRef dims, int64_t act, bool need_x) {
  const c10::cuda::CUDAGuard guard(x.device());
  const MlpShape s = make_shape(kMlpBwd, dims);
  const int64_t T = x.size(0), N = x.size(1);
  check_int_sizes(kMlpBwd, N, 0);
  at::Tensor g_theta = at::empty({T, static_cast<int64_t>(s.P)}, theta.options());
  at::Tensor g_x = at::empty({T, N, static_cast<int64_t>(s.d[0])}, theta.options());
  if (T == 0) return {g_theta, g_x};
  const LaunchCfg cfg = configure(kMlpBwd, s, N, kPlanMlpBwd, false, theta.element_size(),
                                    max_smem_optin(x.get_device()));
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "mlp_bwd_cuda", [&] {
    Params<scalar_t> p = base_params<scalar_t>(s, cfg, theta, x, N, 0);
    p.yf = grad_out.data_ptr<scalar_t>();
    p.out = g_theta.data_ptr<scalar_t>();
    p.gx = g_x.data_ptr<scalar_t>();
    p.need_x = need_x ? 1 : 0;
    MK_ACT_SWITCH(act, kAct, [&] { launch<scalar_t>(mlp_bwd_kernel<scalar_t, kAct>, T, cfg, p); });
  });
  return {g_theta, g_x};
}

}  // namespace cuda_impl
}  // namespace metakern
