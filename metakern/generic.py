"""The generic (model-agnostic) path: any ``nn.Module``, through torch.func.

Adaptation runs per task under ``vmap`` with ``functional_call`` and ``grad``;
the outer autograd differentiates through it, so second-order MAML works for
models the fused kernels do not cover (CNNs, bias-free layers, normalisation).
It keeps the whole unrolled graph, as torch.func always does; the fused path
exists to avoid exactly that.

Two modes. ``vmap`` batches the tasks with torch.func. ``loop`` adapts one task at
a time with ``torch.autograd.grad(create_graph=True)``, as learn2learn and higher
do. ``auto`` takes ``vmap`` only when every leaf module of the model is of a type
whose second derivative under ``vmap`` has been checked against the loop
(``VMAP_SAFE``), and ``loop`` otherwise: with torch 2.14, for example, ``vmap`` over
``grad`` through ``nn.LayerNorm`` gives a wrong second-order meta-gradient (about
1% off), silently, so LayerNorm models take the loop. The same holds for
normalisation with batch statistics (below); asked for explicitly, ``vmap`` refuses
those for second order (``_validate.check_vmap_exact``).

What a call hands the model, in both modes:

* Tied weights. A Parameter used at two places (one ``nn.Linear`` twice in an
  ``nn.Sequential``, or two layers holding one weight) is one parameter: one adapted
  tensor per task, used at every place it was used, so the adapted copies stay tied
  and its gradient, inner and outer, is the sum over its uses. Each place is handed
  its tensor once (``torch.func.functional_call`` given the same module under two
  names restores one of them wrongly and leaves the module holding a tensor of the
  call).
* Normalisation layers (``nn.BatchNorm*``, ``nn.InstanceNorm*``). In training mode
  they normalise with the statistics of the batch at hand, which is one task's
  support set in the inner loop and that task's query set in the query forward (as
  MAML's reference code does: transductive), and the calls update no running
  statistics: ``running_mean``, ``running_var`` and ``num_batches_tracked`` are left
  as they were. In eval mode (``model.eval()``) the inner loop and the query forward
  both use the running statistics. The mode and the buffers are read at each call,
  the adapted model's forward included. Running statistics change only through the
  model's own forward in training mode (``model(x)``).
* Inner steps. Every call tells step-aware layers (``mk.nn.PerStepBatchNorm2d``,
  MAML++'s per-step batch norm) which parameters the model holds, through
  :func:`metakern.nn.inner_step`: step k for the support forward of inner step k
  (``k = 0 .. K-1``, the model at ``theta_k``) and for the query forward of the adapted
  ``theta_k`` (``k = 1 .. K``; the fast model of ``adapt`` is at step K, and each of the
  ``all_steps`` fast models at its own step); step 0 for a module that is not adapted
  (ANIL's body). Their running statistics of step k are updated only where the caller
  asks (``update_stats``: the learners' ``meta_loss``, for each forward at step k in the
  order of the calls: every task's support steps, then the query forwards), never by
  ``adapt``, a fast model's forward or :func:`forward_tasks`.
* Parameters the inner loop does not adapt. A module may name some of its own
  parameters in an attribute ``inner_loop_fixed`` (``PerStepBatchNorm2d`` names its
  weight and bias unless built with ``adapt_affine=True``, as MAML++ does by default).
  The learners pass those as ``fixed``: every task's inner loop and its adapted model
  use them as they are (shared, no task dimension), and the meta-gradient reaches them
  through every inner step and the query loss (:func:`fixed_names`).
* Threads. ``functional_call`` puts the call's tensors into the module for the
  duration of a forward and then puts the module's own back, so two calls on one
  module at once would see each other's tensors. Every call here therefore holds the
  module's :func:`lock` while it reads or swaps the module's tensors (the learners
  read the parameters under it too, and their ``forward`` runs under it): one learner,
  or several on one module, may be called from several threads; their inner loops
  and query forwards run one at a time, their backward passes concurrently. Code that
  uses the module itself from another thread at the same time (``model(x)``,
  ``model.parameters()``) should hold ``lock(model)`` as well.
"""
from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _NormBase  # the base of nn.BatchNorm* and nn.InstanceNorm*

from ._contract import is_compiling
from .nn import inner_step

# the buffers of a normalisation layer that its forward updates in training mode
_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")

# one lock per module, made on first use (a module's lock goes with the module)
_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


VMAP_SAFE = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.Flatten, nn.Unflatten, nn.Identity,
    nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.Softplus,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
)


def choose_mode(module: nn.Module) -> str:
    """``"vmap"`` if every leaf module is in :data:`VMAP_SAFE`, else ``"loop"``."""
    for m in module.modules():
        if not list(m.children()) and not isinstance(m, VMAP_SAFE):
            return "loop"
    return "vmap"


def fixed_names(module: nn.Module) -> List[str]:
    """Names (as ``module.named_parameters()`` gives them) of the parameters that the
    inner loop keeps fixed: those a submodule lists in its ``inner_loop_fixed``."""
    ids = set()
    for m in module.modules():
        for attr in getattr(m, "inner_loop_fixed", ()):
            p = m._parameters.get(attr)
            if p is None:
                raise ValueError(f"{type(m).__name__}.inner_loop_fixed names {attr!r}, which is not one of its "
                                 f"parameters ({sorted(m._parameters)})")
            ids.add(id(p))
    return [n for n, p in module.named_parameters() if id(p) in ids]


def check_targets(pred: Tensor, y: Tensor, loss: str, name: str = "y", lead: str = "[N]"):
    """``y`` fits the model's predictions ``pred``: the same shape for ``"mse"`` (no
    broadcasting), ``pred``'s shape without the class dimension for ``"cross_entropy"``."""
    if loss == "mse":
        if pred.shape != y.shape:
            raise ValueError(f"{name} must have the model's output shape for loss='mse': per task {lead[:-1]}, ...] = "
                             f"{tuple(pred.shape)}, got {tuple(y.shape)}; reshape {name} (no broadcasting)")
    elif pred.dim() < 2 or y.shape != pred.shape[:-1]:
        raise ValueError(f"{name} for loss='cross_entropy' must be the model's output shape without its last (class) "
                         f"dimension: {tuple(pred.shape[:-1])} per task, got {tuple(y.shape)}")


def task_loss(pred: Tensor, y: Tensor, loss: str) -> Tensor:
    """Mean loss of one task (``pred`` ``[N, ...]``)."""
    check_targets(pred, y, loss)
    if loss == "mse":
        return F.mse_loss(pred, y)
    return F.cross_entropy(pred, y)


def lock(module: nn.Module):
    """The lock of ``module`` (re-entrant, one per module): held by the calls here while
    they swap the module's tensors, and by the learners while they read its parameters
    or call it. Under ``torch.compile`` a no-op context (dynamo cannot enter a lock; the
    compiled graph does not swap the module's tensors)."""
    if is_compiling():
        return contextlib.nullcontext()
    with _LOCKS_GUARD:
        found = _LOCKS.get(module)
        if found is None:
            found = _LOCKS[module] = threading.RLock()
        return found


def _slots(module: nn.Module, named) -> Dict[str, Tensor]:
    """``{name: tensor}`` with one name per place a tensor is held (a module and an attribute).

    ``named`` lists the tensors with ``remove_duplicate=False``: a module used twice in
    the model (``Sequential(lin, act, lin)``) gives two names for one place, and only
    the first is kept, because swapping one place twice would restore it wrongly; a
    Parameter held by two modules gives two places, and both are kept.
    """
    out, seen = {}, set()
    for name, t in named:
        prefix, _, attr = name.rpartition(".")
        place = (id(module.get_submodule(prefix)), attr)
        if place not in seen:
            seen.add(place)
            out[name] = t
    return out


class _Binding:
    """How a call hands per-task tensors to ``module``, read from the module at the call.

    A call's ``params`` map the names of ``module.named_parameters()`` (one per distinct
    Parameter, so tied weights have one name) to tensors; every place that holds a
    Parameter gets the tensor of its Parameter, so tied places stay tied. Buffers are
    the module's own, except the running statistics of a normalisation layer in
    training mode that tracks them (``nn.BatchNorm*``, ``nn.InstanceNorm*`` with
    ``track_running_stats``): those are passed as ``None``, so the layer normalises
    with the batch's own statistics and updates nothing.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        first = {id(p): n for n, p in module.named_parameters()}
        held = _slots(module, module.named_parameters(remove_duplicate=False))
        self.places = {s: first[id(p)] for s, p in held.items()}
        self.buffers = _slots(module, module.named_buffers(remove_duplicate=False))
        for name, m in module.named_modules(remove_duplicate=False):
            if isinstance(m, _NormBase) and m.training and m.track_running_stats:
                for b in _RUNNING_STATS:
                    key = f"{name}.{b}" if name else b
                    if key in self.buffers:
                        self.buffers[key] = None

    def __call__(self, params: Dict[str, Tensor], x: Tensor) -> Tensor:
        tensors = {s: params[n] for s, n in self.places.items()}
        tensors.update(self.buffers)
        return functional_call(self.module, tensors, (x,), tie_weights=False)


def forward_tasks(module: nn.Module, x: Tensor) -> Tensor:
    """``module`` (its own parameters) on each task's points ``x[t]`` apart: ``[T, ...]``.

    As everywhere on this path, batch norm in training mode normalises each task with
    its own statistics and the running statistics are left as they were (ANIL's body).
    """
    with lock(module), inner_step(0):
        bind, params = _Binding(module), dict(module.named_parameters())
        return torch.stack([bind(params, x[t]) for t in range(x.shape[0])])


def _rate(lr: Tensor, k: int, per_step: bool) -> Tensor:
    """Step ``k``'s rate of one parameter: row ``k`` of a per-step rate (leading ``[K]`` axis)."""
    return lr[k] if per_step else lr


def adapt(module: nn.Module, params: Dict[str, Tensor], lrs: Dict[str, Tensor], x: Tensor, y: Tensor, *, steps: int,
          loss: str, first_order: bool, per_step: bool = False, all_steps: bool = False,
          fixed: Optional[Dict[str, Tensor]] = None, update_stats: bool = False):
    """Adapted parameters ``{name: [T, *shape]}`` after ``steps`` inner SGD steps per task.

    ``params`` are shared (no task dimension), named as ``module.named_parameters()``
    names them; ``lrs[name]`` is a 0-dim tensor or a tensor of that parameter's shape,
    or with ``per_step`` the same with a leading ``[K]`` axis (row k: step k's rate).
    ``all_steps``: a list of the adapted parameters after every step, ``[theta_1, ...,
    theta_K]``, instead of ``theta_K`` alone (the multi-step loss needs them).
    ``fixed``: the module's other parameters, used as they are (not adapted, not in the
    result). The support forward of step k runs under ``inner_step(k, update_stats)``.
    """
    fixed = fixed or {}
    # y is an input of the vmapped function and torch.func's grad composes with the
    # outer autograd, so targets that require a gradient get the exact one, through
    # every inner step as through the query loss (tests/test_generic.py checks it
    # against unrolled autograd, in this mode and the loop's).
    with lock(module):
        call = _Binding(module)

        def one_task(xt: Tensor, yt: Tensor):
            def inner_loss(p):
                return task_loss(call({**p, **fixed}, xt), yt, loss)

            p, path = params, []
            for k in range(steps):
                with inner_step(k, update_stats):
                    g = grad(inner_loss)(p)
                if first_order:
                    g = {n: v.detach() for n, v in g.items()}
                p = {n: p[n] - _rate(lrs[n], k, per_step) * g[n] for n in p}
                path.append(p)
            if all_steps:
                return path
            # A fresh tensor per task even for steps == 0 (vmap needs batched outputs).
            return {n: v + torch.zeros_like(xt.reshape(-1)[:1]).sum() for n, v in p.items()}

        return vmap(one_task, randomness="different")(x, y)


def adapt_loop(module: nn.Module, params: Dict[str, Tensor], lrs: Dict[str, Tensor], x: Tensor, y: Tensor, *,
               steps: int, loss: str, first_order: bool, per_step: bool = False, all_steps: bool = False,
               fixed: Optional[Dict[str, Tensor]] = None, update_stats: bool = False):
    """Same result as :func:`adapt`, one task at a time with ``torch.autograd.grad``.

    Under ``torch.inference_mode()`` the inner loop, which needs autograd, runs outside
    it on copies of ``x`` and ``y``; the adapted parameters carry no graph.
    """
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False), torch.no_grad():
            x, y = x.clone(), y.clone()
            return adapt_loop(module, params, lrs, x, y, steps=steps, loss=loss, first_order=first_order,
                              per_step=per_step, all_steps=all_steps, fixed=fixed, update_stats=update_stats)
    fixed = fixed or {}
    names = list(params)
    per_task = []
    need_graph = torch.is_grad_enabled()
    with lock(module):
        call = _Binding(module)
        for t in range(x.shape[0]):
            p, path = [params[n] for n in names], []
            for k in range(steps):
                with torch.enable_grad(), inner_step(k, update_stats):
                    q = [v if v.requires_grad else v.detach().requires_grad_() for v in p]
                    out = task_loss(call({**dict(zip(names, q)), **fixed}, x[t]), y[t], loss)
                    gs = torch.autograd.grad(out, q, create_graph=need_graph and not first_order)
                if not need_graph:
                    q = [v.detach() for v in q]
                p = [a - _rate(lrs[n], k, per_step) * (g.detach() if first_order else g)
                     for n, a, g in zip(names, q, gs)]
                path.append(p)
            per_task.append(path if all_steps else p)
    if all_steps:
        return [{n: torch.stack([pt[k][i] for pt in per_task]) for i, n in enumerate(names)} for k in range(steps)]
    return {n: torch.stack([pt[i] for pt in per_task]) for i, n in enumerate(names)}


def forward(module: nn.Module, params: Dict[str, Tensor], x: Tensor, *, fixed: Optional[Dict[str, Tensor]] = None,
            step: int = 0, update_stats: bool = False) -> Tensor:
    """``module`` applied per task with its own parameters: ``x`` ``[T, N, ...]``.

    ``fixed``: shared parameters besides the per-task ``params``; the call runs under
    ``inner_step(step, update_stats)`` (``step``: how many inner steps ``params`` took)."""
    fixed = fixed or {}
    with lock(module), inner_step(step, update_stats):
        call = _Binding(module)
        return vmap(lambda p, xt: call({**p, **fixed}, xt), randomness="different")(params, x)


def forward_loop(module: nn.Module, params: Dict[str, Tensor], x: Tensor, *,
                 fixed: Optional[Dict[str, Tensor]] = None, step: int = 0, update_stats: bool = False) -> Tensor:
    """Same as :func:`forward`, one task at a time."""
    fixed = fixed or {}
    with lock(module), inner_step(step, update_stats):
        call = _Binding(module)
        return torch.stack([call({**{n: v[t] for n, v in params.items()}, **fixed}, x[t])
                            for t in range(x.shape[0])])
