"""The compiled backends: ``cpp`` and ``cuda``, the ops ``metakern._C`` registers.

``TORCH_LIBRARY(metakern, m)`` (``csrc/schema/``) declares the ops
``torch.ops.metakern.*`` with their CPU and CUDA kernels. This module loads the
extension and calls the ops; their fake kernels and autograd formulas are
registered one layer up, by ``metakern._ops``.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, Optional

import torch

from .base import Backend


def load_extension():
    """Import ``metakern._C`` once; returns ``(module or None, reason it is not there)``."""
    global _EXT, _EXT_ERR
    if _EXT is None and _EXT_ERR is None:
        if os.environ.get("METAKERN_DISABLE_EXTENSION", "0") == "1":
            _EXT_ERR = "disabled by METAKERN_DISABLE_EXTENSION=1"
        else:
            try:
                from .. import _C  # registers torch.ops.metakern.*

                EXT_INFO.update(_C.build_info())
                EXT_INFO["cuda_max_layers"] = _C.cuda_max_layers()
                _EXT = _C
            except ImportError as e:  # not built, or built against another torch
                _EXT_ERR = (
                    f"the compiled extension metakern._C is not available ({e}); "
                    "reinstall with `pip install --no-build-isolation -e .` to build it"
                )
    return _EXT, _EXT_ERR


_EXT = None
_EXT_ERR: Optional[str] = None
# metakern._C.build_info(), read once when the extension loads: a pybind11 function
# that torch.compile cannot trace, so the backend checks must not call it per call.
EXT_INFO: Dict[str, object] = {}


class _CompiledBackend(Backend):
    """Ops registered by ``metakern._C`` with the dispatcher (``torch.ops.metakern``)."""

    device_type = "cpu"

    def unavailable(self):
        ext, err = load_extension()
        return [err] if ext is None else []

    def limits(self, call):
        reasons = []
        if call.device.type != self.device_type:
            reasons.append(f"the {self.name} backend runs on {self.device_type} tensors, got {call.device.type}")
        if call.dtype not in (torch.float32, torch.float64):
            reasons.append(f"the {self.name} backend supports float32 and float64, got {call.dtype}")
        return reasons

    # The autograd formulas live one level up (metakern._ops); calling below the
    # Autograd dispatch key skips the Python autograd kernel registered on these ops,
    # which would otherwise cost ~50 us a call for nothing.
    @staticmethod
    def adapt_fwd(theta, lr, x, y, dims, steps, loss, act):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.metakern.adapt_fwd(theta, lr, x, y, list(dims), steps, loss, act)

    @staticmethod
    def adapt_bwd(grad, theta, lr, x, y, dims, steps, loss, act, first_order, need_x):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.metakern.adapt_bwd(grad, theta, lr, x, y, list(dims), steps, loss, act, first_order,
                                                need_x)

    @staticmethod
    def mlp_fwd(theta, x, dims, act):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.metakern.mlp_fwd(theta, x, list(dims), act)

    @staticmethod
    def mlp_bwd(grad_out, theta, x, dims, act, need_x):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.metakern.mlp_bwd(grad_out, theta, x, list(dims), act, need_x)

    # The MAML objective: metakern::maml_fwd (CPU: one fused kernel, csrc/cpu; CUDA:
    # the four kernels composed in C++, csrc/cuda) under the C++ node.
    @staticmethod
    def maml_loss(params, per_task, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, reduction,
                  step_weights=None):
        # pybind11 converts any sequence to the std::vector arguments itself
        return _EXT.maml_loss(params, lr, xs, ys, xq, yq, dims, per_task, steps, loss, act, first_order, reduction,
                              step_weights)

    @staticmethod
    def maml_fwd(theta, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, need_grad, need_lr=True,
                 step_weights=None, sum_tasks=False):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.metakern.maml_fwd(theta, lr, xs, ys, xq, yq, list(dims), steps, loss, act, first_order,
                                               need_grad, need_lr, step_weights, sum_tasks)


class CppBackend(_CompiledBackend):
    """C++ CPU kernels (``csrc/cpu``)."""

    name = "cpp"
    device_type = "cpu"


@torch.compiler.assume_constant_result
def _cuda_smem_bytes(dims, elem_size: int) -> int:
    return _cuda_smem_cached(tuple(dims), elem_size)


@functools.lru_cache(maxsize=256)
def _cuda_smem_cached(dims, elem_size):
    """Bytes of shared memory per block the CUDA kernels need for ``dims``; -1 where
    their plan refuses the model (sizes beyond its integer range)."""
    try:
        return int(_EXT.cuda_smem_bytes(list(dims), elem_size))
    except RuntimeError:
        return -1


class CudaBackend(_CompiledBackend):
    """CUDA C++ kernels (``csrc/cuda``)."""

    name = "cuda"
    device_type = "cuda"

    def unavailable(self):
        reasons = super().unavailable()
        if reasons:
            return reasons
        if not EXT_INFO.get("cuda_kernels"):
            reasons.append("metakern._C was built without CUDA kernels (no nvcc or a CPU-only torch at install time)")
        if not torch.cuda.is_available():
            reasons.append("no CUDA device is available")
        return reasons

    def limits(self, call):
        reasons = super().limits(call)
        if reasons:
            return reasons
        max_layers = EXT_INFO["cuda_max_layers"]
        if len(call.dims) - 1 > max_layers:
            reasons.append(f"{len(call.dims) - 1} layers: the cuda kernels support at most {max_layers}")
            return reasons
        props = torch.cuda.get_device_properties(call.device)
        limit = getattr(props, "shared_memory_per_block_optin", 48 * 1024)
        # the plan of csrc/cuda/adapt_plan.h (the second-order backward, one point per chunk: the largest)
        need = _cuda_smem_bytes(call.dims, call.dtype.itemsize)
        if need < 0:
            reasons.append(f"dims {list(call.dims)} are too large for the cuda kernels' shared-memory plan")
        elif need > limit:
            reasons.append(f"the model needs {need} bytes of shared memory per block, above this device's {limit}")
        return reasons
