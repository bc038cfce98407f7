"""What every backend is: a name, why it cannot run (here, or this call), and the ops."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch


@dataclass(frozen=True)
class Call:
    """What a backend needs to know to accept or refuse a call."""

    device: torch.device
    dtype: torch.dtype
    dims: Tuple[int, ...]
    tasks: int
    points: int
    steps: int = 0


class Backend:
    """Base class: a name, availability, per-call limits, and the four ops."""

    name = "?"

    def unavailable(self) -> List[str]:
        """Reasons this backend cannot run at all here (empty when it can)."""
        return []

    def limits(self, call: Call) -> List[str]:
        """Reasons this backend cannot run this particular call (asked once it is available)."""
        return []

    def why_not(self, call: Call) -> List[str]:
        return self.unavailable() or self.limits(call)

    # The four ops of docs/kernels.md on packed tensors; every backend binds these.
    adapt_fwd: Callable
    adapt_bwd: Callable
    mlp_fwd: Callable
    mlp_bwd: Callable
    # The fused MAML objective (loss and gradient in one pass), where a backend has
    # it; without it metakern._ops composes adapt_fwd and mlp_fwd.
    # (theta, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, need_grad,
    #  need_lr, step_weights, sum_tasks) -> (losses [T], g_theta [T, P], g_lr [T, *lr.shape]),
    #  the shared inputs' gradients summed over tasks under sum_tasks; see torch_backend.maml_fwd.
    maml_fwd: Optional[Callable] = None
    # The same objective with its autograd node in C++ (metakern._C.maml_loss), where
    # a backend's maml_fwd is a registered op: (params, per_task, lr, xs, ys, xq, yq,
    # dims, steps, loss, act, first_order, reduction code) -> loss. Without it the
    # node is the Python metakern._ops._MamlFn.
    maml_loss: Optional[Callable] = None
