"""Backend registry.

A backend implements the four ops of ``docs/kernels.md`` (``adapt_fwd``,
``adapt_bwd``, ``mlp_fwd``, ``mlp_bwd``) on packed tensors, and says why it cannot
run a given call. ``select`` resolves a user's ``backend=`` argument: an explicit
name that cannot run the call raises ``RuntimeError`` with every reason; ``"auto"``
takes the first backend of its preference order that can, and warns once about
each faster backend it had to pass over.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from . import torch_backend

BACKENDS = ("torch", "cpp", "triton", "cuda")


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
        """Reasons this backend cannot run this particular call."""
        return []

    def why_not(self, call: Call) -> List[str]:
        return self.unavailable() or self.limits(call)

    # The four ops; every backend binds these.
    adapt_fwd: Callable
    adapt_bwd: Callable
    mlp_fwd: Callable
    mlp_bwd: Callable
    # The fused MAML objective (loss and gradient in one pass), where a backend has
    # it; without it metakern composes adapt_fwd and mlp_fwd (metakern._ops).
    # (theta, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, need_grad,
    #  need_lr) -> (losses [T], g_theta [T, P], g_lr [T, P]); see torch_backend.maml_fwd.
    maml_fwd: Optional[Callable] = None
    # The same objective with its autograd node in C++ (metakern._C.maml_loss), where
    # a backend's maml_fwd is a registered op: (params, per_task, lr, xs, ys, xq, yq,
    # dims, steps, loss, act, first_order, reduction) -> loss. Without it the node is
    # the Python metakern._ops._MamlFn.
    maml_loss: Optional[Callable] = None


class TorchBackend(Backend):
    """Pure PyTorch, any device, float dtypes: the reference and the fallback."""

    name = "torch"
    adapt_fwd = staticmethod(torch_backend.adapt_fwd)
    adapt_bwd = staticmethod(torch_backend.adapt_bwd)
    mlp_fwd = staticmethod(torch_backend.mlp_fwd)
    mlp_bwd = staticmethod(torch_backend.mlp_bwd)
    maml_fwd = staticmethod(torch_backend.maml_fwd)


def _load_ext():
    """Import ``metakern._C`` once; returns ``(module or None, reason)``."""
    global _EXT, _EXT_ERR
    if _EXT is None and _EXT_ERR is None:
        if os.environ.get("METAKERN_DISABLE_EXTENSION", "0") == "1":
            _EXT_ERR = "disabled by METAKERN_DISABLE_EXTENSION=1"
        else:
            try:
                from .. import _C  # noqa: F401  (registers torch.ops.metakern.*)
                from .. import _compiled_ops

                _compiled_ops.register()
                info = _C.build_info() if hasattr(_C, "build_info") else {}
                _EXT_INFO.update(info if isinstance(info, dict) else {})
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
_EXT_INFO: Dict[str, object] = {}
_REDUCTIONS = {"mean": 0, "sum": 1, "none": 2}  # codes of metakern._C.maml_loss (csrc/maml_loss.h)


class _CompiledBackend(Backend):
    """Ops registered by ``metakern._C`` with the dispatcher (``torch.ops.metakern``)."""

    device_type = "cpu"

    def unavailable(self):
        ext, err = _load_ext()
        if ext is None:
            return [err]
        return []

    def limits(self, call):
        reasons = []
        if call.device.type != self.device_type:
            reasons.append(f"the {self.name} backend runs on {self.device_type} tensors, got {call.device.type}")
        if call.dtype not in (torch.float32, torch.float64):
            reasons.append(f"the {self.name} backend supports float32 and float64, got {call.dtype}")
        return reasons

    # The autograd formulas live one level up (metakern._ops); calling below the
    # Autograd dispatch key skips the Python autograd kernel registered on these ops
    # (metakern._compiled_ops), which would otherwise cost ~50 us a call for nothing.
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
    # the four kernels composed in C++, csrc/maml_composed.cpp) under the C++ node.
    @staticmethod
    def maml_loss(params, per_task, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, reduction):
        ext = _EXT if _EXT is not None else _load_ext()[0]
        # pybind11 converts any sequence to the std::vector arguments itself
        return ext.maml_loss(params, lr, xs, ys, xq, yq, dims, per_task, steps, loss, act, first_order,
                             _REDUCTIONS[reduction])

    @staticmethod
    def maml_fwd(theta, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, need_grad, need_lr=True):
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.metakern.maml_fwd(theta, lr, xs, ys, xq, yq, list(dims), steps, loss, act, first_order,
                                               need_grad, need_lr)


class CppBackend(_CompiledBackend):
    """C++ CPU kernels (``csrc/cpu``)."""

    name = "cpp"
    device_type = "cpu"


class CudaBackend(_CompiledBackend):
    """CUDA C++ kernels (``csrc/cuda``)."""

    name = "cuda"
    device_type = "cuda"

    def unavailable(self):
        reasons = super().unavailable()
        if reasons:
            return reasons
        if not _EXT_INFO.get("cuda_kernels"):
            reasons.append("metakern._C was built without CUDA kernels (no nvcc or a CPU-only torch at install time)")
        if not torch.cuda.is_available():
            reasons.append("no CUDA device is available")
        return reasons

    def limits(self, call):
        reasons = super().limits(call)
        if reasons:
            return reasons
        if len(call.dims) - 1 > 16:
            reasons.append(f"{len(call.dims) - 1} layers: the cuda kernels support at most 16")
        props = torch.cuda.get_device_properties(call.device)
        limit = getattr(props, "shared_memory_per_block_optin", 48 * 1024)
        need = cuda_smem_bytes(call.dims, call.dtype)
        if need > limit:
            reasons.append(f"the model needs {need} bytes of shared memory per block, above this device's {limit}")
        return reasons


def cuda_smem_bytes(dims, dtype) -> int:
    """Shared memory the CUDA kernels need per block with one point per chunk (the
    second-order backward, their largest): ``(4P + 2S - ld_0 + 4 Wd) * sizeof(dtype)``
    with ``ld_l = d_l | 1``, ``S = sum_l ld_l``, ``Wd = max_{l>=1} ld_l`` (csrc/cuda/adapt_plan.h)."""
    ld = [d | 1 for d in dims]
    P = torch_backend.num_params(dims)
    elems = 4 * P + 2 * sum(ld) - ld[0] + 4 * max(ld[1:])
    return elems * (8 if dtype == torch.float64 else 4)


class TritonBackend(Backend):
    """Triton kernels (``metakern/triton``): CUDA tensors, or CPU under ``TRITON_INTERPRET=1``."""

    name = "triton"
    _mod = None
    _err = None

    def _load(self):
        if self._mod is None and self._err is None:
            try:
                from ..triton import adapt as mod

                type(self)._mod = mod
            except ImportError as e:
                type(self)._err = f"triton is not importable ({e})"
        return self._mod, self._err

    def unavailable(self):
        mod, err = self._load()
        return [err] if mod is None else []

    def limits(self, call):
        mod, _ = self._load()
        reasons = []
        if call.device.type == "cpu":
            if not mod._interpreted():
                reasons.append("the triton backend runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, "
                               "set before import, for tests)")
        elif call.device.type != "cuda":
            reasons.append(f"the triton backend runs on CUDA tensors, got {call.device.type}")
        if call.dtype not in mod.SUPPORTED["dtypes"]:
            reasons.append(f"the triton kernels support float32 only, got {call.dtype}")
        dims, L = call.dims, len(call.dims) - 1
        if L > mod.MAX_LAYERS:
            reasons.append(f"{L} layers: the triton kernels support at most {mod.MAX_LAYERS}")
        if max(dims) > mod.MAX_WIDTH:
            reasons.append(f"width {max(dims)} is above the triton kernels' limit of {mod.MAX_WIDTH}")
        if call.points > mod.MAX_POINTS:
            reasons.append(f"{call.points} points per task is above the triton kernels' limit of {mod.MAX_POINTS}")
        if not reasons and mod.onchip_elements(list(dims), call.points) > mod.ONCHIP_MAX:
            reasons.append(f"dims {list(dims)} with {call.points} points per task exceed the triton kernels' "
                           f"on-chip budget of {mod.ONCHIP_MAX} padded elements")
        return reasons

    def adapt_fwd(self, *a):
        return self._mod.adapt_fwd(*a)

    def adapt_bwd(self, *a):
        return self._mod.adapt_bwd(*a)

    def mlp_fwd(self, *a):
        return self._mod.mlp_fwd(*a)

    def mlp_bwd(self, *a):
        return self._mod.mlp_bwd(*a)


_REGISTRY: Dict[str, Backend] = {
    "torch": TorchBackend(),
    "cpp": CppBackend(),
    "triton": TritonBackend(),
    "cuda": CudaBackend(),
}

# auto's preference order per device type (fastest first); see bench/NOTES.md.
AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "torch")}

_WARNED = set()


def get(name: str) -> Backend:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}") from None


def available() -> Dict[str, List[str]]:
    """``{name: reasons}`` for every backend; an empty list means available."""
    out = {}
    for name, b in _REGISTRY.items():
        r = b.unavailable()
        if not r and name == "triton" and not torch.cuda.is_available():
            if os.environ.get("TRITON_INTERPRET", "0") != "1":
                r = ["no CUDA device (set TRITON_INTERPRET=1 before import to run on the CPU, for tests)"]
        out[name] = r
    return out


def select(name: str, call: Call) -> Backend:
    """Resolve ``backend=name`` for ``call``; see the module docstring."""
    if name != "auto":
        b = get(name)
        reasons = b.why_not(call)
        if reasons:
            raise RuntimeError(f"backend={name!r} cannot run this call: " + "; ".join(reasons))
        return b
    order = AUTO_ORDER.get(call.device.type, ("torch",))
    passed = []
    for cand in order:
        b = _REGISTRY[cand]
        if cand == "torch":
            break
        unavailable = b.unavailable()
        if unavailable:
            continue  # not built / not installed: `metakern info` says why
        reasons = b.limits(call)
        if not reasons:
            return b
        passed.append((cand, reasons))
    for cand, reasons in passed:
        key = (cand, tuple(reasons))
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(f"metakern: backend 'auto' skipped {cand!r}: {'; '.join(reasons)}; using the next one",
                          RuntimeWarning, stacklevel=3)
    return _REGISTRY["torch"]
