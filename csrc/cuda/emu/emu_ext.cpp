// Runs metakern's CUDA kernels (csrc/cuda/adapt_kernels.cuh) on the CPU through
// emu_prelude.h, with the same host plan (adapt_plan.h) as the real launchers.
// A test harness only (built by check_emu.py; setup.py does not compile this
// folder). Extra arguments of each op: max_nb (cap on points per chunk, 0 = none),
// mode (thread order between barriers: 0 identity, 1 reversed, 2+ random),
// limit (shared-memory bytes per block to plan for).
#include "emu_prelude.h"
#include <torch/extension.h>
#include "cuda/adapt_kernels.cuh"
#include "cuda/static_switch.h"

namespace metakern { namespace cuda_kernels {
alignas(16) unsigned char mk_smem[1 << 22];
}}

using namespace metakern::cuda_kernels;

static constexpr size_t kCanary = 1 << 16;

template <typename F>
static long emu_launch(F&& body, int64_t blocks, const LaunchCfg& cfg, int mode) {
  unsigned char* sm = metakern::cuda_kernels::mk_smem;
  TORCH_CHECK(cfg.smem_bytes + kCanary <= (int64_t)sizeof(metakern::cuda_kernels::mk_smem));
  long syncs = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    std::memset(sm, 0xFF, cfg.smem_bytes + kCanary);  // NaN everywhere: uninitialised reads show up
    blockIdx.x = (unsigned)b;
    blockDim.x = cfg.threads;
    EmuSched s;
    s.nthr = cfg.threads;
    s.mode = mode;
    s.rng.seed(1234 + b + 77 * mode);
    s.new_order();
    g_sched = &s;
    std::vector<std::thread> ths;
    for (int t = 0; t < cfg.threads; ++t) {
      ths.emplace_back([&, t] {
        threadIdx.x = t;
        t_tid = t;
        {
          std::unique_lock<std::mutex> lk(s.m);
          emu_wait_turn(lk, 0);
        }
        body();
        std::unique_lock<std::mutex> lk(s.m);
        emu_end_segment_locked();
      });
    }
    for (auto& th : ths) th.join();
    syncs += s.syncs;
    for (size_t i = 0; i < kCanary; ++i)
      TORCH_CHECK(sm[cfg.smem_bytes + i] == 0xFF, "shared-memory write past the plan at byte ", cfg.smem_bytes + i);
  }
  return syncs;
}

static at::Tensor poisoned(at::IntArrayRef sizes, const at::TensorOptions& o) {
  return at::full(sizes, std::numeric_limits<double>::quiet_NaN(), o);
}

template <typename T>
static Params<T> base(const MlpShape& s, const LaunchCfg& cfg, const at::Tensor& theta, const at::Tensor& x, int64_t N, int64_t K) {
  Params<T> p{};
  p.s = s; p.pl = cfg.pl;
  p.theta = theta.data_ptr<T>();
  p.theta_stride = theta.dim() == 1 ? 0 : s.P;
  p.x = x.data_ptr<T>();
  p.N = N; p.K = K; p.nb = cfg.nb; p.nchunks = cfg.nchunks;
  return p;
}

std::vector<int64_t> emu_cfg(std::vector<int64_t> dims, int64_t N, int64_t kind, bool rpass, int64_t elt, int64_t limit, int64_t max_nb) {
  MlpShape s = make_shape("emu", dims);
  LaunchCfg c = configure("emu", s, N, kind, rpass, elt, limit, max_nb);
  return {c.nb, c.nchunks, c.threads, c.smem_bytes, s.P};
}

at::Tensor emu_adapt_fwd(at::Tensor theta, at::Tensor lr, at::Tensor x, at::Tensor y, std::vector<int64_t> dims,
                         int64_t steps, int64_t loss, int64_t act, int64_t max_nb, int64_t mode, int64_t limit) {
  MlpShape s = make_shape("emu", dims);
  int64_t T = x.size(0), N = x.size(1);
  auto out = poisoned({T, (int64_t)s.P}, theta.options());
  LaunchCfg cfg = configure("emu", s, N, kPlanAdapt, false, theta.element_size(), limit, max_nb);
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "emu", [&] {
    auto p = base<scalar_t>(s, cfg, theta, x, N, steps);
    p.lr = lr.data_ptr<scalar_t>();
    p.lr_stride = lr.dim() == 2 ? s.P : 0;  // [K, P]: row k for step k
    if (loss == 0) p.yf = y.data_ptr<scalar_t>(); else p.yi = y.data_ptr<int64_t>();
    p.out = out.data_ptr<scalar_t>();
    MK_ACT_SWITCH(act, kAct, [&] { MK_LOSS_SWITCH(loss, kLoss, [&] {
      emu_launch([&] { adapt_fwd_kernel<scalar_t, kAct, kLoss>(p); }, T, cfg, mode); }); });
  });
  return out;
}

std::vector<at::Tensor> emu_adapt_bwd(at::Tensor grad, at::Tensor theta, at::Tensor lr, at::Tensor x, at::Tensor y,
                                      std::vector<int64_t> dims, int64_t steps, int64_t loss, int64_t act,
                                      bool first_order, bool need_x, int64_t max_nb, int64_t mode, int64_t limit) {
  MlpShape s = make_shape("emu", dims);
  int64_t T = x.size(0), N = x.size(1), P = s.P;
  auto gth = poisoned({T, P}, theta.options());
  auto glr = lr.dim() == 2 ? poisoned({T, steps, P}, theta.options()) : poisoned({T, P}, theta.options());
  auto gx = poisoned({T, N, (int64_t)s.d[0]}, theta.options());
  bool second = !first_order;
  LaunchCfg cfg = configure("emu", s, N, kPlanAdapt, second, theta.element_size(), limit, max_nb);
  auto scratch = poisoned({second && steps > 1 ? T * (steps - 1) * P : 0}, theta.options());
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "emu", [&] {
    auto p = base<scalar_t>(s, cfg, theta, x, N, steps);
    p.lr = lr.data_ptr<scalar_t>();
    p.lr_stride = lr.dim() == 2 ? s.P : 0;  // [K, P]: row k for step k
    if (loss == 0) p.yf = y.data_ptr<scalar_t>(); else p.yi = y.data_ptr<int64_t>();
    p.grad = grad.data_ptr<scalar_t>();
    p.out = gth.data_ptr<scalar_t>();
    p.out2 = glr.data_ptr<scalar_t>();
    p.gx = gx.data_ptr<scalar_t>();
    p.scratch = scratch.numel() ? scratch.data_ptr<scalar_t>() : nullptr;
    p.need_x = need_x;
    MK_ACT_SWITCH(act, kAct, [&] { MK_LOSS_SWITCH(loss, kLoss, [&] { MK_BOOL_SWITCH(second, kSecond, [&] {
      emu_launch([&] { adapt_bwd_kernel<scalar_t, kAct, kLoss, kSecond>(p); }, T, cfg, mode); }); }); });
  });
  return {gth, glr, gx};
}

at::Tensor emu_mlp_fwd(at::Tensor theta, at::Tensor x, std::vector<int64_t> dims, int64_t act, int64_t max_nb, int64_t mode, int64_t limit) {
  MlpShape s = make_shape("emu", dims);
  int64_t T = x.size(0), N = x.size(1);
  auto out = poisoned({T, N, (int64_t)s.d[s.L]}, theta.options());
  if (T == 0 || N == 0) return out;
  LaunchCfg cfg = configure("emu", s, N, kPlanMlpFwd, false, theta.element_size(), limit, max_nb);
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "emu", [&] {
    auto p = base<scalar_t>(s, cfg, theta, x, N, 0);
    p.out = out.data_ptr<scalar_t>();
    MK_ACT_SWITCH(act, kAct, [&] {
      emu_launch([&] { mlp_fwd_kernel<scalar_t, kAct>(p); }, T * cfg.nchunks, cfg, mode); });
  });
  return out;
}

std::vector<at::Tensor> emu_mlp_bwd(at::Tensor grad_out, at::Tensor theta, at::Tensor x, std::vector<int64_t> dims, int64_t act,
                                    bool need_x, int64_t max_nb, int64_t mode, int64_t limit) {
  MlpShape s = make_shape("emu", dims);
  int64_t T = x.size(0), N = x.size(1);
  auto gth = poisoned({T, (int64_t)s.P}, theta.options());
  auto gx = poisoned({T, N, (int64_t)s.d[0]}, theta.options());
  LaunchCfg cfg = configure("emu", s, N, kPlanMlpBwd, false, theta.element_size(), limit, max_nb);
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "emu", [&] {
    auto p = base<scalar_t>(s, cfg, theta, x, N, 0);
    p.yf = grad_out.data_ptr<scalar_t>();
    p.out = gth.data_ptr<scalar_t>();
    p.gx = gx.data_ptr<scalar_t>();
    p.need_x = need_x;
    MK_ACT_SWITCH(act, kAct, [&] {
      emu_launch([&] { mlp_bwd_kernel<scalar_t, kAct>(p); }, T, cfg, mode); });
  });
  return {gth, gx};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cfg", &emu_cfg);
  m.def("adapt_fwd", &emu_adapt_fwd);
  m.def("adapt_bwd", &emu_adapt_bwd);
  m.def("mlp_fwd", &emu_mlp_fwd);
  m.def("mlp_bwd", &emu_mlp_bwd);
}
