"""Meta-learners: MAML (and first-order MAML), Meta-SGD, Reptile, ANIL.

Each learner is an ``nn.Module`` that owns the meta-parameters (the model's
initialisation and, where learnable, the inner learning rates). ``adapt(x, y)``
adapts every task of a batch at once and returns a batched fast model, callable
on ``[T, N, ...]`` inputs. Models the fused kernels cover (``mk.MLP``, an
``nn.Sequential`` of ``nn.Linear`` and activation modules, an ``nn.Linear``) take
the fused path; any other ``nn.Module`` takes the generic torch.func path.
"""
from __future__ import annotations

import numbers
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from . import functional as MF
from . import generic
from .backends.torch_backend import loss_value
from .nn import fused_spec


def _check_batch(x, y, name_x="x", name_y="y"):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name_x} must be a tensor [T, N, ...], got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(f"{name_x} must have shape [T, N, ...] (tasks, points, features), got {tuple(x.shape)}")
    if y is not None:
        if not isinstance(y, Tensor):
            raise TypeError(f"{name_y} must be a tensor, got {type(y).__name__}")
        if tuple(y.shape[:2]) != tuple(x.shape[:2]):
            raise ValueError(f"{name_y} must start with [T, N] = {tuple(x.shape[:2])} like {name_x}, "
                             f"got {tuple(y.shape)}")


def _check_lr_value(lr):
    if isinstance(lr, bool) or not isinstance(lr, (numbers.Real, Tensor)):
        raise TypeError(f"lr must be a float, got {type(lr).__name__}")
    v = float(lr)
    if not torch.isfinite(torch.tensor(v)):
        raise ValueError(f"lr must be finite, got {v}")
    return v


class FastModel(nn.Module):
    """A batch of adapted models, one per task; call it on ``[T, N, ...]``.

    ``params`` lists the adapted parameters (each ``[T, *shape]``) in the order of
    the meta-model's ``parameters()``.
    """

    def __init__(self, *, tasks: int):
        super().__init__()
        self.tasks = tasks

    def _check_input(self, x):
        _check_batch(x, None)
        if x.shape[0] != self.tasks:
            raise ValueError(f"x has {x.shape[0]} tasks but this fast model was adapted on {self.tasks}")


class _FusedFast(FastModel):
    def __init__(self, theta: Tensor, dims, act: int, backend: str):
        super().__init__(tasks=theta.shape[0])
        self.theta, self.dims, self.act, self.backend = theta, tuple(dims), act, backend

    @property
    def params(self) -> List[Tensor]:
        return MF.unpack_params(self.theta, self.dims)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if x.dim() != 3 or x.shape[-1] != self.dims[0] or x.dtype != self.theta.dtype:
            raise ValueError(f"x must be [T, N, {self.dims[0]}] of dtype {self.theta.dtype}, "
                             f"got {tuple(x.shape)} {x.dtype}")
        return MF.forward_packed(self.theta, x, self.dims, self.act, self.backend)


class _GenericFast(FastModel):
    def __init__(self, module, params: Dict[str, Tensor], buffers, mode: str):
        super().__init__(tasks=next(iter(params.values())).shape[0])
        self._module = [module]  # not a submodule: the fast model owns no meta-parameters
        self._params, self._buffers_d, self.mode = params, buffers, mode

    @property
    def params(self) -> List[Tensor]:
        return list(self._params.values())

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        fn = generic.forward if self.mode == "vmap" else generic.forward_loop
        return fn(self._module[0], self._params, self._buffers_d, x)


class MAML(nn.Module):
    """Model-Agnostic Meta-Learning (Finn et al., 2017), batched over tasks.

    Args:
        model: the model whose initialisation is meta-learned (any ``nn.Module``).
        lr: inner-loop learning rate.
        steps: inner SGD steps per task.
        first_order: drop second-order terms (FOMAML).
        loss: ``"mse"`` or ``"cross_entropy"`` (inner-loop loss, per-task mean).
        learn_lr: make the inner learning rate a meta-parameter.
        backend: ``"auto"``, ``"torch"``, ``"cpp"``, ``"triton"`` or ``"cuda"``.
        generic_mode: for models the fused kernels do not cover: ``"vmap"``,
            ``"loop"`` or ``"auto"`` (see :mod:`metakern.generic`).

    Example::

        >>> import torch, metakern as mk
        >>> maml = mk.MAML(mk.MLP(1, [40, 40], 1), lr=0.01)
        >>> xs, ys, xq, yq = mk.tasks.Sinusoid().sample(4, torch.Generator().manual_seed(0))
        >>> fast = maml.adapt(xs, ys)
        >>> loss = torch.nn.functional.mse_loss(fast(xq), yq)
        >>> loss.backward()        # exact second-order meta-gradient
    """

    _lr_mode = "scalar"

    def __init__(self, model: nn.Module, lr: float = 0.01, steps: int = 1, first_order: bool = False,
                 loss: str = "mse", learn_lr: bool = False, backend: str = "auto", generic_mode: str = "auto"):
        super().__init__()
        if generic_mode not in ("auto", "vmap", "loop"):
            raise ValueError(f"generic_mode must be 'auto', 'vmap' or 'loop', got {generic_mode!r}")
        self.generic_mode = generic_mode
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        lr = _check_lr_value(lr)
        self.steps = MF._check_int("steps", steps, 0)
        if not isinstance(first_order, bool):
            raise TypeError(f"first_order must be a bool, got {type(first_order).__name__}")
        MF._choice("loss", loss, MF.LOSSES)
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a string, got {type(backend).__name__}")
        if backend != "auto":
            from . import backends

            backends.get(backend)  # validates the name
        self.module = model
        self.first_order, self.loss, self.backend = first_order, loss, backend
        spec, self.generic_reason = fused_spec(model)
        self.fused = spec is not None
        if self.fused:
            self.dims, self.activation = spec
            # the Linear layers in parameters() order; their weight/bias are read at each
            # call (a plain list, not submodules: module.parameters() walks the module tree)
            self.__dict__["_linears"] = [model] if isinstance(model, nn.Linear) else [
                m for m in model if isinstance(m, nn.Linear)]
        ref = next(iter(model.parameters()), None)
        if ref is None:
            raise ValueError("model has no parameters to meta-learn")
        dt = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        if self._lr_mode == "per_param":
            self.lrs = nn.ParameterList([nn.Parameter(torch.full_like(p, lr)) for p in model.parameters()])
        elif learn_lr:
            self.lr = nn.Parameter(torch.tensor(lr, dtype=dt, device=ref.device))
        else:
            self.register_buffer("lr", torch.tensor(lr, dtype=dt, device=ref.device))

    # -- the inner learning rates, per parameter, in parameters() order
    def _lr_list(self) -> List[Tensor]:
        n = len(list(self.module.parameters()))
        if self._lr_mode == "per_param":
            return list(self.lrs)
        return [self.lr] * n

    def forward(self, x: Tensor) -> Tensor:
        """The un-adapted model (the meta-learned initialisation)."""
        return self.module(x)

    def adapt(self, x: Tensor, y: Tensor, steps: Optional[int] = None, first_order: Optional[bool] = None) -> FastModel:
        """Adapt to every task of the batch: ``x`` ``[T, N, ...]``, ``y`` ``[T, N, O]`` or ``[T, N]``."""
        steps = self.steps if steps is None else MF._check_int("steps", steps, 0)
        first_order = self.first_order if first_order is None else first_order
        _check_batch(x, y)
        if self.fused:
            return self._adapt_fused(x, y, steps, first_order)
        return self._adapt_generic(x, y, steps, first_order)

    def meta_loss(self, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, reduction: str = "mean",
                  steps: Optional[int] = None, first_order: Optional[bool] = None) -> Tensor:
        """The meta-training objective: adapt on ``(xs, ys)``, loss on ``(xq, yq)``.

        Equal to ``loss(self.adapt(xs, ys)(xq), yq)`` (per task the mean over its
        query points; ``reduction`` over tasks: ``"mean"``, ``"sum"`` or ``"none"``),
        and the fastest way to train: on the fused path with the ``cpp`` or ``torch``
        backend it is a single op that computes the losses and their meta-gradient in
        one walk of the inner loop (see :func:`metakern.functional.meta_loss`).

        >>> import torch, metakern as mk
        >>> maml = mk.MAML(mk.MLP(1, [40, 40], 1), lr=0.01)
        >>> opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
        >>> xs, ys, xq, yq = mk.tasks.Sinusoid().sample(25, torch.Generator().manual_seed(0))
        >>> maml.meta_loss(xs, ys, xq, yq).backward()
        >>> opt.step()
        """
        steps = self.steps if steps is None else MF._check_int("steps", steps, 0)
        first_order = self.first_order if first_order is None else first_order
        MF._check_reduction(reduction)
        _check_batch(xs, ys, "xs", "ys")
        _check_batch(xq, yq, "xq", "yq")
        if not self.fused:
            return MF._reduce(self._query_losses(self._adapt_generic(xs, ys, steps, first_order)(xq), yq), reduction)
        params, per_task, dims = self._checked(xs, ys)
        MF._check_query(xq, xs)
        MF._check_y(yq, xq, MF.LOSSES[self.loss], dims[-1], "yq", "xq")
        lr = self._packed_lr(params, per_task, dims, xs)
        return MF.maml_loss_validated(params, per_task, dims, lr, xs, ys, xq, yq, steps=steps,
                                      loss=MF.LOSSES[self.loss], act=MF.ACTIVATIONS[self.activation],
                                      first_order=first_order, backend=self.backend, reduction=reduction)

    def _query_losses(self, pred: Tensor, yq: Tensor) -> Tensor:
        """Per-task mean losses ``[T]`` of predictions ``[T, N, O]`` (generic path)."""
        if pred.dim() != 3:
            raise ValueError(f"meta_loss needs model outputs [T, N, O], got {tuple(pred.shape)}")
        return loss_value(pred, yq, MF.LOSSES[self.loss])

    def _checked(self, x, y):
        """Validate a support batch for the fused path; ``(params, per_task, dims)``."""
        params = [m._parameters[n] for m in self._linears for n in ("weight", "bias")]  # as m.weight, without __getattr__
        MF._check_x(x)
        dims, per_task = MF.check_params(params, x, where="model parameters")
        MF._check_y(y, x, MF.LOSSES[self.loss], dims[-1])
        return params, per_task, dims

    def _packed_lr(self, params, per_task, dims, x) -> Tensor:
        """The inner rates, one per packed element. A fixed rate (a CPU buffer) is packed
        once per value (its value is the cache key: in-place changes, ``.data``
        included, are seen; reading it is free on the CPU, a sync on a GPU, where it
        is packed every call)."""
        if self._lr_mode == "per_param" or self.lr.requires_grad or self.lr.device.type != "cpu":
            shapes = MF._shared_shapes(params, per_task)
            return MF._pack_lr(list(self.lrs) if self._lr_mode == "per_param" else self.lr, shapes, x)
        # the shapes without a task axis follow from the (validated) layer widths alone
        key = (float(self.lr), self.lr.dtype, x.dtype, x.device, dims)
        cached = self.__dict__.get("_lr_cache")
        if cached is None or cached[0] != key:
            cached = (key, MF._pack_lr(self.lr, MF._shared_shapes(params, per_task), x))
            self.__dict__["_lr_cache"] = cached
        return cached[1]

    def _adapt_fused(self, x, y, steps, first_order):
        params, per_task, dims = self._checked(x, y)
        theta, lr_p = MF._pack_params(params, per_task, x.shape[0]), self._packed_lr(params, per_task, dims, x)
        thetaK, _ = MF.adapt_packed(theta, dims, lr_p, x, y, steps=steps, loss=MF.LOSSES[self.loss],
                                    act=MF.ACTIVATIONS[self.activation], first_order=first_order,
                                    backend=self.backend)
        return _FusedFast(thetaK, dims, MF.ACTIVATIONS[self.activation], self.backend)

    def _adapt_generic(self, x, y, steps, first_order):
        named = dict(self.module.named_parameters())
        lrs = dict(zip(named, self._lr_list()))
        buffers = dict(self.module.named_buffers())
        if self.loss == "cross_entropy" and y.dtype != torch.int64:
            raise TypeError(f"y for loss='cross_entropy' must be int64 class indices, got {y.dtype}")
        if self.loss == "mse" and not y.is_floating_point():
            raise TypeError(f"y for loss='mse' must be a float tensor, got {y.dtype}")
        mode = self.generic_mode if self.generic_mode != "auto" else generic.choose_mode(self.module)
        fn = generic.adapt if mode == "vmap" else generic.adapt_loop
        params = fn(self.module, named, buffers, lrs, x, y, steps=steps, loss=self.loss, first_order=first_order)
        return _GenericFast(self.module, params, buffers, mode)

    def extra_repr(self) -> str:
        path = f"fused dims={self.dims} activation={self.activation}" if self.fused else f"generic ({self.generic_reason})"
        return f"steps={self.steps}, first_order={self.first_order}, loss={self.loss!r}, backend={self.backend!r}, path: {path}"


class MetaSGD(MAML):
    """Meta-SGD (Li et al., 2017): MAML with a learnable inner learning rate per parameter element.

    ``lr`` is the initial value of every rate. Same arguments as :class:`MAML`
    otherwise (``learn_lr`` is implied).

    >>> import metakern as mk
    >>> msgd = mk.MetaSGD(mk.MLP(1, [40, 40], 1), lr=0.01)
    >>> [tuple(l.shape) for l in msgd.lrs][:2]
    [(40, 1), (40,)]
    """

    _lr_mode = "per_param"

    def __init__(self, model: nn.Module, lr: float = 0.01, steps: int = 1, first_order: bool = False,
                 loss: str = "mse", backend: str = "auto"):
        super().__init__(model, lr=lr, steps=steps, first_order=first_order, loss=loss, learn_lr=True,
                         backend=backend)


class Reptile(MAML):
    """Reptile (Nichol et al., 2018): the meta-gradient is ``theta - mean_t theta_t``.

    ``meta_loss(x, y)`` adapts every task without building a graph and returns the
    surrogate ``0.5 * ||theta - stop_grad(mean_t theta_t)||^2`` whose gradient is
    exactly the Reptile direction; step any optimizer on it (plain SGD with rate
    ``epsilon`` gives the original update ``theta += epsilon (mean_t theta_t - theta)``).

    >>> import torch, metakern as mk
    >>> rep = mk.Reptile(mk.MLP(1, [40, 40], 1), lr=0.02, steps=5)
    >>> xs, ys, _, _ = mk.tasks.Sinusoid().sample(4, torch.Generator().manual_seed(0))
    >>> rep.meta_loss(xs, ys).backward()
    """

    def __init__(self, model: nn.Module, lr: float = 0.02, steps: int = 5, loss: str = "mse", backend: str = "auto"):
        super().__init__(model, lr=lr, steps=steps, first_order=True, loss=loss, learn_lr=False, backend=backend)

    def meta_loss(self, x: Tensor, y: Tensor, steps: Optional[int] = None) -> Tensor:
        with torch.no_grad():
            fast = self.adapt(x, y, steps=steps)
            targets = [p.mean(0) for p in fast.params]
        return 0.5 * sum(((p - t) ** 2).sum() for p, t in zip(self.module.parameters(), targets))


class ANIL(nn.Module):
    """ANIL (Raghu et al., 2020): adapt only the head; the body is shared and meta-learned.

    ``body`` is any module mapping one point's input to features (it is applied to
    ``x.reshape(T*N, ...)``); ``head`` is adapted per task, on the fused path when
    it is an ``nn.Linear`` or an MLP. The meta-gradient reaches the body through the
    support features (second order) and the query features.

    >>> import torch, metakern as mk
    >>> anil = mk.ANIL(mk.MLP(1, [40], 40), torch.nn.Linear(40, 1), lr=0.1)
    >>> xs, ys, xq, yq = mk.tasks.Sinusoid().sample(4, torch.Generator().manual_seed(0))
    >>> anil.adapt(xs, ys)(xq).shape
    torch.Size([4, 10, 1])
    """

    def __init__(self, body: nn.Module, head: nn.Module, lr: float = 0.1, steps: int = 1, first_order: bool = False,
                 loss: str = "mse", learn_lr: bool = False, backend: str = "auto"):
        super().__init__()
        if not isinstance(body, nn.Module):
            raise TypeError(f"body must be an nn.Module, got {type(body).__name__}")
        self.body = body
        self.head = MAML(head, lr=lr, steps=steps, first_order=first_order, loss=loss, learn_lr=learn_lr,
                         backend=backend)

    def features(self, x: Tensor) -> Tensor:
        """Body features ``[T, N, F]`` of ``x`` ``[T, N, ...]``."""
        _check_batch(x, None)
        T, N = x.shape[:2]
        f = self.body(x.reshape(T * N, *x.shape[2:]))
        return f.reshape(T, N, -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def adapt(self, x: Tensor, y: Tensor, steps: Optional[int] = None, first_order: Optional[bool] = None):
        head_fast = self.head.adapt(self.features(x), y, steps=steps, first_order=first_order)
        return _ANILFast(self, head_fast)

    def meta_loss(self, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, reduction: str = "mean",
                  steps: Optional[int] = None, first_order: Optional[bool] = None) -> Tensor:
        """``loss(self.adapt(xs, ys)(xq), yq)``, as :meth:`MAML.meta_loss` on the features."""
        return self.head.meta_loss(self.features(xs), ys, self.features(xq), yq, reduction=reduction, steps=steps,
                                   first_order=first_order)


class _ANILFast(FastModel):
    def __init__(self, anil: ANIL, head_fast: FastModel):
        super().__init__(tasks=head_fast.tasks)
        self._anil = [anil]
        self.head = head_fast

    @property
    def params(self):
        return self.head.params

    def forward(self, x):
        return self.head(self._anil[0].features(x))
