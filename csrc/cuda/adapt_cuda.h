// Host launchers of the metakern CUDA kernels (adapt_cuda.cu). Plain C++ header:
// included by adapt_cuda_bind.cpp, which validates the arguments (dtypes, shapes,
// devices, contiguity, class indices) before calling these. The launchers only add
// the checks that are specific to the CUDA kernels (layer count, shared memory).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <tuple>

namespace metakern {
namespace cuda_impl {

// theta_K [T, P] (docs/kernels.md, adapt_fwd). lr is [P] (every step) or [K, P] (row k for step k).
at::Tensor adapt_fwd(const at::Tensor& theta, const at::Tensor& lr, const at::Tensor& x, const at::Tensor& y,
                     c10::IntArrayRef dims, int64_t steps, int64_t loss, int64_t act);

// Per task (g_theta [T, P], g_lr [T, P] for lr [P] or [T, K, P] for lr [K, P], g_x [T, N, D]) (adapt_bwd).
std::tuple<at::Tensor, at::Tensor, at::Tensor> adapt_bwd(const at::Tensor& grad, const at::Tensor& theta,
                                                         const at::Tensor& lr, const at::Tensor& x,
                                                         const at::Tensor& y, c10::IntArrayRef dims, int64_t steps,
                                                         int64_t loss, int64_t act, bool first_order, bool need_x);

// out [T, N, O] (mlp_fwd).
at::Tensor mlp_fwd(const at::Tensor& theta, const at::Tensor& x, c10::IntArrayRef dims, int64_t act);

// Per task (g_theta [T, P], g_x [T, N, D]) (mlp_bwd).
std::tuple<at::Tensor, at::Tensor> mlp_bwd(const at::Tensor& grad_out, const at::Tensor& theta, const at::Tensor& x,
                                           c10::IntArrayRef dims, int64_t act, bool need_x);

}  // namespace cuda_impl
}  // namespace metakern
