"""The kernel contract in Python: codes, sizes, the packed layout, reductions.

The bottom of the package (it imports only torch): every other layer takes these
facts from here, and ``tests/test_build.py`` checks that the C++ enums of
``csrc/common/codes.h`` (``metakern._C.codes()``) match them. ``docs/kernels.md``
states the contract; ``docs/architecture.md`` the layers.

Packed layout: a model's parameters ``W_1, b_1, ..., W_L, b_L`` (``nn.Linear``
layout, ``W_l`` ``[d_l, d_{l-1}]``) flattened into one vector of
``P = sum_l d_l (d_{l-1} + 1)`` elements, ``[P]`` when shared by all tasks or
``[T, P]`` per task.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
from torch import Tensor


class Act(enum.IntEnum):
    """Activation between layers (none after the last)."""

    IDENTITY = 0
    RELU = 1
    TANH = 2
    SIGMOID = 3


class Loss(enum.IntEnum):
    """Per-task inner and query loss, the mean over the task's points."""

    MSE = 0
    CROSS_ENTROPY = 1


class Reduction(enum.IntEnum):
    """How the MAML objective reduces the per-task losses."""

    MEAN = 0
    SUM = 1
    NONE = 2


def names(codes) -> dict:
    """``{"relu": Act.RELU, ...}``: the user-facing names of an enum's members."""
    return {m.name.lower(): m for m in codes}


ACTIVATIONS = names(Act)
LOSSES = names(Loss)
REDUCTIONS = names(Reduction)
FLOAT_DTYPES = (torch.float32, torch.float64)


def is_compiling() -> bool:
    """True while ``torch.compile`` traces the caller."""
    return torch.compiler.is_compiling()


# ----------------------------------------------------------------------------- sizes
def num_params(dims: Sequence[int]) -> int:
    """``P = sum_l d_l (d_{l-1} + 1)``."""
    return sum(o * (i + 1) for i, o in zip(dims[:-1], dims[1:]))


def param_shapes(dims: Sequence[int]) -> List[Tuple[int, ...]]:
    """The shared shapes ``[(d_1, d_0), (d_1,), (d_2, d_1), ...]`` in packed order."""
    shapes = []
    for i, o in zip(dims[:-1], dims[1:]):
        shapes += [(o, i), (o,)]
    return shapes


def _split_sizes(dims: Tuple[int, ...]) -> List[int]:
    sizes = []
    for i, o in zip(dims[:-1], dims[1:]):
        sizes += [o * i, o]
    return sizes


_split_sizes_cached = functools.lru_cache(maxsize=64)(_split_sizes)


def split_sizes(dims: Tuple[int, ...]) -> List[int]:
    """Element counts of ``W_1, b_1, ...`` in the packed vector (cached per ``dims``
    in eager mode; traced directly while compiling)."""
    return _split_sizes(dims) if is_compiling() else _split_sizes_cached(dims)


# ------------------------------------------------------------------- pack and unpack
def pack_params(params: Sequence[Tensor], per_task: Sequence[bool], T: int) -> Tensor:
    """``[P]`` when every parameter is shared, else ``[T, P]`` (shared ones broadcast)."""
    if not any(per_task):
        return torch.cat([p.reshape(-1) for p in params])
    return torch.cat([p.reshape(T, -1) if pt else p.reshape(1, -1).expand(T, -1)
                      for p, pt in zip(params, per_task)], dim=1)


def unpack_params(theta: Tensor, dims: Sequence[int]) -> List[Tensor]:
    """Views ``[W_1, b_1, ...]`` of packed ``theta``, keeping its leading dimensions:
    ``[T, P]`` gives ``[T, d_l, d_{l-1}]`` and ``[T, d_l]``; ``[P]`` gives the shared shapes."""
    lead = tuple(theta.shape[:-1])
    pieces = theta.split(split_sizes(tuple(dims)), dim=-1)
    return [t.view(*lead, *s) for t, s in zip(pieces, param_shapes(dims))]


class AdaptedParams(list):
    """Adapted MLP parameters ``[W_1, b_1, ...]`` (each ``[T, *shape]``), a plain list
    that also remembers the ``activation`` name they were adapted with, so that the
    batched forward runs the same network without being told again."""

    def __init__(self, params: Sequence[Tensor], activation: str):
        super().__init__(params)
        self.activation = activation

    def __repr__(self) -> str:
        return f"AdaptedParams({list.__repr__(self)}, activation={self.activation!r})"


def reduce_losses(losses: Tensor, reduction: int) -> Tensor:
    """Per-task losses ``[T]`` reduced by a :class:`Reduction` code."""
    if reduction == Reduction.MEAN:
        return losses.mean()
    return losses.sum() if reduction == Reduction.SUM else losses


# --------------------------------------------------------------------- a validated call
@dataclass(frozen=True)
class Problem:
    """One validated call of the fused ops, built by ``metakern._validate``.

    ``params`` are the model's tensors as given (each shared or, per ``per_task``,
    with a leading task dimension); ``lr`` the inner rates packed to ``[P]`` (or
    ``[K, P]``, one row per inner step); ``step_weights`` the multi-step loss's ``[K]``
    weights, ``None`` for the last step's loss alone; the data
    contiguous; ``loss``, ``act``, ``reduction`` the codes above; ``backend`` the name
    of the backend chosen for the call. ``xq``/``yq``/``reduction`` are ``None`` for
    an adaptation without a query set.
    """

    params: Tuple[Tensor, ...]
    per_task: Tuple[bool, ...]
    dims: Tuple[int, ...]
    lr: Tensor
    xs: Tensor
    ys: Tensor
    steps: int
    loss: int
    act: int
    first_order: bool
    backend: str
    xq: Tensor = None
    yq: Tensor = None
    reduction: int = None
    step_weights: Tensor = None
