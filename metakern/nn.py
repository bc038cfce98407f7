"""Models and model helpers: ``MLP``, the few-shot image models of the MAML paper
(``OmniglotMLP``, ``Conv4``), and recognition of models the fused kernels cover."""
from __future__ import annotations

import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._contract import ACTIVATIONS, Act
from ._validate import check_int

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


class OmniglotMLP(MLP):
    """The non-convolutional network of MAML's Omniglot experiments (Finn et al., 2017):
    ``in_features -> 256 -> 128 -> 64 -> 64 -> ways`` with ReLU.

    The paper puts batch normalisation after each hidden layer. The fused kernels
    have no normalisation, so this network has none: it is an :class:`MLP`, and the
    learners run it on the fused kernels. (For the batch-normalised version, build an
    ``nn.Sequential`` with ``nn.BatchNorm1d``; it takes the generic path.)

    Images reach it flattened: the learners (``MAML``, ``MetaSGD``, ...) flatten a
    batch ``[T, N, 1, 28, 28]`` to ``[T, N, 784]`` when the model is fused and the
    trailing dimensions hold ``in_features`` values, and refuse other shapes.

    >>> net = OmniglotMLP()
    >>> net.dims
    (784, 256, 128, 64, 64, 5)
    """

    HIDDEN = (256, 128, 64, 64)

    def __init__(self, in_features: int = 784, ways: int = 5):
        super().__init__(check_int("in_features", in_features, 1), list(self.HIDDEN), check_int("ways", ways, 1),
                         activation="relu")


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))


class Conv4(nn.Module):
    """The four-block convolutional network of MAML's few-shot image experiments.

    Four blocks ``conv3x3(hidden, padding 1) -> BatchNorm2d -> ReLU -> MaxPool2d(2)``,
    flattened, then a linear head: the embedding of Vinyals et al. (2016) that Finn et
    al. (2017) meta-learn (``conv_block`` in the reference code, github.com/cbfinn/maml,
    ``utils.py``). ``image_size`` 28 (Omniglot) gives ``hidden`` features (1x1 after four
    poolings, each rounding down), 84 (mini-ImageNet, ``in_channels=3``) gives
    ``hidden * 5 * 5``. Differences from the reference code: its Omniglot runs use
    stride-2 convolutions instead of max pooling (``--max_pool=False``, the default
    there; its mini-ImageNet runs pool, with 32 filters), and its batch norm learns a
    shift only, where ``nn.BatchNorm2d`` learns a scale and a shift. The convolutions
    keep their bias, as there; batch norm with batch statistics cancels it (its
    gradient is zero).

    Args:
        in_channels: image channels (1 for Omniglot, 3 for mini-ImageNet).
        ways: classes per task, the head's outputs.
        hidden: filters of every convolution (64 for Omniglot, 32 for mini-ImageNet in the paper).
        image_size: height and width of the (square) images, at least 16.

    ``body`` (the four blocks and the flattening, ``[N, C, H, W] -> [N, features]``) and
    ``head`` (an ``nn.Linear``) are attributes, so ANIL can meta-learn the body and adapt
    the head on the fused kernels: ``mk.ANIL(net.body, net.head)``. MAML on the whole
    network takes the generic path.

    Batch norm: in training mode (the default) every forward call normalises with the
    statistics of its own batch. The learners call the network once per task (the
    generic path's ``loop`` mode, which ``generic_mode="auto"`` picks for batch norm,
    adapts one task at a time; ANIL runs a body with batch norm task by task), so each
    task is normalised by its own support or query statistics, in the inner loop and
    at meta-test alike, as MAML does (transductive). The running statistics are used
    only in eval mode.

    >>> net = Conv4(in_channels=1, ways=5, hidden=8, image_size=28)
    >>> net(torch.zeros(10, 1, 28, 28)).shape, net.features
    (torch.Size([10, 5]), 8)
    """

    def __init__(self, in_channels: int = 1, ways: int = 5, hidden: int = 64, image_size: int = 28):
        super().__init__()
        in_channels, ways, hidden = (check_int(n, v, 1) for n, v in
                                     (("in_channels", in_channels), ("ways", ways), ("hidden", hidden)))
        if check_int("image_size", image_size) < 16:
            raise ValueError(f"image_size must be at least 16 (four 2x2 poolings halve it four times), got "
                             f"{image_size}; resize the images")
        side = int(image_size)
        for _ in range(4):
            side //= 2
        self.in_channels, self.image_size, self.features = int(in_channels), int(image_size), int(hidden) * side * side
        self.body = nn.Sequential(_conv_block(in_channels, hidden), _conv_block(hidden, hidden),
                                  _conv_block(hidden, hidden), _conv_block(hidden, hidden), nn.Flatten())
        self.head = nn.Linear(self.features, ways)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, ways]`` of images ``x`` ``[N, in_channels, image_size, image_size]``."""
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"Conv4 takes images [N, {want[0]}, {want[1]}, {want[2]}] (built with in_channels="
                             f"{want[0]}, image_size={want[1]}), got {tuple(x.shape)}; build Conv4 for these images "
                             "or resize them")
        return self.head(self.body(x))


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

    Covered: a single ``nn.Linear`` with bias, or an ``nn.Sequential`` (``MLP`` and
    ``OmniglotMLP`` included) of ``nn.Linear`` layers with bias, separated by one kind of
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
    if type(model) not in (nn.Sequential, MLP, OmniglotMLP):
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
