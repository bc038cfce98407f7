// metakern._C.maml_loss: the MAML objective as one C++ autograd node.
//
// The eager front end of metakern::maml_fwd (csrc/schema/ops.cpp) for backends that have it.
// It does in C++ what metakern._ops._MamlFn does in Python: pack the parameter list
// into theta, run maml_fwd (losses and per-task gradients in one walk of the inner
// loop), reduce the losses over tasks; the backward weights the saved per-task
// gradients by dL/dl_t, sums them over tasks for shared tensors and hands each
// parameter its own view: a few ATen calls around the kernel, no Python.
//
// Same math and the same ATen reductions as _MamlFn, so both give the same bits. Like
// a Python Function under @once_differentiable, differentiating its backward again
// raises. torch.compile never sees this function: under compile metakern composes
// the registered adapt/mlp ops instead (metakern/_ops.py:maml_op).
#include "autograd/maml_loss.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace metakern {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct MamlSpec {
  std::vector<int64_t> dims;
  std::vector<bool> per_task;
  int64_t steps, loss, act, reduction;
  bool first_order;
  bool need_lr;  // lr needs a gradient: maml_fwd also computes and returns dl_t/dlr
};

const char* const kTwice = "trying to differentiate twice metakern's fused MAML objective (its backward is "
                           "computed once, in the forward pass); use first-order gradients of it only";

// [P] when every tensor is shared, else [T, P] with shared tensors broadcast
// (metakern._ops.pack_params).
at::Tensor pack(at::TensorList params, const std::vector<bool>& per_task, int64_t T) {
  bool any = false;
  for (bool b : per_task) any = any || b;
  std::vector<at::Tensor> parts;
  parts.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    if (!any)
      parts.push_back(params[i].reshape({-1}));
    else if (per_task[i])
      parts.push_back(params[i].reshape({T, -1}));
    else
      parts.push_back(params[i].reshape({1, -1}).expand({T, -1}));
  }
  return at::cat(parts, any ? 1 : 0);
}

// metakern::maml_fwd through the dispatcher, below the Autograd key (the Python
// autograd formula registered on the op is not wanted here: the gradients are its outputs).
std::tuple<at::Tensor, at::Tensor, at::Tensor> maml_fwd(const at::Tensor& theta, const at::Tensor& lr,
                                                        const at::Tensor& xs, const at::Tensor& ys,
                                                        const at::Tensor& xq, const at::Tensor& yq,
                                                        const MamlSpec& s, bool need_grad) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("metakern::maml_fwd", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, at::IntArrayRef, int64_t, int64_t, int64_t, bool, bool, bool)>();
  at::AutoDispatchBelowADInplaceOrView below;
  return op.call(theta, lr, xs, ys, xq, yq, s.dims, s.steps, s.loss, s.act, s.first_order, need_grad, s.need_lr);
}

at::Tensor reduce(const at::Tensor& losses, int64_t reduction) {
  if (reduction == kReduceMean) return losses.mean();
  return reduction == kReduceSum ? losses.sum() : losses;
}

// Element counts of the packed segments W_1, b_1, ..., W_L, b_L.
std::vector<int64_t> split_sizes(const std::vector<int64_t>& dims) {
  std::vector<int64_t> sizes;
  for (size_t l = 0; l + 1 < dims.size(); ++l) {
    sizes.push_back(dims[l] * dims[l + 1]);
    sizes.push_back(dims[l + 1]);
  }
  return sizes;
}

class MamlLossFn : public torch::autograd::Function<MamlLossFn> {
 public:
  // Variable inputs (the order of needs_input_grad): lr, xs, ys, xq, yq, params...
  static at::Tensor forward(AutogradContext* ctx, const MamlSpec& s, const at::Tensor& lr, const at::Tensor& xs,
                            const at::Tensor& ys, const at::Tensor& xq, const at::Tensor& yq,
                            at::TensorList params) {
    at::Tensor losses, g_theta, g_lr;
    std::tie(losses, g_theta, g_lr) = maml_fwd(pack(params, s.per_task, xs.size(0)), lr, xs, ys, xq, yq, s, true);
    ctx->save_for_backward({g_theta, g_lr});
    std::vector<int64_t> shapes;  // per parameter: ndim, then its sizes
    for (const at::Tensor& p : params) {
      shapes.push_back(p.dim());
      for (int64_t d : p.sizes()) shapes.push_back(d);
    }
    std::vector<int64_t> per_task(s.per_task.begin(), s.per_task.end());
    ctx->saved_data["shapes"] = std::move(shapes);
    ctx->saved_data["per_task"] = std::move(per_task);
    ctx->saved_data["sizes"] = split_sizes(s.dims);
    ctx->saved_data["reduction"] = s.reduction;
    return reduce(losses, s.reduction);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor g_out = grad_outputs[0];
    const bool wrap = at::GradMode::is_enabled() && g_out.requires_grad();
    at::NoGradGuard no_grad;
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &g_theta = saved[0], &g_lr = saved[1];
    const std::vector<int64_t> shapes = ctx->saved_data["shapes"].toIntVector();
    const std::vector<int64_t> per_task = ctx->saved_data["per_task"].toIntVector();
    const std::vector<int64_t> sizes = ctx->saved_data["sizes"].toIntVector();
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    const size_t n = per_task.size();

    const int64_t T = g_theta.size(0);
    const at::Tensor w =
        reduction == kReduceNone ? g_out : (reduction == kReduceMean ? g_out / T : g_out).expand({T});
    variable_list out(6 + n);  // spec, lr, xs, ys, xq, yq, params...
    if (ctx->needs_input_grad(0)) out[1] = at::matmul(w, g_lr);
    bool any_param = false, any_per_task = false;
    for (size_t i = 0; i < n; ++i) {
      any_param = any_param || ctx->needs_input_grad(5 + i);
      any_per_task = any_per_task || per_task[i] != 0;
    }
    if (any_param) {
      const std::vector<at::Tensor> parts = any_per_task ? (g_theta * w.unsqueeze(1)).split_with_sizes(sizes, 1)
                                                         : at::matmul(w, g_theta).split_with_sizes(sizes);
      size_t at = 0;
      for (size_t i = 0; i < n; ++i) {
        const int64_t nd = shapes[at];
        const std::vector<int64_t> shape(shapes.begin() + at + 1, shapes.begin() + at + 1 + nd);
        at += 1 + nd;
        if (!ctx->needs_input_grad(5 + i)) continue;
        if (!any_per_task)
          out[6 + i] = parts[i].view(shape);
        else
          out[6 + i] = per_task[i] ? parts[i].reshape(shape) : parts[i].sum(0).view(shape);
      }
    }
    if (!wrap) return out;
    // As @once_differentiable: the gradients come out of an Error node, so that
    // differentiating them (create_graph=True, then backward again) raises.
    variable_list in;
    in.reserve(out.size());
    for (const at::Tensor& g : out) in.push_back(g.defined() ? g.detach().requires_grad_(true) : at::Tensor());
    auto err = std::make_shared<torch::autograd::DelayedError>(kTwice, static_cast<int64_t>(in.size()));
    return (*err)(std::move(in));
  }
};

}  // namespace

at::Tensor maml_loss(const std::vector<at::Tensor>& params, const at::Tensor& lr, const at::Tensor& xs,
                     const at::Tensor& ys, const at::Tensor& xq, const at::Tensor& yq, std::vector<int64_t> dims,
                     std::vector<bool> per_task, int64_t steps, int64_t loss, int64_t act, bool first_order,
                     int64_t reduction) {
  TORCH_CHECK_VALUE(reduction == kReduceMean || reduction == kReduceSum || reduction == kReduceNone,
                    "metakern maml_loss: reduction must be 0 (mean), 1 (sum) or 2 (none), got ", reduction);
  TORCH_CHECK_VALUE(per_task.size() == params.size(), "metakern maml_loss: per_task has ", per_task.size(),
                    " entries for ", params.size(), " params");
  TORCH_CHECK_VALUE(dims.size() >= 2 && params.size() == 2 * (dims.size() - 1), "metakern maml_loss: ",
                    params.size(), " params do not match dims of ", dims.size(), " widths (2 per layer)");
  MamlSpec s{std::move(dims), std::move(per_task), steps, loss, act, reduction, first_order, lr.requires_grad()};
  bool need = lr.requires_grad();
  for (const at::Tensor& p : params) need = need || p.requires_grad();
  if (!(need && at::GradMode::is_enabled())) {
    at::Tensor losses = std::get<0>(maml_fwd(pack(params, s.per_task, xs.size(0)), lr, xs, ys, xq, yq, s, false));
    return reduce(losses, s.reduction);
  }
  return MamlLossFn::apply(s, lr, xs, ys, xq, yq, at::TensorList(params));
}

}  // namespace metakern
