"""The ``triton`` backend: the kernels of ``metakern/triton``, imported on first use."""
from __future__ import annotations

import os

import torch

from .base import Backend


class TritonBackend(Backend):
    """Triton kernels (``metakern/triton``): CUDA tensors, or CPU under ``TRITON_INTERPRET=1``."""

    name = "triton"
    _mod = None
    _err = None

    def _load(self):
        if self._mod is None and self._err is None:
            try:
                from ..triton import adapt as mod
            except ImportError as e:
                type(self)._err = f"triton is not importable ({e})"
            else:
                if mod.HAS_TRITON:
                    type(self)._mod = mod
                else:
                    type(self)._err = f"triton is not importable ({mod.IMPORT_ERROR})"
        return self._mod, self._err

    def unavailable(self):
        mod, err = self._load()
        if mod is None:
            return [err]
        if not torch.cuda.is_available() and not mod.interpreted():
            hint = ("TRITON_INTERPRET=1 was set after triton was imported"
                    if os.environ.get("TRITON_INTERPRET", "0") == "1" else
                    "set TRITON_INTERPRET=1 before import to run on the CPU, for tests")
            return [f"no CUDA device ({hint})"]
        return []

    def limits(self, call):
        mod, err = self._load()
        if mod is None:
            return [err]
        return mod.limits(call.device.type, call.dtype, call.dims, call.points)

    # The launchers without their argument checks: the call was validated and
    # limits() accepted it.
    def adapt_fwd(self, *a):
        return self._mod.adapt_fwd_unchecked(*a)

    def adapt_bwd(self, *a):
        return self._mod.adapt_bwd_unchecked(*a)

    def mlp_fwd(self, *a):
        return self._mod.mlp_fwd_unchecked(*a)

    def mlp_bwd(self, *a):
        return self._mod.mlp_bwd_unchecked(*a)
