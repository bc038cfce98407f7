// metakern._C.maml_loss: the MAML objective as one C++ autograd node.
//
// The eager front end of metakern::maml_fwd (csrc/schema/ops.cpp) for backends that have it.
// It does in C++ what metakern._ops._MamlFn does in Python: pack the parameter list
// into theta, run maml_fwd (losses and per-task gradients in one walk of the inner
// loop; with step_weights, the multi-step loss), reduce the losses over tasks; the
// backward weights the saved gradients by dL/dl_t (under mean and sum, where every task
// weighs the same, the kernel has summed those of shared tensors over tasks already),
// sums the rest over tasks for shared tensors (lr: to [P] or [K, P], its own shape)
// and hands each parameter its own view: a few ATen calls around the kernel, no Python.
//
// Same math and the same ATen reductions as _MamlFn, so both give the same bits. A
// backward with create_graph=True gets gradients autograd can differentiate again, as
// _MamlFn gives them (MamlLossBackward::with_graph). torch.compile never sees this function: under compile metakern composes
// the registered adapt/mlp ops instead (metakern/_ops.py:maml_op).
#include "autograd/maml_loss.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace metakern {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

struct MamlSpec {
  std::vector<int64_t> dims;
  std::vector<bool> per_task;
  int64_t steps, loss, act, reduction;
  bool first_order;
  bool need_lr;  // lr needs a gradient: maml_fwd also computes and returns dl_t/dlr
};

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
                                                        const c10::optional<at::Tensor>& step_weights,
                                                        const MamlSpec& s, bool need_grad) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("metakern::maml_fwd", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, at::IntArrayRef, int64_t, int64_t, int64_t, bool, bool, bool,
              const c10::optional<at::Tensor>&, bool)>();
  at::AutoDispatchBelowADInplaceOrView below;
  // mean and sum weigh every task alike: the kernel sums the shared inputs' gradients itself
  return op.call(theta, lr, xs, ys, xq, yq, s.dims, s.steps, s.loss, s.act, s.first_order, need_grad, s.need_lr,
                 step_weights, s.reduction != kReduceNone);
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

// Autograd nodes are held by std::shared_ptr in older torch releases and by
// c10::intrusive_ptr in newer ones (2.14 here): whichever Edge::function is.
template <class N>
auto make_node() {
  using NodePtr = decltype(torch::autograd::Edge::function);
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>)
    return std::make_shared<N>();
  else
    return c10::make_intrusive<N>();
}

// The backward node. Next edges: lr, then the parameters (the order of
// should_compute_output); xs, ys, xq, yq get no gradient from it (metakern/_ops.py
// takes the composed path when a batch needs one and refuses targets that do).
struct MamlLossBackward : public torch::autograd::Node {
  std::string name() const override { return "MamlLossBackward"; }

  void release_variables() override {
    g_theta.reset_data();
    g_lr.reset_data();
    step_weights.reset_data();
    for (SavedVariable& v : inputs) v.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    const size_t n = spec.per_task.size();
    variable_list out(1 + n);
    const at::Tensor& g_out = grads[0];
    if (!g_out.defined()) return out;
    if (at::GradMode::is_enabled()) return with_graph(g_out);  // create_graph=True
    const at::Tensor gt = g_theta.unpack(), gl = g_lr.unpack();
    const bool none = spec.reduction == kReduceNone;
    // dL/dl_t: g_out per task, or one factor for every task (mean, sum)
    const at::Tensor c = spec.reduction == kReduceMean ? g_out / T : g_out;
    const at::Tensor w = none ? g_out : c.expand({T});
    // g_lr is [T, P] or [T, K, P] (lr [P] or [K, P]) per task, or already summed over
    // tasks ([1, ...]) under mean and sum: reduced to lr's shape
    if (should_compute_output(0))
      out[0] = none ? at::matmul(w, gl.flatten(1)).view(gl.sizes().slice(1)) : gl.select(0, 0) * c;
    bool any_param = false, any_per_task = false;
    for (size_t i = 0; i < n; ++i) {
      any_param = any_param || should_compute_output(1 + i);
      any_per_task = any_per_task || spec.per_task[i];
    }
    if (!any_param) return out;
    // a shared theta's g_theta is [1, P] under mean and sum, else [T, P]
    const std::vector<at::Tensor> parts = any_per_task ? (gt * w.unsqueeze(1)).split_with_sizes(sizes, 1)
                                          : none       ? at::matmul(w, gt).split_with_sizes(sizes)
                                                       : (gt.select(0, 0) * c).split_with_sizes(sizes);
    for (size_t i = 0; i < n; ++i) {
      if (!should_compute_output(1 + i)) continue;
      if (!any_per_task)
        out[1 + i] = parts[i].view(shapes[i]);
      else
        out[1 + i] = spec.per_task[i] ? parts[i].reshape(shapes[i]) : parts[i].sum(0).view(shapes[i]);
    }
    return out;
  }

  // Gradients that autograd can differentiate again: the objective recomputed by
  // metakern/_ops.py (the inner loop unrolled in differentiable ATen ops, then
  // torch.autograd.grad with create_graph=True), reached through the dispatcher.
  variable_list with_graph(const at::Tensor& g_out) {
    auto schema = c10::Dispatcher::singleton().findSchema({"metakern_py::maml_loss_grads_with_graph", ""});
    TORCH_CHECK(schema.has_value(),
                "metakern maml_loss: a backward with create_graph=True needs the Python package's "
                "metakern_py::maml_loss_grads_with_graph; import metakern first");
    const at::Tensor sw = step_weights.unpack();
    const size_t n = spec.per_task.size();
    std::vector<at::Tensor> params;
    for (size_t i = 0; i < n; ++i) params.push_back(inputs[5 + i].unpack());
    std::vector<int64_t> pt(spec.per_task.begin(), spec.per_task.end()), needs;
    for (size_t i = 0; i < 1 + n; ++i) needs.push_back(should_compute_output(i) ? 1 : 0);
    torch::jit::Stack stack;
    stack.reserve(16);
    stack.emplace_back(params);
    for (size_t i = 0; i < 5; ++i) stack.emplace_back(inputs[i].unpack());
    stack.emplace_back(g_out);
    stack.emplace_back(spec.dims);
    stack.emplace_back(pt);
    stack.emplace_back(spec.steps);
    stack.emplace_back(spec.loss);
    stack.emplace_back(spec.act);
    stack.emplace_back(spec.first_order);
    stack.emplace_back(spec.reduction);
    stack.emplace_back(needs);
    stack.emplace_back(sw.defined() ? c10::IValue(sw) : c10::IValue());
    schema->callBoxed(stack);
    const std::vector<at::Tensor> got = stack.at(0).toTensorVector();
    variable_list out(1 + n);
    for (size_t i = 0; i < 1 + n; ++i)
      if (needs[i]) out[i] = got[i];
    return out;
  }

  MamlSpec spec;
  int64_t T = 0;                              // tasks
  std::vector<std::vector<int64_t>> shapes;  // per parameter
  std::vector<int64_t> sizes;                 // packed segment lengths
  SavedVariable g_theta, g_lr;                // dl_t/dtheta, dl_t/dlr from maml_fwd (per task or summed)
  SavedVariable step_weights;                 // [K] or undefined (a constant, for with_graph)
  std::vector<SavedVariable> inputs;          // lr, xs, ys, xq, yq, params... (for with_graph)
};

}  // namespace

at::Tensor maml_loss(const std::vector<at::Tensor>& params, const at::Tensor& lr, const at::Tensor& xs,
                     const at::Tensor& ys, const at::Tensor& xq, const at::Tensor& yq, std::vector<int64_t> dims,
                     std::vector<bool> per_task, int64_t steps, int64_t loss, int64_t act, bool first_order,
                     int64_t reduction, const c10::optional<at::Tensor>& step_weights) {
  TORCH_CHECK_VALUE(reduction == kReduceMean || reduction == kReduceSum || reduction == kReduceNone,
                    "metakern maml_loss: reduction must be 0 (mean), 1 (sum) or 2 (none), got ", reduction);
  TORCH_CHECK_VALUE(per_task.size() == params.size(), "metakern maml_loss: per_task has ", per_task.size(),
                    " entries for ", params.size(), " params");
  TORCH_CHECK_VALUE(dims.size() >= 2 && params.size() == 2 * (dims.size() - 1), "metakern maml_loss: ",
                    params.size(), " params do not match dims of ", dims.size(), " widths (2 per layer)");
  const bool weighted = step_weights.has_value() && step_weights->defined();
  TORCH_CHECK_VALUE(!weighted || !step_weights->requires_grad(),
                    "metakern maml_loss: step_weights are a constant of the objective and get no gradient; pass "
                    "step_weights.detach()");
  MamlSpec s{std::move(dims), std::move(per_task), steps, loss, act, reduction, first_order, lr.requires_grad()};
  bool need = lr.requires_grad();
  for (const at::Tensor& p : params) need = need || p.requires_grad();
  if (!(need && at::GradMode::is_enabled())) {
    at::Tensor losses =
        std::get<0>(maml_fwd(pack(params, s.per_task, xs.size(0)), lr, xs, ys, xq, yq, step_weights, s, false));
    return reduce(losses, s.reduction);
  }
  at::Tensor losses, g_theta, g_lr;
  std::tie(losses, g_theta, g_lr) =
      maml_fwd(pack(params, s.per_task, xs.size(0)), lr, xs, ys, xq, yq, step_weights, s, true);
  at::Tensor result = reduce(losses, s.reduction);

  auto node = make_node<MamlLossBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(lr, at::TensorList(params)));
  for (const at::Tensor& p : params) node->shapes.push_back(p.sizes().vec());
  node->sizes = split_sizes(s.dims);
  node->T = xs.size(0);
  node->g_theta = SavedVariable(g_theta, false);
  node->g_lr = SavedVariable(g_lr, false);
  node->step_weights = SavedVariable(weighted ? *step_weights : at::Tensor(), false);
  for (const at::Tensor& t : {lr, xs, ys, xq, yq}) node->inputs.emplace_back(t, false);
  for (const at::Tensor& p : params) node->inputs.emplace_back(p, false);
  node->spec = std::move(s);
  torch::autograd::set_history(result, node);
  return result;
}

}  // namespace metakern
