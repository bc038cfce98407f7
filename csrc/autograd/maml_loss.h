// metakern._C.maml_loss: the MAML objective as one C++ autograd node (maml_loss.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "common/codes.h"

namespace metakern {

// The per-task query losses after `steps` inner steps, reduced over tasks, with a
// C++ autograd node computing d/d(params) and d/d(lr) from metakern::maml_fwd's
// gradients. params: W_1, b_1, ..., W_L, b_L (per_task[i]: params[i] has a leading
// task axis); lr packed [P] or [K, P] (a row per inner step); reduction a Reduction
// code (common/codes.h: 0 mean, 1 sum, 2 none; in Python metakern/_contract.py
// Reduction); step_weights [K] or none (the multi-step loss; a constant, it must not
// require grad); the other arguments as metakern::maml_fwd.
at::Tensor maml_loss(const std::vector<at::Tensor>& params, const at::Tensor& lr, const at::Tensor& xs,
                     const at::Tensor& ys, const at::Tensor& xq, const at::Tensor& yq, std::vector<int64_t> dims,
                     std::vector<bool> per_task, int64_t steps, int64_t loss, int64_t act, bool first_order,
                     int64_t reduction, const c10::optional<at::Tensor>& step_weights);

}  // namespace metakern
