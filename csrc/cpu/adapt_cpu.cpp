// C++ CPU kernels of the metakern ops (docs/kernels.md).
//
// Launchers: validate (common/checks.h), allocate outputs, then at::parallel_for
// over tasks. Each worker allocates one scratch block per chunk of tasks and runs the
// per-task passes of cpu/task_passes.h on it; no state is shared between tasks and
// no output is reduced across threads, so results are bitwise reproducible for any
// thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "cpu/task_passes.h"

namespace metakern {
namespace {

namespace tm = metakern::task;

constexpr const char* kAdaptFwd = "metakern::adapt_fwd";
constexpr const char* kAdaptBwd = "metakern::adapt_bwd";
constexpr const char* kMlpFwd = "metakern::mlp_fwd";
constexpr const char* kMlpBwd = "metakern::mlp_bwd";
constexpr const char* kMamlFwd = "metakern::maml_fwd";

// A 64-byte aligned, zeroed scratch block (one per chunk of tasks).
struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
std::unique_ptr<T, FreeDeleter> alloc_scratch(int64_t n) {
  const size_t bytes = (static_cast<size_t>(n) * sizeof(T) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes > 0 ? bytes : 64);
  TORCH_CHECK(p != nullptr, "metakern: cannot allocate ", bytes, " bytes of scratch");
  std::memset(p, 0, bytes > 0 ? bytes : 64);
  return std::unique_ptr<T, FreeDeleter>(static_cast<T*>(p));
}

// Per worker thread, the most scratch the second-order reverse loops (adapt_bwd,
// maml_fwd) spend on keeping grad_at's state of every inner step instead of
// recomputing it: K * Scratch::size(net, N, 1, false) elements. Above it they
// recompute. 4 MiB covers the sine MLP (16 KiB a step) far beyond K = 100, and
// wide models with many points at small K.
constexpr int64_t kKeptStepBytes = int64_t(4) << 20;

// The K per-step blocks of one worker, when they fit kKeptStepBytes (else none).
template <typename T>
struct KeptSteps {
  const task::Mlp& net;
  int64_t N, K, block;
  KeptSteps(const task::Mlp& net_, int64_t N_, int64_t K_)
      : net(net_), N(N_), K(0), block(task::Scratch<T>::size(net_, N_, 1, false)) {
    if (K_ > 1 && K_ * block * int64_t(sizeof(T)) <= kKeptStepBytes) K = K_;
  }
  int64_t elements() const { return K * block; }
  std::vector<task::Scratch<T>> carve(T* base) const {
    std::vector<task::Scratch<T>> out;
    for (int64_t k = 0; k < K; ++k) out.push_back(task::Scratch<T>::carve(base + k * block, net, N, 1, false));
    return out;
  }
};

// Tasks per parallel chunk: one is enough (a task is thousands of FLOPs at least);
// at::parallel_for hands each thread one contiguous range.
constexpr int64_t kGrain = 1;

// maml_fwd's sum over tasks: at most kSumBlocks blocks of tasks (the parallelism of
// the sum), fewer when their partial rows would pass kSumPartialBytes; columns of
// the final sum per parallel chunk.
constexpr int64_t kSumBlocks = 64;
constexpr int64_t kSumPartialBytes = int64_t(8) << 20;
constexpr int64_t kSumColumns = 4096;

void check_cpu(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor for the CPU kernel, got ", t.device());
}

}  // namespace

at::Tensor adapt_fwd_cpu(const at::Tensor& theta, const at::Tensor& lr, const at::Tensor& x, const at::Tensor& y,
                         at::IntArrayRef dims, int64_t steps, int64_t loss, int64_t act) {
  const Problem pr = check_adapt(kAdaptFwd, theta, lr, x, y, dims, steps, loss, act);
  check_cpu(kAdaptFwd, theta, "theta");
  at::Tensor out = at::empty({pr.T, pr.P}, theta.options());
  if (pr.T == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "adapt_fwd_cpu", [&] {
    const tm::Mlp net = tm::Mlp::make(pr.dims.data(), pr.L);
    const scalar_t* th = theta.data_ptr<scalar_t>();
    const scalar_t* lrp = lr.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yf = loss == kMSE ? y.data_ptr<scalar_t>() : nullptr;
    const int64_t* yi = loss == kCrossEntropy ? y.data_ptr<int64_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t N = pr.N, P = pr.P, ND = N * pr.D, NO = N * pr.O;
    const int64_t th_stride = pr.shared_theta ? 0 : P;
    const int64_t lr_step = pr.lr_per_step ? P : 0;  // lr [K, P]: row k for step k
    const int64_t ws = tm::Scratch<scalar_t>::size(net, N, 1, false);
    at::parallel_for(0, pr.T, kGrain, [&](int64_t begin, int64_t end) {
      auto buf = alloc_scratch<scalar_t>(ws);
      auto s = tm::Scratch<scalar_t>::carve(buf.get(), net, N, 1, false);
      for (int64_t t = begin; t < end; ++t) {
        tm::Targets<scalar_t> tg{yf ? yf + t * NO : nullptr, yi ? yi + t * N : nullptr};
        tm::adapt_forward_task<scalar_t>(net, N, steps, th + t * th_stride, lrp, lr_step, xp + t * ND, tg,
                                         static_cast<int>(act), static_cast<int>(loss), op + t * P, s);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adapt_bwd_cpu(const at::Tensor& grad, const at::Tensor& theta,
                                                             const at::Tensor& lr, const at::Tensor& x,
                                                             const at::Tensor& y, at::IntArrayRef dims,
                                                             int64_t steps, int64_t loss, int64_t act,
                                                             bool first_order, bool need_x) {
  const Problem pr = check_adapt(kAdaptBwd, theta, lr, x, y, dims, steps, loss, act);
  check_cpu(kAdaptBwd, theta, "theta");
  check_float(kAdaptBwd, "grad", grad);
  check_same(kAdaptBwd, "grad", grad, theta);
  check_shape(kAdaptBwd, "grad", grad, {pr.T, pr.P});
  at::Tensor g_theta = at::empty({pr.T, pr.P}, theta.options());
  // per task, lr's shape: [T, P] or [T, K, P]
  at::Tensor g_lr = pr.lr_per_step ? at::empty({pr.T, steps, pr.P}, theta.options())
                                   : at::empty({pr.T, pr.P}, theta.options());
  at::Tensor g_x = at::empty({pr.T, pr.N, pr.D}, theta.options());
  if (pr.T == 0) return {g_theta, g_lr, g_x};
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "adapt_bwd_cpu", [&] {
    const tm::Mlp net = tm::Mlp::make(pr.dims.data(), pr.L);
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* th = theta.data_ptr<scalar_t>();
    const scalar_t* lrp = lr.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yf = loss == kMSE ? y.data_ptr<scalar_t>() : nullptr;
    const int64_t* yi = loss == kCrossEntropy ? y.data_ptr<int64_t>() : nullptr;
    scalar_t* gtp = g_theta.data_ptr<scalar_t>();
    scalar_t* glp = g_lr.data_ptr<scalar_t>();
    scalar_t* gxp = g_x.data_ptr<scalar_t>();
    const int64_t N = pr.N, P = pr.P, ND = N * pr.D, NO = N * pr.O;
    const int64_t th_stride = pr.shared_theta ? 0 : P;
    const int64_t lr_step = pr.lr_per_step ? P : 0;         // lr [K, P]: row k for step k
    const int64_t glr_stride = pr.lr_per_step ? steps * P : P;  // one task's g_lr
    const bool rop = !first_order && steps > 0;
    const int64_t ws = tm::Scratch<scalar_t>::size(net, N, steps, rop);
    const KeptSteps<scalar_t> keep(net, N, rop ? steps : 0);
    at::parallel_for(0, pr.T, kGrain, [&](int64_t begin, int64_t end) {
      auto buf = alloc_scratch<scalar_t>(ws + keep.elements());
      auto s = tm::Scratch<scalar_t>::carve(buf.get(), net, N, steps, rop);
      auto kept = keep.carve(buf.get() + ws);
      for (int64_t t = begin; t < end; ++t) {
        tm::Targets<scalar_t> tg{yf ? yf + t * NO : nullptr, yi ? yi + t * N : nullptr};
        tm::adapt_backward_task<scalar_t>(net, N, steps, th + t * th_stride, lrp, lr_step, xp + t * ND, tg,
                                          gp + t * P, static_cast<int>(act), static_cast<int>(loss), first_order,
                                          need_x, gtp + t * P, glp + t * glr_stride, gxp + t * ND, s,
                                          kept.empty() ? nullptr : kept.data());
      }
    });
  });
  return {g_theta, g_lr, g_x};
}

at::Tensor mlp_fwd_cpu(const at::Tensor& theta, const at::Tensor& x, at::IntArrayRef dims, int64_t act) {
  const Problem pr = check_common(kMlpFwd, theta, x, dims, act);
  check_cpu(kMlpFwd, theta, "theta");
  at::Tensor out = at::empty({pr.T, pr.N, pr.O}, theta.options());
  if (pr.T == 0 || pr.N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "mlp_fwd_cpu", [&] {
    const tm::Mlp net = tm::Mlp::make(pr.dims.data(), pr.L);
    const scalar_t* th = theta.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t N = pr.N, P = pr.P, ND = N * pr.D, NO = N * pr.O;
    const int64_t th_stride = pr.shared_theta ? 0 : P;
    const int64_t ws = tm::Scratch<scalar_t>::size(net, N, 0, false);
    at::parallel_for(0, pr.T, kGrain, [&](int64_t begin, int64_t end) {
      auto buf = alloc_scratch<scalar_t>(ws);
      auto s = tm::Scratch<scalar_t>::carve(buf.get(), net, N, 0, false);
      for (int64_t t = begin; t < end; ++t)
        tm::mlp_forward_task<scalar_t>(net, N, th + t * th_stride, xp + t * ND, static_cast<int>(act),
                                       op + t * NO, s);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> mlp_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& theta,
                                               const at::Tensor& x, at::IntArrayRef dims, int64_t act,
                                               bool need_x) {
  const Problem pr = check_common(kMlpBwd, theta, x, dims, act);
  check_cpu(kMlpBwd, theta, "theta");
  check_float(kMlpBwd, "grad_out", grad_out);
  check_same(kMlpBwd, "grad_out", grad_out, theta);
  check_shape(kMlpBwd, "grad_out", grad_out, {pr.T, pr.N, pr.O});
  at::Tensor g_theta = at::empty({pr.T, pr.P}, theta.options());
  at::Tensor g_x = at::empty({pr.T, pr.N, pr.D}, theta.options());
  if (pr.T == 0) return {g_theta, g_x};
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "mlp_bwd_cpu", [&] {
    const tm::Mlp net = tm::Mlp::make(pr.dims.data(), pr.L);
    const scalar_t* gop = grad_out.data_ptr<scalar_t>();
    const scalar_t* th = theta.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* gtp = g_theta.data_ptr<scalar_t>();
    scalar_t* gxp = g_x.data_ptr<scalar_t>();
    const int64_t N = pr.N, P = pr.P, ND = N * pr.D, NO = N * pr.O;
    const int64_t th_stride = pr.shared_theta ? 0 : P;
    const int64_t ws = tm::Scratch<scalar_t>::size(net, N, 0, false);
    at::parallel_for(0, pr.T, kGrain, [&](int64_t begin, int64_t end) {
      auto buf = alloc_scratch<scalar_t>(ws);
      auto s = tm::Scratch<scalar_t>::carve(buf.get(), net, N, 0, false);
      for (int64_t t = begin; t < end; ++t)
        tm::mlp_backward_task<scalar_t>(net, N, th + t * th_stride, xp + t * ND, gop + t * NO,
                                        static_cast<int>(act), need_x, gtp + t * P, gxp + t * ND, s);
    });
  });
  return {g_theta, g_x};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> maml_fwd_cpu(const at::Tensor& theta, const at::Tensor& lr,
                                                            const at::Tensor& xs, const at::Tensor& ys,
                                                            const at::Tensor& xq, const at::Tensor& yq,
                                                            at::IntArrayRef dims, int64_t steps, int64_t loss,
                                                            int64_t act, bool first_order, bool need_grad,
                                                            bool need_lr,
                                                            const c10::optional<at::Tensor>& step_weights,
                                                            bool sum_tasks) {
  int64_t Nq = 0;
  const Problem pr = check_maml(kMamlFwd, theta, lr, xs, ys, xq, yq, dims, steps, loss, act, &Nq);
  check_step_weights(kMamlFwd, step_weights, steps, theta);
  check_cpu(kMamlFwd, theta, "theta");
  const bool weighted = step_weights.has_value() && step_weights->defined();
  at::Tensor losses = at::empty({pr.T}, theta.options());
  need_lr = need_lr && need_grad;
  // sum_tasks: the gradients of shared inputs (lr; theta when it is [P]) summed over tasks
  const bool sum_theta = sum_tasks && need_grad && pr.shared_theta;
  const bool sum_lr = sum_tasks && need_lr;
  at::Tensor g_theta = at::empty({need_grad ? (sum_theta ? 1 : pr.T) : 0, pr.P}, theta.options());
  // lr's shape ([P] or [K, P]) per task, or summed; [0, P] without need_lr
  const int64_t lr_tasks = sum_lr ? 1 : pr.T;
  at::Tensor g_lr = !need_lr          ? at::empty({0, pr.P}, theta.options())
                    : pr.lr_per_step ? at::empty({lr_tasks, steps, pr.P}, theta.options())
                                     : at::empty({lr_tasks, pr.P}, theta.options());
  if (pr.T == 0) {
    if (sum_theta) g_theta.zero_();
    if (sum_lr) g_lr.zero_();
    return {losses, g_theta, g_lr};
  }
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "maml_fwd_cpu", [&] {
    const tm::Mlp net = tm::Mlp::make(pr.dims.data(), pr.L);
    const scalar_t* th = theta.data_ptr<scalar_t>();
    const scalar_t* lrp = lr.data_ptr<scalar_t>();
    const scalar_t* swp = weighted ? step_weights->data_ptr<scalar_t>() : nullptr;
    const scalar_t* xsp = xs.data_ptr<scalar_t>();
    const scalar_t* xqp = xq.data_ptr<scalar_t>();
    const bool mse = loss == kMSE;
    const scalar_t* ysf = mse ? ys.data_ptr<scalar_t>() : nullptr;
    const int64_t* ysi = mse ? nullptr : ys.data_ptr<int64_t>();
    const scalar_t* yqf = mse ? yq.data_ptr<scalar_t>() : nullptr;
    const int64_t* yqi = mse ? nullptr : yq.data_ptr<int64_t>();
    scalar_t* lp = losses.data_ptr<scalar_t>();
    scalar_t* gtp = need_grad ? g_theta.data_ptr<scalar_t>() : nullptr;
    scalar_t* glp = need_lr ? g_lr.data_ptr<scalar_t>() : nullptr;
    const int64_t Ns = pr.N, P = pr.P, D = pr.D, O = pr.O;
    const int64_t th_stride = pr.shared_theta ? 0 : P;
    const int64_t lr_step = pr.lr_per_step ? P : 0;             // lr [K, P]: row k for step k
    const int64_t glr_stride = pr.lr_per_step ? steps * P : P;  // one task's g_lr
    const bool rop = need_grad && !first_order && steps > 0;
    const int64_t ws_s = tm::Scratch<scalar_t>::size(net, Ns, steps + 1, rop);
    const int64_t ws_q = tm::Scratch<scalar_t>::size(net, Nq, 0, false);
    const KeptSteps<scalar_t> keep(net, Ns, rop ? steps : 0);
    // the multi-step loss: each step's weighted query gradient ([K, P]) and, first
    // order with a rate gradient, each step's support gradient g_k ([K, P])
    const int64_t n_gq = weighted && need_grad ? steps * P : 0;
    const int64_t n_gk = weighted && need_grad && first_order && need_lr ? steps * P : 0;
    // summed gradients: one task's gradients go to a per-thread row first
    const int64_t n_st = sum_theta ? P : 0, n_sl = sum_lr ? glr_stride : 0;
    const int64_t ws = ws_s + ws_q + keep.elements() + n_gq + n_gk + n_st + n_sl;
    // One task of the batch with its own scratch; gt/gl: where its gradients go.
    auto run = [&](int64_t t, tm::Scratch<scalar_t>& s, tm::Scratch<scalar_t>& q,
                   std::vector<tm::Scratch<scalar_t>>& kept, scalar_t* gq, scalar_t* gk, scalar_t* gt,
                   scalar_t* gl) {
      tm::Targets<scalar_t> ts{ysf ? ysf + t * Ns * O : nullptr, ysi ? ysi + t * Ns : nullptr};
      tm::Targets<scalar_t> tq{yqf ? yqf + t * Nq * O : nullptr, yqi ? yqi + t * Nq : nullptr};
      tm::maml_task<scalar_t>(net, Ns, Nq, steps, th + t * th_stride, lrp, lr_step, swp, xsp + t * Ns * D, ts,
                              xqp + t * Nq * D, tq, static_cast<int>(act), static_cast<int>(loss), first_order,
                              need_grad, lp + t, gt, gl, gq, gk, s, q, kept.empty() ? nullptr : kept.data());
    };
    if (!sum_theta && !sum_lr) {
      at::parallel_for(0, pr.T, kGrain, [&](int64_t begin, int64_t end) {
        auto buf = alloc_scratch<scalar_t>(ws);
        auto s = tm::Scratch<scalar_t>::carve(buf.get(), net, Ns, steps + 1, rop);
        auto q = tm::Scratch<scalar_t>::carve(buf.get() + ws_s, net, Nq, 0, false);
        auto kept = keep.carve(buf.get() + ws_s + ws_q);
        scalar_t* gq = n_gq > 0 ? buf.get() + ws_s + ws_q + keep.elements() : nullptr;
        scalar_t* gk = n_gk > 0 ? buf.get() + ws_s + ws_q + keep.elements() + n_gq : nullptr;
        for (int64_t t = begin; t < end; ++t)
          run(t, s, q, kept, gq, gk, gtp ? gtp + t * P : nullptr, glp ? glp + t * glr_stride : nullptr);
      });
      return;
    }
    // Summed over tasks in a fixed order: the tasks fall into `blocks` contiguous
    // blocks, each block adds its tasks' gradients in task order into its own partial
    // row, and the partial rows are added in block order. The blocks depend on T and
    // the row length only, not on the threads, so neither do the bits.
    const int64_t G = n_st + n_sl;  // one partial row: [g_theta | g_lr]
    const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(
        std::min<int64_t>(pr.T, kSumBlocks), kSumPartialBytes / (G * int64_t(sizeof(scalar_t)))));
    const int64_t per_block = (pr.T + blocks - 1) / blocks;
    std::vector<scalar_t> partial(blocks * G);
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      auto buf = alloc_scratch<scalar_t>(ws);
      auto s = tm::Scratch<scalar_t>::carve(buf.get(), net, Ns, steps + 1, rop);
      auto q = tm::Scratch<scalar_t>::carve(buf.get() + ws_s, net, Nq, 0, false);
      auto kept = keep.carve(buf.get() + ws_s + ws_q);
      scalar_t* gq = n_gq > 0 ? buf.get() + ws_s + ws_q + keep.elements() : nullptr;
      scalar_t* gk = n_gk > 0 ? buf.get() + ws_s + ws_q + keep.elements() + n_gq : nullptr;
      scalar_t* row = buf.get() + ws_s + ws_q + keep.elements() + n_gq + n_gk;  // [g_theta | g_lr] of one task
      for (int64_t b = b0; b < b1; ++b) {
        scalar_t* acc = partial.data() + b * G;
        std::fill(acc, acc + G, scalar_t(0));
        for (int64_t t = b * per_block; t < std::min(pr.T, (b + 1) * per_block); ++t) {
          run(t, s, q, kept, gq, gk, sum_theta ? row : (gtp ? gtp + t * P : nullptr),
              sum_lr ? row + n_st : (glp ? glp + t * glr_stride : nullptr));
          for (int64_t i = 0; i < G; ++i) acc[i] += row[i];
        }
      }
    });
    at::parallel_for(0, G, kSumColumns, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        scalar_t v = partial[i];
        for (int64_t b = 1; b < blocks; ++b) v += partial[b * G + i];
        if (i < n_st)
          gtp[i] = v;
        else
          glp[i - n_st] = v;
      }
    });
  });
  return {losses, g_theta, g_lr};
}

TORCH_LIBRARY_IMPL(metakern, CPU, m) {
  m.impl("maml_fwd", &maml_fwd_cpu);
  m.impl("adapt_fwd", &adapt_fwd_cpu);
  m.impl("adapt_bwd", &adapt_bwd_cpu);
  m.impl("mlp_fwd", &mlp_fwd_cpu);
  m.impl("mlp_bwd", &mlp_bwd_cpu);
}

}  // namespace metakern
