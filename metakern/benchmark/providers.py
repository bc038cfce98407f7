"""Providers: the implementations of one meta-iteration that the benchmark compares.

Each *provider* runs the same meta-iteration:

* ``mk-<backend>``: metakern, one per available backend (``torch``, ``cpp``; on CUDA
  ``triton`` and ``cuda``; Triton never under the interpreter), through the MAML
  objective API (``MAML.meta_loss`` / ``functional.meta_loss``): one fused op for the
  losses and their meta-gradient where the backend has it (``torch``, ``cpp``, ``cuda``);
* ``mk-<backend>-2op`` (``torch``, ``cpp``, ``cuda``): the same backends through the two-op API,
  ``MAML.adapt(xs, ys)(xq)`` then the loss (``functional.adapt`` + ``forward``);
* ``vmap``: torch.func (``functional_call`` + ``grad`` + ``vmap`` over tasks, the
  outer autograd differentiating through the inner gradients: exact second order).
  It is the baseline of the ``speedup_vs_vmap`` column;
* ``vmap-graph`` (CUDA): the same, captured once in a CUDA graph and replayed (each
  call copies a batch into the static inputs, then replays);
* ``loop``: a Python loop over tasks, parameters cloned per task and
  ``torch.autograd.grad(create_graph=True)`` per inner step, as learn2learn and
  higher do it;
* ``higher``: the ``higher`` library itself (``innerloop_ctx`` per task), if importable.

:func:`providers` lists them all, :func:`select_providers` applies ``--providers`` and
``--backend``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import metakern as mk
import metakern.functional as MF

from .workloads import BASELINE, Config, Profile, mlp_apply, task_loss


# build(cfg, model, data) -> (op_loss, step_loss): closures returning the scalar meta-loss
# as a differentiable function of model.parameters().


def _build_metakern(backend: str, two_ops: bool = False):
    def build(cfg: Config, model: nn.Module, data):
        w, (xs, ys, xq, yq) = cfg.workload, data
        params, kw = list(model.parameters()), dict(activation=w.activation, backend=backend)

        def op_loss():
            return MF.meta_loss(params, xs, ys, xq, yq, lr=w.lr, steps=cfg.K, loss=w.loss,
                                first_order=cfg.first_order, **kw)

        maml = mk.MAML(model, lr=w.lr, steps=cfg.K, first_order=cfg.first_order, loss=w.loss, backend=backend)
        if two_ops:
            return (lambda: task_loss(MF.forward(MF.adapt(params, xs, ys, lr=w.lr, steps=cfg.K, loss=w.loss,
                                                          first_order=cfg.first_order, **kw), xq, **kw), yq, w.loss),
                    lambda: task_loss(maml.adapt(xs, ys)(xq), yq, w.loss))
        return op_loss, lambda: maml.meta_loss(xs, ys, xq, yq)
    return build


def _build_vmap(cfg: Config, model: nn.Module, data):
    w, (xs, ys, xq, yq) = cfg.workload, data

    def inner_loss(p, x, y):
        return task_loss(functional_call(model, p, (x,)), y, w.loss)

    def adapt_one(p, x, y):
        for _ in range(cfg.K):
            g = grad(inner_loss)(p, x, y)
            if cfg.first_order:
                g = {n: v.detach() for n, v in g.items()}
            p = {n: p[n] - w.lr * g[n] for n in p}
        return p

    def loss():
        fast = vmap(adapt_one, in_dims=(None, 0, 0))(dict(model.named_parameters()), xs, ys)
        return task_loss(vmap(lambda p, x: functional_call(model, p, (x,)))(fast, xq), yq, w.loss)
    return loss, loss


def _build_loop(cfg: Config, model: nn.Module, data):
    w, (xs, ys, xq, yq) = cfg.workload, data
    params = list(model.parameters())

    def loss():
        total = 0.0
        for t in range(cfg.T):
            fast = [p.clone() for p in params]  # learn2learn's clone_module
            for _ in range(cfg.K):
                inner = task_loss(mlp_apply(fast, xs[t], w.activation), ys[t], w.loss)
                g = torch.autograd.grad(inner, fast, create_graph=not cfg.first_order)
                fast = [p - w.lr * gi for p, gi in zip(fast, g)]
            total = total + task_loss(mlp_apply(fast, xq[t], w.activation), yq[t], w.loss)
        return total / cfg.T
    return loss, loss


def _build_higher(cfg: Config, model: nn.Module, data):
    import higher

    w, (xs, ys, xq, yq) = cfg.workload, data
    inner_opt = torch.optim.SGD(model.parameters(), lr=w.lr)
    detach = (lambda gs: [g.detach() for g in gs]) if cfg.first_order else None

    def loss():
        total = 0.0
        for t in range(cfg.T):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(cfg.K):
                    diffopt.step(task_loss(fmodel(xs[t]), ys[t], w.loss), grad_callback=detach)
                total = total + task_loss(fmodel(xq[t]), yq[t], w.loss)
        return total / cfg.T
    return loss, loss


def _importable(name: str) -> List[str]:
    try:
        __import__(name)
        return []
    except Exception as e:  # ImportError, or a library broken by this torch
        return [f"{name} is not importable ({type(e).__name__}: {e})"]


@dataclass
class Provider:
    name: str
    build: Callable
    unavailable: Callable[[str], List[str]]          # device -> reasons it cannot run at all
    limits: Callable[[Config, "Profile"], List[str]] = lambda cfg, prof: []  # reasons for one config
    graphed: bool = False
    about: str = ""


def _mk_unavailable(backend: str):
    def why(device: str) -> List[str]:
        reasons = list(mk.backends.available().get(backend, []))
        if backend == "cpp" and device != "cpu":
            reasons.append("the cpp backend runs on CPU tensors")
        if backend in ("triton", "cuda") and device != "cuda":
            reasons.append(f"the {backend} backend needs --device cuda")
        if backend == "triton" and os.environ.get("TRITON_INTERPRET", "0") == "1":
            reasons.append("TRITON_INTERPRET=1: the interpreter's timings mean nothing")
        return reasons
    return why


def _mk_limits(backend: str):
    def why(cfg: Config, prof: Profile) -> List[str]:
        w = cfg.workload
        call = mk.backends.Call(torch.device(prof.device), torch.float32, w.dims, cfg.T, w.n_support, cfg.K)
        return list(mk.backends.get(backend).limits(call))
    return why


def _loop_limits(cfg: Config, prof: Profile) -> List[str]:
    if cfg.T > prof.loop_max_T:
        return [f"T={cfg.T} > {prof.loop_max_T}: a per-task Python loop this long is skipped (--loop-max-T)"]
    return []


# Backends with a fused MAML objective (``maml_fwd``); their two-op path is measured too.
FUSED_MAML = ("torch", "cpp", "cuda")


def providers() -> List[Provider]:
    """Every provider, the baseline first."""
    out = [Provider(BASELINE, _build_vmap, lambda d: [], about="torch.func functional_call+grad+vmap over tasks")]
    for b in mk.backends.BACKENDS:
        out.append(Provider(f"mk-{b}", _build_metakern(b), _mk_unavailable(b), _mk_limits(b),
                            about=f"metakern, backend={b!r}: MAML.meta_loss / functional.meta_loss"))
    for b in FUSED_MAML:  # the same backends through the two-op API: adapt, then the fast model
        out.append(Provider(f"mk-{b}-2op", _build_metakern(b, two_ops=True), _mk_unavailable(b), _mk_limits(b),
                            about=f"metakern, backend={b!r}: MAML.adapt(xs, ys)(xq) / functional.adapt + forward"))
    out += [
        Provider("vmap-graph", _build_vmap, lambda d: [] if d == "cuda" else ["CUDA graphs need --device cuda"],
                 graphed=True, about="vmap captured once in a CUDA graph, replayed"),
        Provider("loop", _build_loop, lambda d: [], _loop_limits,
                 about="per-task loop, autograd.grad(create_graph=True) (learn2learn/higher style)"),
        Provider("higher", _build_higher, lambda d: _importable("higher"), _loop_limits,
                 about="the higher library, innerloop_ctx per task"),
    ]
    return out


def select_providers(names: Optional[str], backends: Optional[str]) -> List[Provider]:
    """Filter by ``--providers`` (names; ``mk`` = every metakern backend) and ``--backend``."""
    allp = providers()
    known = {p.name for p in allp} | {"mk"}
    want = _split(names, known, "--providers")
    bks = _split(backends, set(mk.backends.BACKENDS), "--backend")
    out = []
    for p in allp:
        is_mk = p.name.startswith("mk-")
        if want is not None and p.name not in want and not (is_mk and "mk" in want):
            continue
        if bks is not None and is_mk and p.name[3:].split("-")[0] not in bks:
            continue
        out.append(p)
    return out


def _split(value: Optional[str], known, flag: str):
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in known]
    if bad:
        raise SystemExit(f"{flag}: unknown {bad}; choose from {sorted(known)}")
    return set(items)
