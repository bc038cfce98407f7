// metakern::maml_fwd composed from adapt_fwd, mlp_fwd, mlp_bwd and adapt_bwd.
//
// The CPU kernels compute the MAML objective in one walk of the inner loop
// (csrc/cpu/adapt_cpu.cpp). The CUDA kernels have no such fused objective: their
// maml_fwd is this composition of their four ops, in C++ (no Python between the
// ops), so the C++ autograd node of metakern._C.maml_loss serves the CUDA backend too:
//
//   theta_K        = adapt_fwd(theta, lr, xs, ys)                  [T, P]
//   out            = mlp_fwd(theta_K, xq)                          [T, Nq, O]
//   l_t, dl/dout     the task-mean query loss and its gradient (ATen, as the torch backend)
//   dl/dtheta_K    = mlp_bwd(dl/dout, theta_K, xq)                 [T, P]
//   dl/dtheta, dl/dlr = adapt_bwd(dl/dtheta_K, theta, lr, xs, ys)  [T, P] each
//
// Each op is dispatched by its tensors' device, below autograd. Nothing here is
// device specific, so the CPU tests check the composition on the CPU ops.
#include "cuda/maml_composed.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include "common/checks.h"

namespace metakern {
namespace {

constexpr const char* kMamlFwd = "metakern::maml_fwd";

at::Tensor call_adapt_fwd(const at::Tensor& theta, const at::Tensor& lr, const at::Tensor& x, const at::Tensor& y,
                          at::IntArrayRef dims, int64_t steps, int64_t loss, int64_t act) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("metakern::adapt_fwd", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, at::IntArrayRef, int64_t, int64_t, int64_t)>();
  return op.call(theta, lr, x, y, dims, steps, loss, act);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_adapt_bwd(const at::Tensor& grad, const at::Tensor& theta,
                                                              const at::Tensor& lr, const at::Tensor& x,
                                                              const at::Tensor& y, at::IntArrayRef dims,
                                                              int64_t steps, int64_t loss, int64_t act,
                                                              bool first_order) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("metakern::adapt_bwd", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              at::IntArrayRef, int64_t, int64_t, int64_t, bool, bool)>();
  return op.call(grad, theta, lr, x, y, dims, steps, loss, act, first_order, /*need_x=*/false);
}

at::Tensor call_mlp_fwd(const at::Tensor& theta, const at::Tensor& x, at::IntArrayRef dims, int64_t act) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("metakern::mlp_fwd", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, int64_t)>();
  return op.call(theta, x, dims, act);
}

at::Tensor call_mlp_bwd_theta(const at::Tensor& grad_out, const at::Tensor& theta, const at::Tensor& x,
                              at::IntArrayRef dims, int64_t act) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("metakern::mlp_bwd", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                    at::IntArrayRef, int64_t, bool)>();
  return std::get<0>(op.call(grad_out, theta, x, dims, act, /*need_x=*/false));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> maml_fwd_composed(const at::Tensor& theta, const at::Tensor& lr,
                                                                 const at::Tensor& xs, const at::Tensor& ys,
                                                                 const at::Tensor& xq, const at::Tensor& yq,
                                                                 at::IntArrayRef dims, int64_t steps, int64_t loss,
                                                                 int64_t act, bool first_order, bool need_grad,
                                                                 bool need_lr) {
  int64_t Nq = 0;
  // The query set is validated here (the ops below check the support set again, and xq).
  const Problem pr = check_maml(kMamlFwd, theta, lr, xs, ys, xq, yq, dims, steps, loss, act, &Nq);
  at::AutoDispatchBelowADInplaceOrView below;  // the ops' own autograd formulas are not wanted
  at::NoGradGuard no_grad;
  const at::Tensor none = at::empty({0, pr.P}, theta.options());
  if (pr.T == 0) return {at::empty({0}, theta.options()), none, none};

  const at::Tensor theta_k = call_adapt_fwd(theta, lr, xs, ys, dims, steps, loss, act);
  const at::Tensor out = call_mlp_fwd(theta_k, xq, dims, act);
  at::Tensor losses, d_out;
  if (loss == kMSE) {  // MSE, mean over the task's Nq * O entries
    const at::Tensor diff = out - yq;
    losses = diff.square().mean({1, 2});
    if (need_grad) d_out = diff * (2.0 / static_cast<double>(Nq * pr.O));
  } else {  // cross-entropy, mean over the task's Nq points
    const at::Tensor logp = at::log_softmax(out, -1);
    const at::Tensor idx = yq.unsqueeze(-1);
    losses = logp.gather(-1, idx).squeeze(-1).mean(1).neg();
    if (need_grad) {
      const at::Tensor p = logp.exp();
      d_out = p.scatter(-1, idx, p.gather(-1, idx) - 1).mul_(1.0 / static_cast<double>(Nq));
    }
  }
  if (!need_grad) return {losses, none, none};

  const at::Tensor g_k = call_mlp_bwd_theta(d_out, theta_k, xq, dims, act);
  at::Tensor g_theta, g_lr, g_x;
  std::tie(g_theta, g_lr, g_x) = call_adapt_bwd(g_k, theta, lr, xs, ys, dims, steps, loss, act, first_order);
  return {losses, g_theta, need_lr ? g_lr : none};
}

}  // namespace metakern
