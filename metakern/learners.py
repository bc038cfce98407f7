"""Meta-learners: MAML (and first-order MAML), Meta-SGD, Reptile, ANIL.

Each learner is an ``nn.Module`` that owns the meta-parameters (the model's
initialisation and, where learnable, the inner learning rates). ``adapt(x, y)``
adapts every task of a batch at once and returns a batched fast model, callable
on ``[T, N, ...]`` inputs. Models the fused kernels cover (``mk.MLP``, an
``nn.Sequential`` of ``nn.Linear`` and activation modules, an ``nn.Linear``) take
the fused path; any other ``nn.Module`` takes the generic torch.func path.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from . import _ops
from . import _validate as V
from . import generic
from ._contract import LOSSES, Act, AdaptedParams, Reduction, reduce_losses, unpack_params
from .backends.torch_backend import loss_value
from .nn import fused_spec


def _plain(obj: nn.Module, name: str, value):
    """Set an attribute that ``nn.Module`` does not track: not a submodule, parameter or
    buffer, so ``parameters()``, ``state_dict()`` and ``.to()`` leave it alone."""
    object.__setattr__(obj, name, value)


class InnerRate:
    """A learner's inner learning rate(s): how they are stored and how a call gets them.

    ``kind``:

    * ``"fixed"``: one rate, the buffer ``learner.lr`` (in the ``state_dict``, moved by
      ``.to()``; changing it in place is seen by the next call);
    * ``"learned"``: one rate, the parameter ``learner.lr``;
    * ``"per_param"``: one rate per parameter element (Meta-SGD), the parameters
      ``learner.lrs[i]`` shaped like the model's parameters;
    * ``"per_step"``: one rate per parameter tensor and inner step (MAML++'s LSLR), the
      parameters ``learner.lrs[i]`` of shape ``[K]`` (``K = learner.steps``).

    ``learner.lrs[i]`` belongs to the i-th parameter that the inner loop adapts: every
    parameter of ``model.parameters()`` in order, less those a module keeps fixed
    (:func:`metakern.generic.fixed_names`, e.g. the per-step batch-norm weights).
    """

    KINDS = ("fixed", "learned", "per_param", "per_step")

    def __init__(self, kind: str):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind

    @property
    def per_step(self) -> bool:
        return self.kind == "per_step"

    def create(self, learner: nn.Module, model: nn.Module, lr: float):
        """Register the rate tensors on ``learner``, initialised to ``lr``."""
        ref = next(iter(model.parameters()))
        dt = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
        fixed = set(generic.fixed_names(model))
        adapted = [p for n, p in model.named_parameters() if n not in fixed]
        if self.kind == "per_step":
            learner.lrs = nn.ParameterList([nn.Parameter(torch.full((learner.steps,), lr, dtype=p.dtype,
                                                                    device=p.device)) for p in adapted])
        elif self.kind == "per_param":
            learner.lrs = nn.ParameterList([nn.Parameter(torch.full_like(p, lr)) for p in adapted])
        elif self.kind == "learned":
            learner.lr = nn.Parameter(torch.tensor(lr, dtype=dt, device=ref.device))
        else:
            learner.register_buffer("lr", torch.tensor(lr, dtype=dt, device=ref.device))

    def value(self, learner: nn.Module):
        """The rates as the fused calls take them (``lr=``): a 0-dim tensor or a list."""
        return list(learner.lrs) if self.kind in ("per_param", "per_step") else learner.lr

    def per_parameter(self, learner: nn.Module, n: int) -> List[Tensor]:
        """One rate tensor per adapted model parameter, ``n`` of them (the generic path;
        ``[K]`` each for ``"per_step"``)."""
        return list(learner.lrs) if self.kind in ("per_param", "per_step") else [learner.lr] * n

    def check_steps(self, learner: nn.Module, steps: int):
        """Per-step rates exist for the learner's own number of steps only."""
        if self.per_step and steps != learner.steps:
            raise ValueError(f"steps={steps} differs from the {learner.steps} inner steps this learner has per-step "
                             f"rates for; leave steps out (or build the learner with steps={steps})")


class FastModel(nn.Module):
    """A batch of adapted models, one per task; call it on ``[T, N, ...]``.

    ``params`` lists the adapted parameters (each ``[T, *shape]``) in the order of
    the meta-model's ``parameters()``; a model on the fused path gives an
    ``AdaptedParams`` list that remembers its activation, so
    ``functional.forward(fast.params, x)`` equals ``fast(x)``.
    """

    def __init__(self, *, tasks: int):
        super().__init__()
        self.tasks = tasks

    def _check_input(self, x):
        V.check_batch(x, None)
        if x.shape[0] != self.tasks:
            raise ValueError(f"x has {x.shape[0]} tasks but this fast model was adapted on {self.tasks}")


class _FusedFast(FastModel):
    def __init__(self, theta: Tensor, dims, act: int, backend: str):
        super().__init__(tasks=theta.shape[0])
        self.theta, self.dims, self.act, self.backend = theta, tuple(dims), act, backend

    @property
    def params(self) -> AdaptedParams:
        return AdaptedParams(unpack_params(self.theta, self.dims), Act(self.act).name.lower())

    def forward(self, x: Tensor) -> Tensor:
        x, name = V.packed_forward_call(self.theta, x, self.dims, self.backend)
        return _ops.forward(self.theta, x, self.dims, self.act, name)


class _GenericFast(FastModel):
    """Adapted parameters ``params`` (``[T, *shape]``) after ``step`` inner steps, and the
    parameters the inner loop keeps fixed, ``fixed`` (shared); ``order``: the names of the
    module's parameters in ``named_parameters()`` order."""

    def __init__(self, module, params: Dict[str, Tensor], mode: str, *, fixed: Dict[str, Tensor], step: int,
                 order: List[str]):
        super().__init__(tasks=next(iter(params.values())).shape[0])
        _plain(self, "_module", module)  # not a submodule: the fast model owns no meta-parameters
        self._params, self._fixed, self.mode, self.step, self._order = params, fixed, mode, step, order

    @property
    def params(self) -> List[Tensor]:
        """One ``[T, *shape]`` tensor per model parameter; a fixed one is the same for every task."""
        return [self._params[n] if n in self._params else self._fixed[n].expand(self.tasks, *self._fixed[n].shape)
                for n in self._order]

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, update_stats=False)

    def _run(self, x: Tensor, update_stats: bool) -> Tensor:
        self._check_input(x)
        fn = generic.forward if self.mode == "vmap" else generic.forward_loop
        return fn(self._module, self._params, x, fixed=self._fixed, step=self.step, update_stats=update_stats)


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
        rate: how the inner rate is held (an :class:`InnerRate`; by default
            ``"learned"`` with ``learn_lr``, else ``"fixed"``); subclasses such as
            :class:`MetaSGD` pass their own.

    On the generic path (:mod:`metakern.generic`), batch normalisation in training mode
    uses each task's own batch statistics, in the inner loop (the support set) and in
    the query forward (the query set), and ``adapt`` and ``meta_loss`` never update
    the running statistics (``num_batches_tracked`` stays as it was); in eval mode
    (``model.eval()``) the inner loop and the query forward use the running statistics.
    Per-step batch norm (:class:`metakern.nn.PerStepBatchNorm2d`, MAML++'s BNRS and BNWB)
    uses row k at inner step k; ``meta_loss`` updates its running statistics, ``adapt``
    does not; its weights are meta-learned, not adapted (see :class:`MAMLPlusPlus`).
    Tied weights are one parameter (one inner rate in :class:`MetaSGD`), adapted once
    per task and used at each place. Calls from several threads are safe: they take
    the module's lock (:func:`metakern.generic.lock`) while they use the module.

    Example::

        >>> import torch, metakern as mk
        >>> maml = mk.MAML(mk.MLP(1, [40, 40], 1), lr=0.01)
        >>> xs, ys, xq, yq = mk.tasks.Sinusoid().sample(4, torch.Generator().manual_seed(0))
        >>> fast = maml.adapt(xs, ys)
        >>> loss = torch.nn.functional.mse_loss(fast(xq), yq)
        >>> loss.backward()        # exact second-order meta-gradient
    """

    objective = "query loss"  # what meta_loss returns (train.meta_train reports it)

    def __init__(self, model: nn.Module, lr: float = 0.01, steps: int = 1, first_order: bool = False,
                 loss: str = "mse", learn_lr: bool = False, backend: str = "auto", generic_mode: str = "auto", *,
                 rate: Optional[InnerRate] = None):
        super().__init__()
        if generic_mode not in ("auto", "vmap", "loop"):
            raise ValueError(f"generic_mode must be 'auto', 'vmap' or 'loop', got {generic_mode!r}")
        self.generic_mode = generic_mode
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        lr = V.check_real("lr", lr, tensors=True)
        self.steps = V.check_int("steps", steps, 0)
        V.check_bool("first_order", first_order)
        V.check_bool("learn_lr", learn_lr)
        V.choice("loss", loss, LOSSES)
        V.check_backend(backend)
        self.module = model
        self.first_order, self.loss, self.backend = first_order, loss, backend
        spec, self.generic_reason = fused_spec(model)
        self.fused = spec is not None
        if self.fused:
            self.dims, self.activation = spec
            # the Linear layers in parameters() order; their weight/bias are read at each
            # call (a plain list: module.parameters() walks the module tree)
            _plain(self, "_linears", [model] if isinstance(model, nn.Linear) else [
                m for m in model if isinstance(m, nn.Linear)])
        if next(iter(model.parameters()), None) is None:
            raise ValueError("model has no parameters to meta-learn")
        _plain(self, "_rate", rate or InnerRate("learned" if learn_lr else "fixed"))
        self._rate.create(self, model, lr)

    def forward(self, x: Tensor) -> Tensor:
        """The un-adapted model (the meta-learned initialisation)."""
        with generic.lock(self.module):  # not while another thread's generic call has swapped its parameters
            return self.module(x)

    def _options(self, steps, first_order):
        steps = self.steps if steps is None else V.check_int("steps", steps, 0)
        first_order = self.first_order if first_order is None else V.check_bool("first_order", first_order)
        self._rate.check_steps(self, steps)
        return steps, first_order

    def step_weights(self) -> Optional[Tensor]:
        """The multi-step loss's weights of ``meta_loss`` (``None``: the last step's query
        loss alone, as MAML defines it; :class:`MAMLPlusPlus` anneals them)."""
        return None

    def adapt(self, x: Tensor, y: Tensor, steps: Optional[int] = None, first_order: Optional[bool] = None) -> FastModel:
        """Adapt to every task of the batch: ``x`` ``[T, N, ...]``, ``y`` ``[T, N, O]`` or ``[T, N]``.

        On the fused path ``x`` is ``[T, N, D]``, or ``[T, N, *shape]`` with ``D`` values per
        point (images ``[T, N, 1, 28, 28]`` for a 784-input MLP), flattened to ``[T, N, D]``;
        the fast model flattens its inputs the same way."""
        steps, first_order = self._options(steps, first_order)
        V.check_batch(x, y)
        if not self.fused:
            return self._adapt_generic(x, y, steps, first_order)
        x = V.flatten_points(x, self.dims[0])
        p = V.adapt_problem(self._fused_params(), x, y, lr=self._rate.value(self), steps=steps, loss=self.loss,
                            activation=self.activation, first_order=first_order, backend=self.backend,
                            where="model parameters")
        return _FusedFast(_ops.adapt(p), p.dims, p.act, self.backend)

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
        steps, first_order = self._options(steps, first_order)
        red = V.check_reduction(reduction)
        V.check_batch(xs, ys, "xs", "ys")
        V.check_batch(xq, yq, "xq", "yq")
        w = self.step_weights()
        if not self.fused:
            # meta-training: per-step running statistics take each forward's batch
            if w is None:
                fast = self._adapt_generic(xs, ys, steps, first_order, update_stats=True)
                return reduce_losses(self._query_losses(fast._run(xq, True), yq), red)
            w = V.check_step_weights(w, steps, xq if xq.is_floating_point() else xs)
            path = self._adapt_generic(xs, ys, steps, first_order, all_steps=True, update_stats=True)
            losses = sum(w[k] * self._query_losses(fast._run(xq, True), yq) for k, fast in enumerate(path))
            return reduce_losses(losses, red)
        xs, xq = V.flatten_points(xs, self.dims[0], "xs"), V.flatten_points(xq, self.dims[0], "xq")
        p = V.maml_problem(self._fused_params(), xs, ys, xq, yq, lr=self._rate.value(self), steps=steps,
                           loss=self.loss, activation=self.activation, first_order=first_order,
                           backend=self.backend, reduction=reduction, where="model parameters", step_weights=w)
        return _ops.meta_loss(p)

    def _fused_params(self) -> List[Tensor]:
        # as m.weight, m.bias, without nn.Module.__getattr__
        return [m._parameters[n] for m in self._linears for n in ("weight", "bias")]

    def _query_losses(self, pred: Tensor, yq: Tensor) -> Tensor:
        """Per-task mean losses ``[T]`` of predictions ``[T, N, O]`` (generic path)."""
        if pred.dim() != 3:
            raise ValueError(f"meta_loss needs model outputs [T, N, O], got {tuple(pred.shape)}")
        generic.check_targets(pred, yq, self.loss, "yq", "[T, N]")
        return loss_value(pred, yq, LOSSES[self.loss])

    def _adapt_generic(self, x, y, steps, first_order, all_steps=False, update_stats=False):
        if self.loss == "cross_entropy" and y.dtype != torch.int64:
            raise TypeError(f"y for loss='cross_entropy' must be int64 class indices, got {y.dtype}")
        if self.loss == "mse" and not y.is_floating_point():
            raise TypeError(f"y for loss='mse' must be a float tensor, got {y.dtype}")
        mode = self.generic_mode if self.generic_mode != "auto" else generic.choose_mode(self.module)
        if self.generic_mode == "vmap":
            V.check_vmap_exact(self.module, first_order)
        V.check_step_layers(self.module, steps, mode)
        fn = generic.adapt if mode == "vmap" else generic.adapt_loop
        # Under the module's lock: the parameters are read, and swapped by fn, while no
        # other thread's call has them swapped.
        with generic.lock(self.module):
            named = dict(self.module.named_parameters())
            fixed = {n: named.pop(n) for n in generic.fixed_names(self.module)}
            lrs = dict(zip(named, self._rate.per_parameter(self, len(named))))
            params = fn(self.module, named, lrs, x, y, steps=steps, loss=self.loss, first_order=first_order,
                        per_step=self._rate.per_step, all_steps=all_steps, fixed=fixed, update_stats=update_stats)
            order = [n for n, _ in self.module.named_parameters()]
        if all_steps:
            return [_GenericFast(self.module, p, mode, fixed=fixed, step=k + 1, order=order)
                    for k, p in enumerate(params)]
        return _GenericFast(self.module, params, mode, fixed=fixed, step=steps, order=order)

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

    def __init__(self, model: nn.Module, lr: float = 0.01, steps: int = 1, first_order: bool = False,
                 loss: str = "mse", backend: str = "auto", generic_mode: str = "auto"):
        super().__init__(model, lr=lr, steps=steps, first_order=first_order, loss=loss, learn_lr=True,
                         backend=backend, generic_mode=generic_mode, rate=InnerRate("per_param"))


def msl_weights(epoch: int, steps: int, msl_epochs: int) -> List[float]:
    """MAML++'s per-step importance weights of the multi-step loss at ``epoch``.

    They start uniform (``1/K``) and move towards the last step over ``msl_epochs``:
    with ``decay = 1 / K / msl_epochs``, step ``k < K`` weighs
    ``max(1/K - epoch * decay, 0.03/K)`` and the last step
    ``min(1/K + epoch * (K - 1) * decay, 1 - (K - 1) * 0.03/K)`` (Antoniou et al., "How
    to train your MAML", ICLR 2019; ``get_per_step_loss_importance_vector`` in its code).
    """
    K = V.check_int("steps", steps, 1)
    epochs = V.check_int("msl_epochs", msl_epochs, 1)
    epoch = V.check_int("epoch", epoch, 0)
    decay, floor = 1.0 / K / epochs, 0.03 / K
    w = [max(1.0 / K - epoch * decay, floor) for _ in range(K - 1)]
    return w + [min(1.0 / K + epoch * (K - 1) * decay, 1.0 - (K - 1) * floor)]


class MAMLPlusPlus(MAML):
    """MAML++ (Antoniou, Edwards and Storkey, "How to train your MAML", ICLR 2019): MAML
    with learned per-layer per-step inner rates (LSLR), the multi-step loss (MSL) and
    derivative-order annealing (DA), all inside the fused op where the model is on the
    fused path.

    * LSLR: ``learner.lrs[i]`` is a learnable ``[steps]`` tensor per model parameter,
      initialised to ``lr``; step k updates parameter i with ``lrs[i][k]``.
    * MSL: while ``epoch < msl_epochs``, :meth:`meta_loss` is
      ``sum_k w_k L_query(theta_k)`` with the weights of :func:`msl_weights`; from
      then on the last step's query loss alone.
    * DA: first order while ``epoch < first_order_epochs``, then the order of
      ``first_order`` (second order by default). ``first_order_epochs=0`` turns it off.

    The epoch comes from the training loop: call :meth:`set_epoch` at the start of
    each epoch (``metakern.train.meta_train`` does, every ``epoch_length``
    iterations). :meth:`adapt` (evaluation) uses the per-step rates and the order of
    the current epoch; ``meta_loss(..., steps=)`` must keep the learner's number of
    steps, which its rates are for. The MAML++ code's defaults are not all stated in
    the paper; ``msl_epochs=10`` and ``first_order_epochs=50`` follow its Omniglot
    configuration and the paper's DA description (first order for the first 50
    epochs); ``lr=0.1`` and ``steps=5`` are its code's inner rate and steps.

    * BNRS and BNWB, per-step batch-norm statistics and weights: on a model with
      :class:`metakern.nn.PerStepBatchNorm2d` layers (``mk.Conv4(..., per_step_bn=steps)``,
      built for the learner's ``steps``, else a ``ValueError``), the generic path tells
      the layers the step of every call (:func:`metakern.nn.inner_step`): row k of their
      weights, biases and running statistics serves ``theta_k``, in the support forward
      of step k and the query forward of ``theta_k``. Their weights and biases are
      meta-learned and not adapted (MAML++'s default), so ``lrs`` has no rates for them;
      :meth:`meta_loss` updates their running statistics of step k with the batch of
      each forward at step k; :meth:`adapt` updates none.

    >>> import torch, metakern as mk
    >>> pp = mk.MAMLPlusPlus(mk.MLP(1, [40, 40], 1), lr=0.01, steps=5, msl_epochs=3, first_order_epochs=1)
    >>> [tuple(l.shape) for l in pp.lrs][:2]
    [(5,), (5,)]
    >>> pp.set_epoch(1)
    >>> [round(w, 4) for w in pp.step_weights().tolist()]
    [0.1333, 0.1333, 0.1333, 0.1333, 0.4667]
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, steps: int = 5, first_order: bool = False,
                 loss: str = "mse", backend: str = "auto", generic_mode: str = "auto", *, msl_epochs: int = 10,
                 first_order_epochs: int = 50):
        V.check_int("steps", steps, 1)
        V.check_step_layers(model, steps, "loop", exact_steps=True)
        super().__init__(model, lr=lr, steps=steps, first_order=first_order, loss=loss, learn_lr=True,
                         backend=backend, generic_mode=generic_mode, rate=InnerRate("per_step"))
        self.msl_epochs = V.check_int("msl_epochs", msl_epochs, 0)
        self.first_order_epochs = V.check_int("first_order_epochs", first_order_epochs, 0)
        self.final_first_order = first_order
        self.epoch = 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int):
        """Set the training epoch, which the multi-step loss's weights and the
        derivative order follow."""
        self.epoch = V.check_int("epoch", epoch, 0)
        self.first_order = self.final_first_order or self.epoch < self.first_order_epochs

    def step_weights(self) -> Optional[Tensor]:
        """The multi-step loss's ``[steps]`` weights at the current epoch, or ``None``
        once ``epoch >= msl_epochs`` (the last step's loss alone)."""
        if self.epoch >= self.msl_epochs:
            return None
        ref = self.lrs[0]
        return torch.tensor(msl_weights(self.epoch, self.steps, self.msl_epochs), dtype=ref.dtype, device=ref.device)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", epoch={self.epoch}, msl_epochs={self.msl_epochs}, "
                f"first_order_epochs={self.first_order_epochs}")


class Reptile(MAML):
    """Reptile (Nichol et al., 2018): the meta-gradient is ``theta - mean_t theta_t``.

    ``meta_loss(xs, ys)`` adapts every task on its support set without building a
    graph and returns the surrogate ``0.5 * ||theta - stop_grad(mean_t theta_t)||^2``
    whose gradient is exactly the Reptile direction; step any optimizer on it (plain
    SGD with rate ``epsilon`` gives the original update
    ``theta += epsilon (mean_t theta_t - theta)``). It takes the arguments of
    :meth:`MAML.meta_loss`; Reptile does not use a query set, so ``xq`` and ``yq``
    may be left out (given, they are ignored).

    >>> import torch, metakern as mk
    >>> rep = mk.Reptile(mk.MLP(1, [40, 40], 1), lr=0.02, steps=5)
    >>> xs, ys, _, _ = mk.tasks.Sinusoid().sample(4, torch.Generator().manual_seed(0))
    >>> rep.meta_loss(xs, ys).backward()
    """

    def __init__(self, model: nn.Module, lr: float = 0.02, steps: int = 5, loss: str = "mse", backend: str = "auto",
                 generic_mode: str = "auto"):
        super().__init__(model, lr=lr, steps=steps, first_order=True, loss=loss, learn_lr=False, backend=backend,
                         generic_mode=generic_mode)

    objective = "reptile surrogate"

    def meta_loss(self, xs: Tensor, ys: Tensor, xq: Optional[Tensor] = None, yq: Optional[Tensor] = None,
                  reduction: str = "mean", steps: Optional[int] = None, first_order: Optional[bool] = None) -> Tensor:
        """The Reptile surrogate of the batch (see the class docstring); one value for the
        whole batch, so ``reduction`` is ``"mean"`` (``"sum"`` scales it by ``T``)."""
        red = V.check_reduction(reduction)
        if red == Reduction.NONE:
            raise ValueError("reduction='none' is not defined for Reptile: its surrogate is one value for the "
                             "batch; use 'mean' or 'sum'")
        if first_order is not None and V.check_bool("first_order", first_order) is False:
            raise ValueError("Reptile is first order by construction: pass first_order=None or True")
        with torch.no_grad():
            fast = self.adapt(xs, ys, steps=steps)
            targets = [p.mean(0) for p in fast.params]
        with generic.lock(self.module):
            theta = list(self.module.parameters())
        out = 0.5 * sum(((p - t) ** 2).sum() for p, t in zip(theta, targets))
        return out * xs.shape[0] if red == Reduction.SUM else out


def _normalises_by_batch(module: nn.Module) -> bool:
    """Whether ``module`` holds a batch norm layer that normalises by batch statistics
    (training mode, or no running statistics; a per-step one in training mode)."""
    return any((isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None))
               or (getattr(type(m), "step_aware", False) and m.training) for m in module.modules())


class ANIL(nn.Module):
    """ANIL (Raghu et al., 2020): adapt only the head; the body is shared and meta-learned.

    ``body`` is any module mapping a batch of points to features (it is applied to
    ``x.reshape(T*N, ...)``, or task by task when it holds batch norm in training mode,
    so that each task is normalised by its own statistics: see :meth:`features`);
    ``head`` is adapted per task, on the fused path when it is an ``nn.Linear`` or an
    MLP. The meta-gradient reaches the body through the support features (second
    order) and the query features. With ``net = mk.nn.Conv4(...)``,
    ``ANIL(net.body, net.head)`` adapts the convolutional network's linear head only.

    >>> import torch, metakern as mk
    >>> anil = mk.ANIL(mk.MLP(1, [40], 40), torch.nn.Linear(40, 1), lr=0.1)
    >>> xs, ys, xq, yq = mk.tasks.Sinusoid().sample(4, torch.Generator().manual_seed(0))
    >>> anil.adapt(xs, ys)(xq).shape
    torch.Size([4, 10, 1])
    """

    objective = "query loss"

    def __init__(self, body: nn.Module, head: nn.Module, lr: float = 0.1, steps: int = 1, first_order: bool = False,
                 loss: str = "mse", learn_lr: bool = False, backend: str = "auto", generic_mode: str = "auto"):
        super().__init__()
        if not isinstance(body, nn.Module):
            raise TypeError(f"body must be an nn.Module, got {type(body).__name__}")
        self.body = body
        self.head = MAML(head, lr=lr, steps=steps, first_order=first_order, loss=loss, learn_lr=learn_lr,
                         backend=backend, generic_mode=generic_mode)

    def features(self, x: Tensor) -> Tensor:
        """Body features ``[T, N, F]`` of ``x`` ``[T, N, ...]``.

        The body runs on all ``T * N`` points at once, except when it holds batch norm in
        training mode: then it runs on one task at a time, so that each task's support
        and query sets are normalised by their own batch statistics, as MAML does, and
        (the generic path's rule) without updating the running statistics."""
        V.check_batch(x, None)
        T, N = x.shape[:2]
        if _normalises_by_batch(self.body):
            return generic.forward_tasks(self.body, x).reshape(T, N, -1)
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
        _plain(self, "_anil", anil)  # not a submodule: the fast model owns no meta-parameters
        self.head = head_fast

    @property
    def params(self):
        return self.head.params

    def forward(self, x):
        return self.head(self._anil.features(x))
