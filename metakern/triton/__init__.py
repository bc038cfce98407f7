"""Triton kernels of the kernel contract (docs/kernels.md); see ``adapt.py``.

Importable without triton: ``why_not`` then says so and the launchers refuse to run.
"""
from .adapt import HAS_TRITON, SUPPORTED, adapt_bwd, adapt_fwd, mlp_bwd, mlp_fwd, why_not

__all__ = ["HAS_TRITON", "SUPPORTED", "adapt_fwd", "adapt_bwd", "mlp_fwd", "mlp_bwd", "why_not"]
