"""Model helpers: the ``MLP`` module and recognition of models the fused kernels cover."""
from __future__ import annotations

import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._contract import ACTIVATIONS, Act

# the module of each activation code (one per contract.Act member)
_ACT_CLASS = {Act.IDENTITY: nn.Identity, Act.RELU: nn.ReLU, Act.TANH: nn.Tanh, Act.SIGMOID: nn.Sigmoid}
_ACT_NAME = {_ACT_CLASS[a]: name for name, a in ACTIVATIONS.items()}


def activation_module(name: str) -> nn.Module:
    """A new activation module for an activation name (``"relu"``, ``"tanh"``, ...)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {name!r}")
    return _ACT_CLASS[ACTIVATIONS[name]]()


class MLP(nn.Sequential):
    """A multilayer perceptron ``Linear -> act -> ... -> Linear`` (no activation at the end).

    Args:
        in_features: input width ``D``.
        hidden: hidden widths: an int (one hidden layer), a sequence (any depth;
            empty gives a linear model), or ``None``.
        out_features: output width ``O``.
        activation: ``"relu"``, ``"tanh"``, ``"sigmoid"`` or ``"identity"``.

    It is an ``nn.Sequential`` of ``nn.Linear`` and activation modules, so the fused
    kernels cover it. Works on ``[N, D]`` and ``[T, N, D]`` inputs.

    >>> net = MLP(1, [40, 40], 1)
    >>> net(torch.zeros(5, 1)).shape
    torch.Size([5, 1])
    """

    def __init__(self, in_features: int, hidden: Union[int, Sequence[int], None], out_features: int,
                 activation: str = "relu"):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        if hidden is None:
            hidden = []
        elif isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
            hidden = [int(hidden)]
        elif not isinstance(hidden, (list, tuple)):
            raise TypeError(f"hidden must be an int or a list of ints, got {type(hidden).__name__}")
        widths = [in_features, *hidden, out_features]
        for name, w in zip(["in_features"] + [f"hidden[{i}]" for i in range(len(hidden))] + ["out_features"], widths):
            if isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1:
                raise ValueError(f"{name} must be a positive int, got {w!r}")
        layers: List[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(int(a), int(b)))
            if i < len(widths) - 2:
                layers.append(activation_module(activation))
        super().__init__(*layers)
        self.activation = activation
        self.dims = tuple(int(w) for w in widths)


def _altered(m: nn.Module) -> str:
    """Why ``m`` does not compute its type's plain forward, or ``""``."""
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    if any(getattr(m, h, None) for h in hooks):
        return f"{type(m).__name__} has hooks"
    if parametrize.is_parametrized(m):
        return f"{type(m).__name__} has parametrizations"
    return ""


def _shared(model: nn.Module) -> str:
    """Why ``model`` has tied weights (one Parameter used in two places), or ``""``."""
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            return f"parameters are shared: {name} is {first[id(p)]} (tied weights)"
        first[id(p)] = name
    return ""


def fused_spec(model: nn.Module) -> Tuple[Optional[Tuple[Tuple[int, ...], str]], str]:
    """``((dims, activation), "")`` if the fused kernels cover ``model``, else ``(None, why)``.

    Covered: a single ``nn.Linear`` with bias, or an ``nn.Sequential`` (``MLP``
    included) of ``nn.Linear`` layers with bias, separated by one kind of
    supported activation module, with no activation after the last layer. Only these
    exact types (a subclass may change ``forward``), only modules without hooks
    or parametrizations (``weight_norm``, ...), and no Parameter used twice (one
    ``nn.Linear`` at two places of the ``nn.Sequential``, or two layers holding one
    weight): the fused kernels compute plain layers with a parameter each, so
    anything else takes the generic path.
    """
    for m in model.modules():
        why = _altered(m)
        if why:
            return None, why
    why = _shared(model)
    if why:
        return None, why
    if type(model) is nn.Linear:
        if model.bias is None:
            return None, "nn.Linear without bias"
        return ((model.in_features, model.out_features), "identity"), ""
    if type(model) not in (nn.Sequential, MLP):
        return None, f"{type(model).__name__} is not an nn.Linear or nn.Sequential"
    mods = list(model)
    if not mods or not isinstance(mods[-1], nn.Linear):
        return None, "the last module is not an nn.Linear"
    dims, act = [], None
    expect_linear = True
    for m in mods:
        if expect_linear:
            if type(m) is not nn.Linear:
                return None, f"expected nn.Linear, found {type(m).__name__}"
            if m.bias is None:
                return None, "an nn.Linear without bias"
            if dims and m.in_features != dims[-1]:
                return None, "layer widths do not chain"
            if not dims:
                dims.append(m.in_features)
            dims.append(m.out_features)
            expect_linear = False
        else:
            kind = _ACT_NAME.get(type(m))
            if kind is None:
                return None, f"unsupported module {type(m).__name__} between layers"
            if act is not None and kind != act:
                return None, "mixed activations"
            act = kind
            expect_linear = True
    if len(dims) > 2 and act is None:
        act = "identity"  # consecutive Linear layers cannot occur (checked above)
    return (tuple(dims), act or "identity"), ""
