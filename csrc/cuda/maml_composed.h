// metakern::maml_fwd composed from the four adapt/mlp ops (maml_composed.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

namespace metakern {

// The contract of metakern::maml_fwd (csrc/schema/ops.cpp), computed as
//   theta_K = adapt_fwd(theta, ...), out = mlp_fwd(theta_K, xq), the per-task query
//   losses and dl/dout in ATen, mlp_bwd for dl/dtheta_K, adapt_bwd for dl/dtheta and
//   dl/dlr:
// each op dispatched by the tensors' device. It is the maml_fwd of devices whose
// kernels have no fused objective (CUDA: registered in csrc/cuda/adapt_cuda_bind.cpp);
// metakern._C.maml_fwd_composed exposes it for the CPU tests of that composition.
// lr [K, P] passes through to adapt_fwd / adapt_bwd. With step_weights w [K] (the
// multi-step loss) it composes per step instead: K single-step adapt_fwd calls with
// lr's row k, the query loss and its gradient at every theta_k, then K single-step
// adapt_bwd calls going back, adding w[k-1] dL_query/dtheta_k between them. Exact;
// K launches of each op each way. sum_tasks: the gradients of shared inputs summed
// over tasks (one ATen sum of the per-task rows).
std::tuple<at::Tensor, at::Tensor, at::Tensor> maml_fwd_composed(const at::Tensor& theta, const at::Tensor& lr,
                                                                 const at::Tensor& xs, const at::Tensor& ys,
                                                                 const at::Tensor& xq, const at::Tensor& yq,
                                                                 at::IntArrayRef dims, int64_t steps, int64_t loss,
                                                                 int64_t act, bool first_order, bool need_grad,
                                                                 bool need_lr,
                                                                 const c10::optional<at::Tensor>& step_weights,
                                                                 bool sum_tasks);

}  // namespace metakern
