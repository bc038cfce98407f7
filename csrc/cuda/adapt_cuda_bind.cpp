// CUDA implementations of the metakern ops (schemas in csrc/schema/ops.cpp):
// validation of every argument, then the launchers of adapt_cuda.cu.
//
// Validation is shared with the CPU kernels (common/checks.h: dims, act, loss,
// steps, dtypes float32/float64 all matching theta, shapes against dims,
// contiguity, same device, y int64 in [0, O) for cross-entropy); this file adds
// that every tensor is a CUDA tensor. The CUDA-specific limits (layers, shared
// memory) are checked by the launchers and name the limit.
#ifdef METAKERN_WITH_CUDA

#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "common/checks.h"
#include "cuda/adapt_cuda.h"
#include "cuda/maml_composed.h"

namespace metakern {
namespace {

constexpr const char* kAdaptFwd = "metakern::adapt_fwd";
constexpr const char* kAdaptBwd = "metakern::adapt_bwd";
constexpr const char* kMlpFwd = "metakern::mlp_fwd";
constexpr const char* kMlpBwd = "metakern::mlp_bwd";

// Before anything else: the dispatcher routes here by theta's (or any argument's)
// CUDA key, so every tensor must be a CUDA tensor; same-device is checked after.
void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor for the CUDA kernels, got ", t.device());
}

}  // namespace

at::Tensor adapt_fwd_cuda(const at::Tensor& theta, const at::Tensor& lr, const at::Tensor& x, const at::Tensor& y,
                          at::IntArrayRef dims, int64_t steps, int64_t loss, int64_t act) {
  check_cuda(kAdaptFwd, "theta", theta);
  check_cuda(kAdaptFwd, "lr", lr);
  check_cuda(kAdaptFwd, "x", x);
  check_cuda(kAdaptFwd, "y", y);
  check_adapt(kAdaptFwd, theta, lr, x, y, dims, steps, loss, act);
  return cuda_impl::adapt_fwd(theta, lr, x, y, dims, steps, loss, act);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adapt_bwd_cuda(const at::Tensor& grad, const at::Tensor& theta,
                                                              const at::Tensor& lr, const at::Tensor& x,
                                                              const at::Tensor& y, at::IntArrayRef dims,
                                                              int64_t steps, int64_t loss, int64_t act,
                                                              bool first_order, bool need_x) {
  check_cuda(kAdaptBwd, "grad", grad);
  check_cuda(kAdaptBwd, "theta", theta);
  check_cuda(kAdaptBwd, "lr", lr);
  check_cuda(kAdaptBwd, "x", x);
  check_cuda(kAdaptBwd, "y", y);
  const Problem pr = check_adapt(kAdaptBwd, theta, lr, x, y, dims, steps, loss, act);
  check_float(kAdaptBwd, "grad", grad);
  check_same(kAdaptBwd, "grad", grad, theta);
  check_shape(kAdaptBwd, "grad", grad, {pr.T, pr.P});
  return cuda_impl::adapt_bwd(grad, theta, lr, x, y, dims, steps, loss, act, first_order, need_x);
}

at::Tensor mlp_fwd_cuda(const at::Tensor& theta, const at::Tensor& x, at::IntArrayRef dims, int64_t act) {
  check_cuda(kMlpFwd, "theta", theta);
  check_cuda(kMlpFwd, "x", x);
  check_common(kMlpFwd, theta, x, dims, act);
  return cuda_impl::mlp_fwd(theta, x, dims, act);
}

std::tuple<at::Tensor, at::Tensor> mlp_bwd_cuda(const at::Tensor& grad_out, const at::Tensor& theta,
                                                const at::Tensor& x, at::IntArrayRef dims, int64_t act,
                                                bool need_x) {
  check_cuda(kMlpBwd, "grad_out", grad_out);
  check_cuda(kMlpBwd, "theta", theta);
  check_cuda(kMlpBwd, "x", x);
  const Problem pr = check_common(kMlpBwd, theta, x, dims, act);
  check_float(kMlpBwd, "grad_out", grad_out);
  check_same(kMlpBwd, "grad_out", grad_out, theta);
  check_shape(kMlpBwd, "grad_out", grad_out, {pr.T, pr.N, pr.O});
  return cuda_impl::mlp_bwd(grad_out, theta, x, dims, act, need_x);
}

TORCH_LIBRARY_IMPL(metakern, CUDA, m) {
  m.impl("adapt_fwd", &adapt_fwd_cuda);
  m.impl("adapt_bwd", &adapt_bwd_cuda);
  m.impl("mlp_fwd", &mlp_fwd_cuda);
  m.impl("mlp_bwd", &mlp_bwd_cuda);
  // The MAML objective: the four kernels above composed in C++ (csrc/cuda/maml_composed.cpp).
  m.impl("maml_fwd", &maml_fwd_composed);
}

}  // namespace metakern

#endif  // METAKERN_WITH_CUDA
