// common/checks.h — validation of the op arguments (docs/kernels.md), shared by
// every C++ launcher. Each failure is a TORCH_CHECK naming the argument, so a user
// sees a RuntimeError (c10::Error) that says what to fix; nothing is indexed with
// user data before these checks pass.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/codes.h"

namespace metakern {

// Sizes of one call, derived from dims and checked against every tensor.
struct Problem {
  std::vector<int64_t> dims;  // d_0 .. d_L
  int L = 0;
  int64_t P = 0;  // parameters per task
  int64_t T = 0;  // tasks
  int64_t N = 0;  // points per task
  int64_t D = 0;  // d_0
  int64_t O = 0;  // d_L
  bool shared_theta = false;
  // lr is [K, P] (row k is inner step k's rate) rather than [P] (every step's); the
  // per-task rate gradient then keeps the step axis, [T, K, P].
  bool lr_per_step = false;
};

inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (got strides ", t.strides(), ")");
}

inline void check_same(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of theta (",
              ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the device of theta (", ref.device(),
              "), got ", t.device());
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef want) {
  TORCH_CHECK(t.sizes() == want, op, ": ", name, " must have shape ", want, ", got ", t.sizes());
}

// dims, act, theta and x: the part every op shares.
inline Problem check_common(const char* op, const at::Tensor& theta, const at::Tensor& x, at::IntArrayRef dims,
                            int64_t act) {
  Problem pr;
  TORCH_CHECK(dims.size() >= 2, op, ": dims must list at least 2 widths (input and output), got ", dims);
  TORCH_CHECK(dims.size() <= 1025, op, ": dims lists ", dims.size() - 1, " layers, at most 1024 are supported");
  for (size_t i = 0; i < dims.size(); ++i)
    TORCH_CHECK(dims[i] > 0, op, ": dims must be positive, got dims[", i, "] = ", dims[i]);
  TORCH_CHECK(act >= kIdentity && act <= kSigmoid, op, ": act must be 0 (identity), 1 (relu), 2 (tanh) or 3 (sigmoid), got ",
              act);
  pr.dims.assign(dims.begin(), dims.end());
  pr.L = static_cast<int>(dims.size()) - 1;
  for (int l = 1; l <= pr.L; ++l) {
    TORCH_CHECK(dims[l] <= (int64_t(1) << 31) / (dims[l - 1] + 1), op, ": dims ", dims, " are too large");
    pr.P += dims[l] * (dims[l - 1] + 1);
  }
  pr.D = dims[0];
  pr.O = dims[pr.L];

  check_float(op, "theta", theta);
  check_float(op, "x", x);
  check_same(op, "x", x, theta);
  TORCH_CHECK(x.dim() == 3, op, ": x must be [T, N, D], got shape ", x.sizes());
  pr.T = x.size(0);
  pr.N = x.size(1);
  TORCH_CHECK(x.size(2) == pr.D, op, ": x must be [T, N, D] with D = dims[0] = ", pr.D, ", got shape ",
              x.sizes());
  TORCH_CHECK(theta.dim() == 1 || theta.dim() == 2, op, ": theta must be [P] or [T, P], got shape ",
              theta.sizes());
  TORCH_CHECK(theta.size(-1) == pr.P, op, ": theta must have P = ", pr.P, " parameters for dims ", dims,
              ", got shape ", theta.sizes());
  if (theta.dim() == 2)
    TORCH_CHECK(theta.size(0) == pr.T, op, ": theta [T, P] must have T = ", pr.T,
                " rows (the tasks of x), got shape ", theta.sizes());
  pr.shared_theta = theta.dim() == 1;
  return pr;
}

// Class indices must lie in [0, O) before any kernel uses them as offsets.
inline void check_class_indices(const char* op, const at::Tensor& y, int64_t O, const char* name = "y") {
  if (y.numel() == 0) return;
  if (y.device().is_cpu()) {
    const int64_t* p = y.data_ptr<int64_t>();
    const int64_t n = y.numel();
    int64_t bad = -1;
    for (int64_t i = 0; i < n; ++i) {
      if (p[i] < 0 || p[i] >= O) {
        bad = i;
        break;
      }
    }
    TORCH_CHECK(bad < 0, op, ": ", name, " holds class index ", (bad < 0 ? 0 : p[bad]), " (task ",
                (bad < 0 ? 0 : bad / y.size(1)), ", point ", (bad < 0 ? 0 : bad % y.size(1)),
                "), outside [0, O) with O = ", O);
  } else {
    // On a GPU the check runs on the device: reading its result back would stall the
    // host at every call and break CUDA-graph capture. A bad index fails the stream as
    // a device-side assert at the next synchronisation.
    at::_assert_async(((y >= 0) & (y < O)).all(), std::string(op) + ": " + name +
                                                      " holds a class index outside [0, O) with O = " +
                                                      std::to_string(O));
  }
}

// Targets y of T tasks with N points: [T, N, O] floats (MSE) or [T, N] class indices in [0, O).
inline void check_targets(const char* op, const char* name, const at::Tensor& y, const at::Tensor& theta,
                          int64_t loss, int64_t T, int64_t N, int64_t O) {
  TORCH_CHECK(y.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(y.device() == theta.device(), op, ": ", name, " must be on the device of theta (", theta.device(),
              "), got ", y.device());
  TORCH_CHECK(y.is_contiguous(), op, ": ", name, " must be contiguous (got strides ", y.strides(), ")");
  if (loss == kMSE) {
    TORCH_CHECK(y.scalar_type() == theta.scalar_type(), op, ": ", name, " must have the dtype of theta (",
                theta.scalar_type(), ") for loss=0 (MSE), got ", y.scalar_type());
    check_shape(op, name, y, {T, N, O});
  } else {
    TORCH_CHECK(y.scalar_type() == at::kLong, op, ": ", name,
                " must be int64 class indices for loss=1 (cross-entropy), got ", y.scalar_type());
    check_shape(op, name, y, {T, N});
    check_class_indices(op, y, O, name);
  }
}

// adapt_fwd / adapt_bwd: lr, y, steps, loss on top of check_common.
inline Problem check_adapt(const char* op, const at::Tensor& theta, const at::Tensor& lr, const at::Tensor& x,
                           const at::Tensor& y, at::IntArrayRef dims, int64_t steps, int64_t loss, int64_t act) {
  TORCH_CHECK(loss == kMSE || loss == kCrossEntropy, op, ": loss must be 0 (MSE) or 1 (cross-entropy), got ", loss);
  TORCH_CHECK(steps >= 0, op, ": steps must be >= 0, got ", steps);
  Problem pr = check_common(op, theta, x, dims, act);
  TORCH_CHECK(pr.N >= 1, op, ": x must hold at least one point per task (N >= 1), got shape ", x.sizes());
  check_float(op, "lr", lr);
  check_same(op, "lr", lr, theta);
  TORCH_CHECK(lr.dim() == 1 || lr.dim() == 2, op, ": lr must be [P] (one rate per parameter for every step) or ",
              "[K, P] (one row per inner step), got shape ", lr.sizes());
  if (lr.dim() == 2) {
    TORCH_CHECK(lr.size(0) == steps, op, ": lr [K, P] needs K == steps = ", steps, ", got shape ", lr.sizes());
    check_shape(op, "lr", lr, {steps, pr.P});
  } else {
    check_shape(op, "lr", lr, {pr.P});
  }
  pr.lr_per_step = lr.dim() == 2;
  check_targets(op, "y", y, theta, loss, pr.T, pr.N, pr.O);
  return pr;
}

// maml_fwd: the support set as check_adapt, the query set (xq [T, Nq, D], yq) on top.
// Returns the problem of the support set; *Nq receives the query size.
inline Problem check_maml(const char* op, const at::Tensor& theta, const at::Tensor& lr, const at::Tensor& xs,
                          const at::Tensor& ys, const at::Tensor& xq, const at::Tensor& yq, at::IntArrayRef dims,
                          int64_t steps, int64_t loss, int64_t act, int64_t* Nq) {
  Problem pr = check_adapt(op, theta, lr, xs, ys, dims, steps, loss, act);
  check_float(op, "xq", xq);
  check_same(op, "xq", xq, theta);
  TORCH_CHECK(xq.dim() == 3 && xq.size(0) == pr.T && xq.size(2) == pr.D && xq.size(1) >= 1, op,
              ": xq must be [T, Nq, D] with T = ", pr.T, ", Nq >= 1 and D = ", pr.D, ", got shape ", xq.sizes());
  *Nq = xq.size(1);
  check_targets(op, "yq", yq, theta, loss, pr.T, *Nq, pr.O);
  return pr;
}

// maml_fwd's optional step_weights: [K] (K == steps >= 1), the dtype and device of theta.
inline void check_step_weights(const char* op, const c10::optional<at::Tensor>& w, int64_t steps,
                               const at::Tensor& theta) {
  if (!w.has_value() || !w->defined()) return;
  check_float(op, "step_weights", *w);
  check_same(op, "step_weights", *w, theta);
  TORCH_CHECK(steps >= 1, op, ": step_weights needs steps >= 1 (one weight per inner step), got steps = ", steps);
  check_shape(op, "step_weights", *w, {steps});
}

}  // namespace metakern
