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
//   dl/dtheta, dl/dlr = adapt_bwd(dl/dtheta_K, theta, lr, xs, ys)  [T, P], and lr's shape per task
//
// lr [K, P] (a rate per step) passes through to adapt_fwd / adapt_bwd. The multi-step
// loss (step_weights w [K]) is composed one step at a time: theta_{k+1} = adapt_fwd
// of one step with lr's row k, then the query loss and w[k] dl/dtheta_{k+1} at it;
// going back, adapt_bwd of one step from v_{k+1} at theta_k gives v_k, to which
// w[k-1] dl/dtheta_k is added (k >= 1). Exact; K launches of each op each way.
//
// Each op is dispatched by its tensors' device, below autograd. Nothing here is
// device specific, so the CPU tests check the composition on the CPU ops.
#include "cuda/maml_composed.h"

#include <ATen/core/dispatch/Dispatcher.h>

#include "common/checks.h"

#include <tuple>
#include <vector>

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

// The task-mean query loss of out [T, Nq, O] against yq, per task [T], and (when
// d_out != nullptr) its gradient with respect to out, in ATen as the torch backend.
at::Tensor query_loss(const at::Tensor& out, const at::Tensor& yq, int64_t loss, int64_t Nq, int64_t O,
                      at::Tensor* d_out) {
  if (loss == kMSE) {  // MSE, mean over the task's Nq * O entries
    const at::Tensor diff = out - yq;
    if (d_out != nullptr) *d_out = diff * (2.0 / static_cast<double>(Nq * O));
    return diff.square().mean({1, 2});
  }
  // cross-entropy, mean over the task's Nq points
  const at::Tensor logp = at::log_softmax(out, -1);
  const at::Tensor idx = yq.unsqueeze(-1);
  if (d_out != nullptr) {
    const at::Tensor p = logp.exp();
    *d_out = p.scatter(-1, idx, p.gather(-1, idx) - 1).mul_(1.0 / static_cast<double>(Nq));
  }
  return logp.gather(-1, idx).squeeze(-1).mean(1).neg();
}

// Step k's rate: lr itself ([P]) or its row k ([K, P]; a row of a contiguous matrix
// is contiguous).
at::Tensor lr_row(const at::Tensor& lr, int64_t k) { return lr.dim() == 2 ? lr.select(0, k) : lr; }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> maml_fwd_composed(const at::Tensor& theta, const at::Tensor& lr,
                                                                 const at::Tensor& xs, const at::Tensor& ys,
                                                                 const at::Tensor& xq, const at::Tensor& yq,
                                                                 at::IntArrayRef dims, int64_t steps, int64_t loss,
                                                                 int64_t act, bool first_order, bool need_grad,
                                                                 bool need_lr,
                                                                 const c10::optional<at::Tensor>& step_weights,
                                                                 bool sum_tasks) {
  int64_t Nq = 0;
  // The query set is validated here (the ops below check the support set again, and xq).
  const Problem pr = check_maml(kMamlFwd, theta, lr, xs, ys, xq, yq, dims, steps, loss, act, &Nq);
  check_step_weights(kMamlFwd, step_weights, steps, theta);
  at::AutoDispatchBelowADInplaceOrView below;  // the ops' own autograd formulas are not wanted
  at::NoGradGuard no_grad;
  const at::Tensor none = at::empty({0, pr.P}, theta.options());
  // sum_tasks: the gradients of shared inputs (lr; theta when it is [P]) summed over tasks
  auto summed = [&](const at::Tensor& losses, const at::Tensor& g_theta, const at::Tensor& g_lr) {
    const bool st = sum_tasks && g_theta.numel() > 0 && pr.shared_theta, sl = sum_tasks && g_lr.size(0) > 0;
    return std::tuple<at::Tensor, at::Tensor, at::Tensor>{losses, st ? g_theta.sum(0, true) : g_theta,
                                                          sl ? g_lr.sum(0, true) : g_lr};
  };
  if (pr.T == 0) {  // no task: the shapes of the fused kernel's results (sums of nothing: zeros)
    const int64_t lr_n = sum_tasks && need_grad && need_lr ? 1 : 0;
    const at::Tensor g_theta =
        sum_tasks && need_grad && pr.shared_theta ? at::zeros({1, pr.P}, theta.options()) : none;
    const at::Tensor g_lr = pr.lr_per_step && need_grad && need_lr ? at::zeros({lr_n, steps, pr.P}, theta.options())
                            : lr_n == 1                             ? at::zeros({1, pr.P}, theta.options())
                                                                    : none;
    return {at::empty({0}, theta.options()), g_theta, g_lr};
  }

  if (!step_weights.has_value() || !step_weights->defined()) {
    // the objective at theta_K: one adapt_fwd of K steps, one adapt_bwd of K steps
    const at::Tensor theta_k = call_adapt_fwd(theta, lr, xs, ys, dims, steps, loss, act);
    const at::Tensor out = call_mlp_fwd(theta_k, xq, dims, act);
    at::Tensor d_out;
    const at::Tensor losses = query_loss(out, yq, loss, Nq, pr.O, need_grad ? &d_out : nullptr);
    if (!need_grad) return {losses, none, none};
    const at::Tensor g_k = call_mlp_bwd_theta(d_out, theta_k, xq, dims, act);
    at::Tensor g_theta, g_lr, g_x;
    std::tie(g_theta, g_lr, g_x) = call_adapt_bwd(g_k, theta, lr, xs, ys, dims, steps, loss, act, first_order);
    return summed(losses, g_theta, need_lr ? g_lr : none);
  }

  // The multi-step loss sum_k w[k-1] L_query(theta_k), one step at a time.
  const at::Tensor& w = *step_weights;
  std::vector<at::Tensor> path{theta};  // theta_0 .. theta_K
  std::vector<at::Tensor> gq;           // w[k-1] dL_query/dtheta_k, k = 1 .. K
  at::Tensor losses;
  for (int64_t k = 0; k < steps; ++k) {
    path.push_back(call_adapt_fwd(path.back(), lr_row(lr, k), xs, ys, dims, 1, loss, act));
    const at::Tensor out = call_mlp_fwd(path.back(), xq, dims, act);
    at::Tensor d_out;
    const at::Tensor wk = w.select(0, k);
    const at::Tensor l = query_loss(out, yq, loss, Nq, pr.O, need_grad ? &d_out : nullptr) * wk;
    losses = k == 0 ? l : losses + l;
    if (need_grad) gq.push_back(call_mlp_bwd_theta(d_out * wk, path.back(), xq, dims, act));
  }
  if (!need_grad) return {losses, none, none};

  at::Tensor v = gq[steps - 1];
  std::vector<at::Tensor> g_lr_rows(steps);
  for (int64_t k = steps - 1; k >= 0; --k) {
    at::Tensor g_x;
    std::tie(v, g_lr_rows[k], g_x) =
        call_adapt_bwd(v, path[k], lr_row(lr, k), xs, ys, dims, 1, loss, act, first_order);
    if (k >= 1) v = v + gq[k - 1];
  }
  if (!need_lr) return summed(losses, v, none);
  // per task, lr's shape: the rows stacked ([T, K, P]) or summed over the steps ([T, P])
  at::Tensor g_lr = at::stack(g_lr_rows, 1);
  if (!pr.lr_per_step) g_lr = g_lr.sum(1);
  return summed(losses, v, g_lr);
}

}  // namespace metakern
