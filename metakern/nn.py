"""Models and model helpers: ``MLP``, the few-shot image models of the MAML paper
(``OmniglotMLP``, ``Conv4``), MAML++'s per-step batch norm (``PerStepBatchNorm2d``, the
inner-step context :func:`inner_step`), and recognition of models the fused kernels cover."""
from __future__ import annotations

import contextlib
import contextvars
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._contract import ACTIVATIONS, Act
from ._validate import check_bool, check_int, check_real

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


# (step, update): the inner step the network is called at, and whether per-step running
# statistics take that call's batch; None outside inner_step (step 0, nn.BatchNorm's rules)
_STEP: "contextvars.ContextVar[Optional[Tuple[int, bool]]]" = contextvars.ContextVar("metakern_inner_step",
                                                                                    default=None)


@contextlib.contextmanager
def inner_step(step: int, update_stats: bool = False):
    """Tell step-aware layers (:class:`PerStepBatchNorm2d`) which inner step the network is
    called at: ``step`` k means the network holds ``theta_k``, the parameters after k inner
    updates (0: the initialisation). ``update_stats``: whether those layers, in training
    mode, fold this call's batch statistics into their running statistics of step k.

    The generic path sets it around every call of the model: step k for the support
    forward of inner step k (``k = 0 .. K-1``) and for the query forward of ``theta_k``
    (``k = 1 .. K``), with ``update_stats`` true in ``meta_loss`` only. Outside any
    ``inner_step`` a step-aware layer is at step 0 and behaves as ``nn.BatchNorm2d``
    would (its training-mode forward updates the running statistics of step 0). The
    setting is per thread (a ``contextvars.ContextVar``).

    >>> bn = PerStepBatchNorm2d(3, steps=2)
    >>> with inner_step(2):
    ...     bn(torch.randn(4, 3, 5, 5)).shape
    torch.Size([4, 3, 5, 5])
    """
    step = check_int("step", step, 0)
    token = _STEP.set((step, bool(update_stats)))
    try:
        yield
    finally:
        _STEP.reset(token)


def current_step() -> Tuple[int, bool]:
    """``(step, update_stats)`` of the innermost :func:`inner_step`, or ``(0, True)``
    outside one (a plain call: step 0, updated in training mode as ``nn.BatchNorm2d`` is)."""
    found = _STEP.get()
    return (0, True) if found is None else found


class PerStepBatchNorm2d(nn.Module):
    """Batch norm with per-step statistics and weights: MAML++'s BNRS and BNWB (Antoniou
    et al., "How to train your MAML", ICLR 2019; ``MetaBatchNormLayer`` in its code).

    For a network adapted in ``steps`` inner steps it holds ``steps + 1`` rows, one per
    parameter state ``theta_0 .. theta_K``: ``weight`` and ``bias`` ``[steps + 1, C]``
    (initialised to 1 and 0) and the buffers ``running_mean``, ``running_var``
    ``[steps + 1, C]`` (0 and 1). Called at step k (:func:`inner_step`; step 0 outside
    one) it normalises with row k:

    * training mode (the default, as MAML and MAML++ use it in the inner loop and at
      meta-test): with the statistics of the batch at hand, then scaled and shifted by
      ``weight[k]``, ``bias[k]``; when the call updates statistics
      (``inner_step(k, update_stats=True)``, which ``meta_loss`` sets, or a plain call)
      ``running_mean[k]`` and ``running_var[k]`` move towards the batch's mean and
      unbiased variance with ``momentum``, as ``nn.BatchNorm2d`` does;
    * eval mode (``model.eval()``): with ``running_mean[k]``, ``running_var[k]``; nothing
      is updated.

    ``adapt_affine=False`` (MAML++'s default, ``enable_inner_loop_optimizable_bn_params``
    off): the inner loop leaves ``weight`` and ``bias`` as they are; they are
    meta-learned only (the generic path reads :attr:`inner_loop_fixed`). With ``True``
    the inner loop adapts them like every other parameter (each step updates all rows;
    row k's gradient comes from the calls at step k only).

    A step beyond ``steps`` is a ``ValueError``: build the layer (``Conv4(per_step_bn=K)``)
    for the learner's number of steps.
    """

    step_aware = True  # reads the inner step (metakern._validate.check_step_layers looks for it)

    def __init__(self, num_features: int, steps: int, eps: float = 1e-5, momentum: float = 0.1,
                 adapt_affine: bool = False):
        super().__init__()
        self.num_features = check_int("num_features", num_features, 1)
        self.steps = check_int("steps", steps, 1)
        self.eps = check_real("eps", eps)
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.momentum = check_real("momentum", momentum)
        if not 0 < self.momentum <= 1:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.adapt_affine = check_bool("adapt_affine", adapt_affine)
        rows = (self.steps + 1, self.num_features)
        self.weight = nn.Parameter(torch.ones(rows))
        self.bias = nn.Parameter(torch.zeros(rows))
        self.register_buffer("running_mean", torch.zeros(rows))
        self.register_buffer("running_var", torch.ones(rows))

    @property
    def inner_loop_fixed(self) -> Tuple[str, ...]:
        """Names of this layer's parameters that the inner loop does not adapt."""
        return () if self.adapt_affine else ("weight", "bias")

    def forward(self, x: Tensor) -> Tensor:
        """Row k's batch norm of ``x`` ``[N, C, H, W]``, k the current :func:`inner_step`."""
        k, update = current_step()
        if k > self.steps:
            raise ValueError(f"PerStepBatchNorm2d was built for steps={self.steps} (rows 0..{self.steps}) but is "
                             f"called at inner step {k}; build the model with per_step_bn={k} or more "
                             "(the learner's steps), or adapt with fewer steps")
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"PerStepBatchNorm2d({self.num_features}) takes [N, {self.num_features}, H, W], got "
                             f"{tuple(x.shape)}")
        track = self.training and update
        return F.batch_norm(x, self.running_mean[k] if track or not self.training else None,
                            self.running_var[k] if track or not self.training else None,
                            self.weight[k], self.bias[k], self.training, self.momentum, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, steps={self.steps}, eps={self.eps}, momentum={self.momentum}, "
                f"adapt_affine={self.adapt_affine}")


def _conv_block(cin: int, cout: int, per_step_bn: Optional[int] = None) -> nn.Sequential:
    bn = nn.BatchNorm2d(cout) if per_step_bn is None else PerStepBatchNorm2d(cout, per_step_bn)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), bn, nn.ReLU(), nn.MaxPool2d(2))


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
        per_step_bn: ``None`` (default): ``nn.BatchNorm2d`` in every block. An int K:
            MAML++'s per-step batch norm (BNRS, BNWB) for K inner steps,
            :class:`PerStepBatchNorm2d` with ``K + 1`` rows of weights, biases and
            running statistics, row k used when the network holds ``theta_k``; its
            weights and biases are meta-learned, not adapted in the inner loop (MAML++'s
            default). Build it with the learner's ``steps``.

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
    only in eval mode. With ``per_step_bn`` the same holds per step, and the per-step
    running statistics are updated by the learners' ``meta_loss`` (see
    :class:`PerStepBatchNorm2d` and :mod:`metakern.generic`).

    >>> net = Conv4(in_channels=1, ways=5, hidden=8, image_size=28)
    >>> net(torch.zeros(10, 1, 28, 28)).shape, net.features
    (torch.Size([10, 5]), 8)
    """

    def __init__(self, in_channels: int = 1, ways: int = 5, hidden: int = 64, image_size: int = 28,
                 per_step_bn: Optional[int] = None):
        super().__init__()
        in_channels, ways, hidden = (check_int(n, v, 1) for n, v in
                                     (("in_channels", in_channels), ("ways", ways), ("hidden", hidden)))
        if per_step_bn is not None:
            per_step_bn = check_int("per_step_bn", per_step_bn, 1)
        self.per_step_bn = per_step_bn
        if check_int("image_size", image_size) < 16:
            raise ValueError(f"image_size must be at least 16 (four 2x2 poolings halve it four times), got "
                             f"{image_size}; resize the images")
        side = int(image_size)
        for _ in range(4):
            side //= 2
        self.in_channels, self.image_size, self.features = int(in_channels), int(image_size), int(hidden) * side * side
        self.body = nn.Sequential(*(_conv_block(c, hidden, per_step_bn) for c in (in_channels, hidden, hidden, hidden)),
                                  nn.Flatten())
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
