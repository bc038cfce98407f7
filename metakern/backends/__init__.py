"""Backend registry.

A backend implements the four ops of ``docs/kernels.md`` (``adapt_fwd``,
``adapt_bwd``, ``mlp_fwd``, ``mlp_bwd``) on packed tensors, and says why it cannot
run a given call. ``select`` resolves a user's ``backend=`` argument: an explicit
name that cannot run the call raises ``RuntimeError`` with every reason; ``"auto"``
takes the first backend of its preference order that can, and warns once about
each faster backend it had to pass over.

Modules: ``base`` (``Call``, ``Backend``), ``torch_backend`` (the reference, pure
PyTorch), ``compiled`` (``cpp``, ``cuda``: ``metakern._C``), ``triton_backend``.
"""
from __future__ import annotations

import warnings
from typing import Dict, List

from . import torch_backend
from .base import Backend, Call
from .compiled import EXT_INFO, CppBackend, CudaBackend, load_extension
from .triton_backend import TritonBackend

BACKENDS = ("torch", "cpp", "triton", "cuda")

__all__ = ["BACKENDS", "AUTO_ORDER", "Backend", "Call", "available", "get", "select", "load_extension",
           "EXT_INFO"]


class TorchBackend(Backend):
    """Pure PyTorch, any device, float dtypes: the reference and the fallback."""

    name = "torch"
    adapt_fwd = staticmethod(torch_backend.adapt_fwd)
    adapt_bwd = staticmethod(torch_backend.adapt_bwd)
    mlp_fwd = staticmethod(torch_backend.mlp_fwd)
    mlp_bwd = staticmethod(torch_backend.mlp_bwd)
    maml_fwd = staticmethod(torch_backend.maml_fwd)


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
    """The backend called ``name`` (``ValueError`` for an unknown name)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}") from None


def available() -> Dict[str, List[str]]:
    """``{name: reasons}`` for every backend; an empty list means available."""
    return {name: b.unavailable() for name, b in _REGISTRY.items()}


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
