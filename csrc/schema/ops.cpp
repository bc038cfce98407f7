// The metakern operator schemas (docs/kernels.md). Implementations register beside
// each kernel: csrc/cpu (TORCH_LIBRARY_IMPL(metakern, CPU, ...)), csrc/cuda (CUDA).
// Integer codes (common/codes.h): loss 0 = MSE, 1 = cross-entropy; act 0 = identity,
// 1 = relu, 2 = tanh, 3 = sigmoid.
#include <torch/library.h>

TORCH_LIBRARY(metakern, m) {
  // K inner SGD steps per task: theta_K [T, P].
  m.def("adapt_fwd(Tensor theta, Tensor lr, Tensor x, Tensor y, int[] dims, int steps, int loss, int act) -> Tensor");
  // lr is [P] (every step's rate) or [K, P] (row k for step k, K == steps), here and below.
  // Reverse pass from grad = dl/dtheta_K: per-task (g_theta [T, P], g_lr [T, P] or [T, K, P]
  // as lr, g_x [T, N, D]).
  m.def(
      "adapt_bwd(Tensor grad, Tensor theta, Tensor lr, Tensor x, Tensor y, int[] dims, int steps, int loss, "
      "int act, bool first_order, bool need_x) -> (Tensor, Tensor, Tensor)");
  // Batched MLP forward with packed parameters: [T, N, O].
  m.def("mlp_fwd(Tensor theta, Tensor x, int[] dims, int act) -> Tensor");
  // Its backward: per-task (g_theta [T, P], g_x [T, N, D]).
  m.def("mlp_bwd(Tensor grad_out, Tensor theta, Tensor x, int[] dims, int act, bool need_x) -> (Tensor, Tensor)");
  // The MAML objective of every task in one pass: per-task query losses [T] after K
  // inner steps on the support set (with step_weights w [K], the multi-step loss
  // sum_k w[k-1] L_query(theta_k)) and, when need_grad, their gradients (g_theta
  // [T, P], and g_lr [T, P] or [T, K, P] as lr when need_lr too; shape [0, P]
  // otherwise). With sum_tasks the gradients of shared inputs come summed over the
  // tasks, leading axis 1: g_lr always, g_theta when theta is [P] (a per-task theta
  // [T, P] keeps per-task gradients). CPU: one fused kernel (csrc/cpu); CUDA: the four
  // ops above composed (csrc/cuda/maml_composed.cpp).
  m.def(
      "maml_fwd(Tensor theta, Tensor lr, Tensor xs, Tensor ys, Tensor xq, Tensor yq, int[] dims, int steps, "
      "int loss, int act, bool first_order, bool need_grad, bool need_lr=True, Tensor? step_weights=None, bool sum_tasks=False) -> "
      "(Tensor, Tensor, Tensor)");
}
