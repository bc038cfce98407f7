"""Microbenchmarks: metakern's fused backends against what a user would otherwise run.

Run it as ``metakern bench``, ``python -m metakern.benchmark`` or ``python bench/run.py``::

    python -m metakern.benchmark --quick                    # < 2 minutes on a 2-core CPU
    python -m metakern.benchmark --profile gpu --plot       # on a CUDA machine
    python -m metakern.benchmark --providers vmap,mk --backend cpp --T 25,1024 --K 5

Every *workload* is a fixed model and task shape (:data:`WORKLOADS`); a *config* adds
the number of tasks ``T``, inner steps ``K`` and the order (first / second). Each
*provider* runs the same meta-iteration:

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

Two quantities are timed per (config, provider):

* ``op``: adaptation and meta-gradient only -- adapt with parameters that require
  grad, query forward and loss, ``torch.autograd.grad`` of it w.r.t. the
  initialisation (metakern: the functional API);
* ``step``: a full meta-iteration -- adapt, query forward, loss, ``backward()`` and
  an Adam step (metakern: through the ``mk.MAML`` learner, as a user writes it).
  Every provider uses the same optimizer, torch's ``Adam(fused=True)``.

Timing: on CPU ``time.perf_counter`` per iteration after a warmup, the providers of
one (config, quantity) *interleaved*: each round calls every provider once, until
enough rounds and time are collected, so that a slow spell of a shared machine
slows them all alike instead of one of them (:func:`time_interleaved`); on CUDA ``triton.testing.do_bench`` (L2 flushed
between calls, CUDA events) with p50/p20/p80 quantiles, or CUDA events when Triton is
missing. On a CPU whose cores other processes already keep busy, the run uses fewer
torch threads (:func:`auto_threads`; the ``threads`` column says how many). FLOP/s
are the algorithm's FLOPs (:func:`meta_flops`) over the median time, and
``peak_fraction`` divides them by the device's fp32 matmul rate measured in the same
run (:func:`measure_peak`). Peak memory (``peak_mem_mb``) on CUDA is
``torch.cuda.max_memory_allocated`` over building and one call; on CPU it is the
peak of the bytes allocated through PyTorch's CPU allocator during one call and not
yet freed, from the profiler's memory events (:func:`cpu_peak_mb`): what the call
adds on top of the model and data, the graph kept for the backward included. It
does not see the C++ kernels' per-thread scratch (``std::aligned_alloc``,
``(K + c) P`` elements per worker thread, ``csrc/cpu/task_passes.h:Scratch``).
``grad_err`` is each provider's relative meta-gradient difference to ``vmap`` on the
same inputs (``op`` rows), so a fast but wrong provider shows.

Results stream to stdout as a table and are appended, one row at a time, to a CSV
(:data:`COLUMNS`; default ``bench/results/bench.csv``). ``--plot`` draws log-log time
against ``T`` for the sine workload (also ``bench/plot.py`` from any CSV).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime as _dt
import gc
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import metakern as mk
import metakern.functional as MF

DEFAULT_CSV = os.path.join("bench", "results", "bench.csv")
DEFAULT_PNG = os.path.join("bench", "results", "bench.png")
QUANTITIES = ("op", "step")
BASELINE = "vmap"
META_LR = 1e-3  # Adam, for the step quantity
# Every provider's step uses the same optimizer: torch's fused Adam (one kernel over
# all parameters, CPU and CUDA). The default per-tensor loop costs ~0.45 ms on a 2-core
# CPU for the six tensors of the sine MLP, more than metakern's kernels at T=25.
ADAM_KW = dict(fused=True)

COLUMNS = [
    "date", "run_id", "device", "device_type", "threads", "torch", "triton", "python", "metakern", "git_rev",
    "profile", "workload", "dims", "loss", "T", "K", "order", "n_support", "n_query", "provider", "quantity",
    "status", "median_ms", "p20_ms", "p80_ms", "samples", "timer", "tasks_per_s", "flops", "gflops",
    "peak_gflops", "peak_fraction", "peak_mem_mb", "speedup_vs_vmap", "grad_err", "note",
]


# ----------------------------------------------------------------------------- workloads and FLOPs


@dataclass(frozen=True)
class Workload:
    """A model and task shape: MLP widths ``dims``, loss, support / query points per task."""

    name: str
    dims: Tuple[int, ...]
    activation: str
    loss: str
    n_support: int
    n_query: int
    lr: float  # inner learning rate
    about: str


WORKLOADS: Dict[str, Workload] = {w.name: w for w in [
    Workload("sine", (1, 40, 40, 1), "relu", "mse", 10, 10, 0.01, "MAML sine regression, MLP 1-40-40-1 ReLU"),
    Workload("linear", (10, 1), "identity", "mse", 10, 10, 0.01, "linear regression 10->1"),
    Workload("head", (64, 5), "identity", "cross_entropy", 25, 75, 0.1,
             "5-way 5-shot head on 64-d features, 15 queries per class"),
    Workload("mlp-ce", (32, 128, 128, 5), "relu", "cross_entropy", 25, 75, 0.1,
             "5-way 5-shot MLP 32-128-128-5 ReLU"),
]}


def meta_flops(dims: Sequence[int], T: int, K: int, first_order: bool, n_support: int, n_query: int) -> int:
    """FLOPs of one meta-iteration of the provider-independent algorithm (matmuls only).

    With ``S = sum_l d_{l-1} * d_l`` (multiply-adds per point of one forward) and, per task,
    ``F(N) = 2 N S`` (forward over N points), a gradient ``G(N) = F + 2F = 3 F(N)``
    (its backward costs about twice the forward) and a Hessian-vector product
    ``H(N) = 2 G(N) = 6 F(N)``::

        inner loop       K G(Ns)                      =  3 K F(Ns)
        query            F(Nq) + its backward 2 F(Nq) =  3 F(Nq)
        meta-backward    K (G(Ns) + H(Ns))            =  9 K F(Ns)   (second order; 0 for first order)

        flops = T * (3 K F(Ns) + 3 F(Nq) + [second order] 9 K F(Ns))

    Elementwise work (activations, losses, the SGD and Adam updates) is not counted;
    ``op`` and ``step`` share the count. Sine 1-40-40-1, 10+10 points, T=25, K=1,
    second order: ``S = 1680``, ``F = 33600``, ``25 * 15 * 33600 = 12.6 MFLOP``.
    """
    S = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    Fs, Fq = 2 * n_support * S, 2 * n_query * S
    per_task = 3 * K * Fs + 3 * Fq + (0 if first_order else 9 * K * Fs)
    return T * per_task


@dataclass(frozen=True)
class Config:
    workload: Workload
    T: int
    K: int
    first_order: bool

    @property
    def order(self) -> str:
        return "first" if self.first_order else "second"

    @property
    def flops(self) -> int:
        w = self.workload
        return meta_flops(w.dims, self.T, self.K, self.first_order, w.n_support, w.n_query)

    def __str__(self):
        return f"{self.workload.name} T={self.T} K={self.K} {self.order}"


# ----------------------------------------------------------------------------- profiles

# A grid is (workload, Ts, Ks, orders); configs run in grid order, then order, K, T.
Grid = Tuple[str, Tuple[int, ...], Tuple[int, ...], Tuple[str, ...]]


@dataclass
class Profile:
    grids: List[Grid]
    warmup_s: float = 0.2      # CPU timer
    min_reps: int = 10
    min_time_s: float = 0.5
    max_time_s: float = 3.0
    burst_ms: float = 5.0      # CPU: back-to-back calls of one provider per round (time_interleaved)
    max_burst: int = 50
    warmup_ms: int = 25        # CUDA: do_bench
    rep_ms: int = 100
    peak_n: int = 2048         # square sgemm for the device peak
    loop_max_T: int = 256      # the per-task loops (loop, higher) above this T are skipped
    device: str = "cpu"
    peak_gflops: float = 0.0   # measured at the start of the run
    cpu_memory: bool = True    # CPU: one extra, profiled call per row for peak_mem_mb
    configs: List[Config] = field(default_factory=list)

    def expand(self):
        self.configs = [Config(WORKLOADS[w], T, K, o == "first")
                        for w, Ts, Ks, orders in self.grids for o in orders for K in Ks for T in Ts]
        return self


_BOTH = ("second", "first")


def make_profile(name: str, device: str) -> Profile:
    gpu = device == "cuda"
    if name == "smoke":  # CI: seconds
        return Profile([("sine", (4,), (1,), ("second",)), ("linear", (4,), (2,), ("first",)),
                        ("head", (4,), (1,), ("second",)), ("mlp-ce", (2,), (1,), ("second",))],
                       warmup_s=0.0, min_reps=3, min_time_s=0.0, max_time_s=0.5, burst_ms=0.0, warmup_ms=2, rep_ms=5,
                       peak_n=256, loop_max_T=8)
    if name == "quick":  # < 2 minutes on a 2-core CPU
        return Profile([("sine", (25,), (1,), ("second",)), ("sine", (1024,), (5,), ("second",)),
                        ("head", (256,), (5,), ("second",)), ("sine", (256,), (1, 10), ("second",))],
                       warmup_s=0.1, min_reps=5, min_time_s=0.3, max_time_s=2.0, warmup_ms=10, rep_ms=50,
                       peak_n=1024 if not gpu else 8192, loop_max_T=32)
    if name == "full":
        return Profile([("sine", (25, 100, 400, 1600, 6400), (1, 5), _BOTH),
                        ("linear", (100, 1600), (1, 5), ("second",)),
                        ("head", (100, 1600), (1, 5), ("second",)),
                        ("mlp-ce", (100, 1600), (1, 5), ("second",))],
                       peak_n=2048 if not gpu else 8192, loop_max_T=400)
    if name == "gpu":  # the one-shot GPU check: most important first, T up to 16384
        return Profile([("sine", (25, 256, 1024, 4096, 16384), (5, 1), ("second",)),
                        ("mlp-ce", (256, 4096, 16384), (5, 1), ("second",)),
                        ("head", (256, 4096, 16384), (5, 1), ("second",)),
                        ("linear", (256, 4096, 16384), (5, 1), ("second",)),
                        ("sine", (25, 256, 1024, 4096, 16384), (5, 1), ("first",))],
                       min_reps=5, min_time_s=0.2, max_time_s=2.0, warmup_ms=10, rep_ms=40,
                       peak_n=8192 if gpu else 2048, loop_max_T=32)
    raise ValueError(f"profile must be one of {PROFILES}, got {name!r}")


PROFILES = ("smoke", "quick", "full", "gpu")


# ----------------------------------------------------------------------------- data and models


def make_data(w: Workload, T: int, device, seed: int = 0):
    """``(xs, ys, xq, yq)`` for ``T`` tasks of workload ``w`` (float32, on ``device``)."""
    g = torch.Generator().manual_seed(seed)
    D, O = w.dims[0], w.dims[-1]
    if w.name == "sine":
        return mk.tasks.Sinusoid(shots=w.n_support, queries=w.n_query).sample(T, g, device=device)
    if w.loss == "mse":
        return mk.tasks.LinearRegression(D, O, shots=w.n_support, queries=w.n_query).sample(T, g, device=device)
    # few-shot classification on random features: labels 0..O-1 in turn, O ways
    out = []
    for n in (w.n_support, w.n_query):
        out += [torch.randn(T, n, D, generator=g), (torch.arange(n) % O).expand(T, n).contiguous()]
    return tuple(t.to(device) for t in out)


def make_model(w: Workload, device, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mk.MLP(w.dims[0], list(w.dims[1:-1]), w.dims[-1], activation=w.activation).to(device)


def task_loss(pred: Tensor, y: Tensor, loss: str) -> Tensor:
    """Mean loss over all leading dims (for equal point counts: the mean of the task means)."""
    if loss == "mse":
        return F.mse_loss(pred, y)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1))


_ACT = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda z: z}


def mlp_apply(params: Sequence[Tensor], x: Tensor, activation: str) -> Tensor:
    for i in range(0, len(params), 2):
        x = F.linear(x, params[i], params[i + 1])
        if i + 2 < len(params):
            x = _ACT[activation](x)
    return x


# ----------------------------------------------------------------------------- providers
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


# ----------------------------------------------------------------------------- timing


def _sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def _quantiles(samples_ms: List[float]) -> Tuple[float, float, float]:
    t = torch.tensor(samples_ms, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return tuple(float(v) for v in q)


def time_fn(fn: Callable, device: str, prof: Profile) -> Tuple[float, float, float, Optional[int], str]:
    """``(median_ms, p20_ms, p80_ms, samples, timer)`` of ``fn`` per call (after one untimed call)."""
    if device == "cuda":
        try:
            from triton.testing import do_bench

            q = do_bench(fn, warmup=prof.warmup_ms, rep=prof.rep_ms, quantiles=[0.5, 0.2, 0.8])
            q = [float(v) for v in (q if isinstance(q, (list, tuple)) else [q] * 3)]
            return q[0], q[1], q[2], None, "do_bench"  # do_bench does not say how many runs
        except Exception as e:  # no Triton, or another do_bench API: time with CUDA events
            return (*_time_events(fn, prof), f"cuda-events ({_first_line(e)[:80]})")
    end = time.perf_counter() + prof.warmup_s  # the caller has made one call already
    while time.perf_counter() < end:
        fn()
    samples: List[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        samples.append((t1 - t0) * 1e3)
        spent = t1 - start
        if (len(samples) >= prof.min_reps and spent >= prof.min_time_s) or (spent >= prof.max_time_s
                                                                           and len(samples) >= 3):
            break
    return (*_quantiles(samples), len(samples), "perf_counter")


def _time_events(fn: Callable, prof: Profile):
    """CUDA events around each call, for about ``prof.rep_ms`` after a short warmup."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    est_ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
    for _ in range(max(1, int(prof.warmup_ms / est_ms))):
        fn()
    n = min(1000, max(5, int(prof.rep_ms / est_ms)))
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return (*_quantiles([a.elapsed_time(b) for a, b in ev]), n)


def measure_peak(device: str, n: int) -> float:
    """The device's fp32 matmul rate in GFLOP/s: best of a few ``n x n`` ``torch.mm`` (TF32 off)."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    torch.mm(a, b)
    _sync(device)
    best = math.inf
    for _ in range(5 if device == "cpu" else 20):
        if device == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            torch.mm(a, b)
            e.record()
            torch.cuda.synchronize()
            dt = s.elapsed_time(e) / 1e3
        else:
            t0 = time.perf_counter()
            torch.mm(a, b)
            dt = time.perf_counter() - t0
        best = min(best, dt)
    return 2 * n ** 3 / best / 1e9


# ----------------------------------------------------------------------------- running one measurement


def _callable(quantity: str, loss_fn: Callable, params: List[Tensor], graphed: bool, data):
    """The timed function: ``op`` returns the meta-gradient; ``step`` does a whole Adam meta-step."""
    if quantity == "op":
        def fn():
            return torch.autograd.grad(loss_fn(), params)
    else:
        opt = torch.optim.Adam(params, lr=META_LR, **ADAM_KW, capturable=graphed)

        def fn():
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()
    return _cuda_graph(fn, data) if graphed else fn


def _cuda_graph(fn: Callable, static: Sequence[Tensor]) -> Callable:
    """Capture ``fn`` in a CUDA graph (after a side-stream warmup, as torch documents
    for whole-network capture); each call copies a batch into the static inputs and
    replays. Returns what ``fn`` returned during capture (static outputs)."""
    fresh = [t.clone() for t in static]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    graph, out = torch.cuda.CUDAGraph(), []
    with torch.cuda.graph(graph):
        out.append(fn())

    def replay():
        for dst, src in zip(static, fresh):
            dst.copy_(src, non_blocking=True)
        graph.replay()
        return out[0]
    replay.graph = graph  # keep the graph (and its memory pool) alive with the callable
    return replay


def _rel_err(got, ref) -> float:
    num = math.sqrt(sum(float((g.double() - r.double()).pow(2).sum()) for g, r in zip(got, ref)))
    den = math.sqrt(sum(float(r.double().pow(2).sum()) for r in ref))
    return num / max(den, 1e-30)


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"


def prepare(cfg: Config, prov: Provider, quantity: str, base_model: nn.Module, data, prof: Profile,
            ref_grads: Dict) -> Tuple[dict, Optional[Callable]]:
    """Build one (config, provider, quantity) and make its first, untimed call.

    Returns ``(row, fn)``: ``fn`` is the timed callable, or ``None`` when the row is
    ``skipped`` or ``failed`` (the reason in ``note``). Never raises for a provider's
    failure. The first call also gives the meta-gradient for ``grad_err``.
    """
    device = prof.device
    row = dict(provider=prov.name, quantity=quantity, status="ok", note="")
    try:
        why = prov.limits(cfg, prof)
        if why:
            return dict(row, status="skipped", note="; ".join(why)), None
        model = copy.deepcopy(base_model)
        op_loss, step_loss = prov.build(cfg, model, data)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        fn = _callable(quantity, op_loss if quantity == "op" else step_loss, list(model.parameters()),
                       prov.graphed, data)
        out = fn()
        _sync(device)
        if device == "cuda":
            row["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        elif prof.cpu_memory:
            row["peak_mem_mb"] = cpu_peak_mb(fn)
        if quantity == "op":
            got = [g.detach().clone() for g in out]
            if prov.name == BASELINE:
                ref_grads[cfg] = got
            elif cfg in ref_grads:
                row["grad_err"] = _rel_err(got, ref_grads[cfg])
        return row, fn
    except Exception as e:  # a provider's failure is a result, not a crash
        _recover(device)
        return dict(row, status="failed", note=_first_line(e)), None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines); Python
    exceptions still propagate and are reported by the caller."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. an embedding host): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak_mb(fn: Callable) -> float:
    """Peak MiB that one call of ``fn`` holds through PyTorch's CPU allocator.

    Replays the allocator's alloc/free events that ``torch.profiler`` records with
    ``profile_memory=True`` in time order and returns the largest running total.
    Memory allocated before the call (model, data, optimizer state) is not counted.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2 ** 20


def _recover(device: str):
    gc.collect()
    if device == "cuda":
        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        torch.cuda.empty_cache()


def _finish(row: dict, cfg: Config, prof: Profile, med: float, p20: float, p80: float, n, timer: str) -> dict:
    s = med / 1e3
    gflops = cfg.flops / s / 1e9
    row.update(median_ms=med, p20_ms=p20, p80_ms=p80, samples=n, timer=timer, tasks_per_s=cfg.T / s,
               gflops=gflops, peak_fraction=gflops / prof.peak_gflops)
    return row


def run_one(cfg: Config, prov: Provider, quantity: str, base_model: nn.Module, data, prof: Profile,
            ref_grads: Dict) -> dict:
    """Measure one (config, provider, quantity) on its own; never raises for a provider's failure."""
    row, fn = prepare(cfg, prov, quantity, base_model, data, prof, ref_grads)
    if fn is None:
        return row
    try:
        timing = time_fn(fn, prof.device, prof)
    except Exception as e:
        return dict(row, status="failed", note=_first_line(e))
    finally:
        del fn
        _recover(prof.device)
    return _finish(row, cfg, prof, *timing)


def time_interleaved(fns: Sequence[Callable], prof: Profile) -> List[Tuple]:
    """Time several callables in rounds, each round calling every one in turn (CPU).

    On a shared machine the speed changes over seconds; timing providers one after
    the other lets a slow spell land on one of them and skew the ratio. In rounds,
    a spell slows all of them alike. Each round's order is rotated so that no
    callable always runs right after the same other one. Within a round each
    callable runs a burst of back-to-back calls lasting about ``prof.burst_ms``
    (sized from its warmup time, at least one call) and its sample is the burst's
    mean: the steady state of a training loop, whose step runs right after its own
    previous step, not after another provider has refilled the caches. Returns, per
    callable, ``(median_ms, p20_ms, p80_ms, samples, timer)``, or an exception it
    raised (that callable is dropped from later rounds).
    """
    out: List = [None] * len(fns)
    live = list(range(len(fns)))
    last_ms = [0.0] * len(fns)
    end = time.perf_counter() + prof.warmup_s
    while live and time.perf_counter() < end:
        live = _round(fns, live, None, out, [1] * len(fns), last_ms)
    bursts = [max(1, min(prof.max_burst, int(prof.burst_ms / t))) if t > 0 and prof.burst_ms > 0 else 1
              for t in last_ms]
    samples: List[List[float]] = [[] for _ in fns]
    start, r = time.perf_counter(), 0
    while live:
        live = _round(fns, live[r % len(live):] + live[:r % len(live)], samples, out, bursts, last_ms)
        r += 1
        spent = time.perf_counter() - start
        if (r >= prof.min_reps and spent >= prof.min_time_s * len(fns)) or (
                spent >= prof.max_time_s * len(fns) and r >= 3):
            break
    timer = "perf_counter, interleaved" + (" bursts" if max(bursts, default=1) > 1 else "")
    for i in live:
        out[i] = (*_quantiles(samples[i]), len(samples[i]), timer)
    return out


def _round(fns, order, samples, out, bursts, last_ms) -> List[int]:
    """Call each ``fns[i]`` for ``i`` in ``order`` ``bursts[i]`` times in a row; record the
    mean time per call (in ``samples`` when given, and in ``last_ms``); returns the
    ones that did not raise, sorted."""
    alive = []
    for i in order:
        try:
            t0 = time.perf_counter()
            for _ in range(bursts[i]):
                fns[i]()
            dt = (time.perf_counter() - t0) / bursts[i]
        except Exception as e:
            out[i] = e
            continue
        last_ms[i] = dt * 1e3
        if samples is not None:
            samples[i].append(dt * 1e3)
        alive.append(i)
    return sorted(alive)


def measure_config(cfg: Config, provs: Sequence[Provider], quantity: str, base_model: nn.Module, data,
                   prof: Profile, ref_grads: Dict) -> List[dict]:
    """Rows for every provider on one (config, quantity).

    On the CPU the providers are timed interleaved (:func:`time_interleaved`); on a
    GPU one after the other (each with ``do_bench``, and its own peak memory).
    """
    if prof.device != "cpu":
        return [run_one(cfg, pr, quantity, base_model, data, prof, ref_grads) for pr in provs]
    prepared = [prepare(cfg, pr, quantity, base_model, data, prof, ref_grads) for pr in provs]
    live = [i for i, (_, fn) in enumerate(prepared) if fn is not None]
    timings = time_interleaved([prepared[i][1] for i in live], prof)
    rows = [row for row, _ in prepared]
    for i, t in zip(live, timings):
        if isinstance(t, BaseException):
            rows[i] = dict(rows[i], status="failed", note=_first_line(t))
        else:
            _finish(rows[i], cfg, prof, *t)
    del prepared, timings
    _recover(prof.device)
    return rows


# ----------------------------------------------------------------------------- environment, output


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def git_rev() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        r = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10)
        return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def env_info(device: str) -> dict:
    dev = torch.cuda.get_device_name() if device == "cuda" else cpu_name()
    return dict(device=dev, device_type=device, threads=torch.get_num_threads(), torch=torch.__version__,
                triton=_version("triton"), python=platform.python_version(), metakern=mk.__version__,
                git_rev=git_rev())


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class CsvSink:
    """Appends rows (flushed one by one, so a killed run keeps what it measured)."""

    def __init__(self, path: Optional[str]):
        self.path = path
        if not path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path) and os.path.getsize(path) > 0:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            if header != COLUMNS:
                raise SystemExit(f"{path} has other columns than this version writes; pass another --csv path")
        else:
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)

    def write(self, row: dict):
        if self.path:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, COLUMNS).writerow({k: _cell(row.get(k)) for k in COLUMNS})


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _num(v, fmt="{:.3g}"):
    return "" if v is None or v == "" else fmt.format(float(v))


_TABLE = [("workload", 8), ("T", 6), ("K", 2), ("order", 6), ("provider", 11), ("qty", 4), ("median_ms", 10),
          ("p20-p80_ms", 17), ("tasks/s", 9), ("GFLOP/s", 8), ("%peak", 6), ("mem_MB", 7), ("x_vmap", 7),
          ("grad_err", 8)]


def table_header() -> str:
    return "  ".join(f"{n:>{w}}" if i > 5 else f"{n:<{w}}" for i, (n, w) in enumerate(_TABLE))


def table_line(row: dict) -> str:
    head = [row["workload"], str(row["T"]), str(row["K"]), row["order"], row["provider"], row["quantity"]]
    if row["status"] != "ok":
        return "  ".join(f"{c:<{w}}" for c, (_, w) in zip(head, _TABLE)) + f"  {row['status']}: {row['note']}"
    g4 = "{:.4g}"
    cells = head + [_num(row["median_ms"], g4), f"{_num(row['p20_ms'], g4)}-{_num(row['p80_ms'], g4)}",
                    _num(row["tasks_per_s"], g4), _num(row["gflops"]), _num(100 * row["peak_fraction"], "{:.2g}"),
                    _num(row.get("peak_mem_mb"), g4), _num(row.get("speedup_vs_vmap")),
                    _num(row.get("grad_err"), "{:.0e}")]
    return "  ".join(f"{c:>{w}}" if i > 5 else f"{c:<{w}}" for i, (c, (_, w)) in enumerate(zip(cells, _TABLE)))


# ----------------------------------------------------------------------------- plotting


def plot_rows(rows: List[dict], path: str, workload: str = "sine", title: str = "") -> str:
    """Log-log median time per meta-iteration against T, one line per provider
    (``step`` solid, ``op`` dashed, p20-p80 shaded), one panel per (K, order).
    ``rows`` are CSV dicts (strings are fine). Needs matplotlib; returns ``path``."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    ok = [r for r in rows if r.get("status") == "ok" and r.get("median_ms") not in (None, "")]
    if not any(r["workload"] == workload for r in ok):
        have = sorted({r["workload"] for r in ok})
        if not have:
            raise ValueError("no successful rows to plot")
        workload = max(have, key=lambda w: len({r["T"] for r in ok if r["workload"] == w}))
    ok = [r for r in ok if r["workload"] == workload]
    panels = sorted({(int(r["K"]), r["order"]) for r in ok}, key=lambda p: (p[1] != "second", p[0]))
    provs = sorted({r["provider"] for r in ok}, key=lambda p: (p != BASELINE, p))
    colors = {p: f"C{i % 10}" for i, p in enumerate(provs)}
    fig = Figure(figsize=(5.2 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (K, order) in zip(axes[0], panels):
        for p in provs:
            for q, style in (("step", "-o"), ("op", "--x")):
                pts = sorted((int(r["T"]), float(r["median_ms"]), float(r["p20_ms"]), float(r["p80_ms"]))
                             for r in ok if r["provider"] == p and r["quantity"] == q and int(r["K"]) == K
                             and r["order"] == order)
                if not pts:
                    continue
                T, med, lo, hi = zip(*pts)
                ax.plot(T, med, style, color=colors[p], label=f"{p} {q}", markersize=4)
                ax.fill_between(T, lo, hi, color=colors[p], alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tasks per batch T")
        ax.set_ylabel("ms per meta-iteration (median)")
        ax.set_title(f"{workload} K={K} {order} order")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)
    return path


def run_title(info: dict, run_label: Optional[str] = None) -> str:
    """Plot title of a run from its environment (``env_info`` + ``run_id``) or any CSV row of it."""
    return (f"{info['device']}  torch {info['torch']}  metakern {info['metakern']} ({info['git_rev']})  "
            f"{info['run_id'] if run_label is None else run_label}")


def have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


NO_MPL = "--plot needs matplotlib, which is not installed: pip install matplotlib (or pip install 'metakern[bench]')"


# ----------------------------------------------------------------------------- main


def _ints(s: str) -> Tuple[int, ...]:
    try:
        v = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metakern bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="workloads: " + "; ".join(f"{w.name} ({w.about})" for w in WORKLOADS.values()))
    p.add_argument("--profile", choices=PROFILES, default=None,
                   help="smoke (CI, seconds), quick (< 2 min on 2 CPU cores; the default), full, gpu (T up to 16384)")
    p.add_argument("--quick", action="store_true", help="same as --profile quick")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--providers", help="comma list of " + ", ".join(pr.name for pr in providers())
                   + "; 'mk' = every metakern backend (default: all)")
    p.add_argument("--backend", help="comma list of metakern backends to run (torch,cpp,triton,cuda; default: all)")
    p.add_argument("--workloads", help="comma list of " + ",".join(WORKLOADS) + " (default: the profile's)")
    p.add_argument("--T", type=_ints, help="comma list of task counts, replacing the profile's")
    p.add_argument("--K", type=_ints, help="comma list of inner step counts, replacing the profile's")
    p.add_argument("--order", choices=("first", "second", "both"), help="replace the profile's orders")
    p.add_argument("--quantities", default="op,step", help="comma list of op,step (default: both)")
    p.add_argument("--loop-max-T", type=int, help="largest T for the per-task loop providers (profile default)")
    p.add_argument("--csv", default=DEFAULT_CSV, help=f"CSV to append rows to (default {DEFAULT_CSV})")
    p.add_argument("--no-csv", action="store_true", help="write no CSV")
    p.add_argument("--plot", nargs="?", const=DEFAULT_PNG, metavar="PNG",
                   help=f"write a log-log plot of time against T (default path {DEFAULT_PNG}); needs matplotlib")
    p.add_argument("--time-budget", type=float, default=0.0, metavar="S",
                   help="start no new config S seconds after the start (0: no limit)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU; default: torch's, fewer when the "
                   "cores are already busy, as the run prints)")
    p.add_argument("--list", action="store_true", help="list the profile's configs and the providers, then exit")
    return p


def plan(args) -> Tuple[str, Profile]:
    """The profile named by the flags, with --workloads/--T/--K/--order/--loop-max-T applied."""
    name = "quick" if args.quick else (args.profile or "quick")
    if args.quick and args.profile not in (None, "quick"):
        raise SystemExit(f"--quick and --profile {args.profile} disagree")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this torch")
    prof = make_profile(name, device)
    prof.device = device
    wanted = _split(args.workloads, set(WORKLOADS), "--workloads")
    if wanted:
        have = {g[0] for g in prof.grids}
        extra = [(w, *prof.grids[0][1:]) for w in sorted(wanted - have)]  # the profile's first grid's T, K, order
        prof.grids = [g for g in prof.grids if g[0] in wanted] + extra
    orders = {"first": ("first",), "second": ("second",), "both": _BOTH}.get(args.order)
    prof.grids = [(w, args.T or Ts, args.K or Ks, orders or o) for w, Ts, Ks, o in prof.grids]
    prof.configs = list(dict.fromkeys(prof.expand().configs))  # overrides can repeat a config
    prof.loop_max_T = args.loop_max_T or prof.loop_max_T
    return name, prof


def run(name: str, prof: Profile, provs: List[Provider], quantities: Sequence[str], sink: CsvSink,
        deadline: float = math.inf) -> Tuple[List[dict], dict]:
    """Measure every config of ``prof`` (none started after ``time.perf_counter()`` passes
    ``deadline``); prints the table, writes rows; returns ``(rows, env)``."""
    device, env = prof.device, env_info(prof.device)
    prof.peak_gflops = measure_peak(device, prof.peak_n)
    run_id = _utc_now()
    print(f"# metakern bench  profile={name}  device={env['device']} ({device}, threads={env['threads']})  "
          f"torch {env['torch']}  triton {env['triton']}  python {env['python']}  metakern {env['metakern']} "
          f"({env['git_rev']})  run_id {run_id}")
    print(f"# measured fp32 matmul peak: {prof.peak_gflops:.1f} GFLOP/s ({prof.peak_n}^3 torch.mm, TF32 off)")
    print(f"# providers: {', '.join(p.name for p in provs)};  x_vmap = {BASELINE}'s median over the provider's;"
          f"  grad_err = meta-gradient relative to {BASELINE}'s")
    print(table_header(), flush=True)
    rows, t_start = [], time.perf_counter()
    for i, cfg in enumerate(prof.configs):
        if time.perf_counter() > deadline:
            print(f"# time budget reached: {len(prof.configs) - i} of {len(prof.configs)} configs not run")
            break
        w = cfg.workload
        data, base_model = make_data(w, cfg.T, device), make_model(w, device)
        ref_grads = {}
        for quantity in quantities:
            q_rows = measure_config(cfg, provs, quantity, base_model, data, prof, ref_grads)
            base = [r["median_ms"] for r in q_rows if r["provider"] == BASELINE and r["status"] == "ok"]
            for row in q_rows:
                if row["status"] == "ok" and base:
                    row["speedup_vs_vmap"] = base[0] / row["median_ms"]
                row.update(env, date=_utc_now(), run_id=run_id, profile=name, workload=w.name,
                           dims="-".join(map(str, w.dims)), loss=w.loss, T=cfg.T, K=cfg.K, order=cfg.order,
                           n_support=w.n_support, n_query=w.n_query, flops=cfg.flops, peak_gflops=prof.peak_gflops)
                rows.append(row)
                sink.write(row)
                print(table_line(row), flush=True)
        del data, base_model
    print(f"# {len(rows)} rows in {time.perf_counter() - t_start:.1f} s" +
          (f", appended to {sink.path}" if sink.path else ""))
    return rows, dict(env, run_id=run_id)


def auto_threads(device: str) -> Optional[int]:
    """Fewer torch threads than the default when other processes already keep the cores busy.

    On a shared CPU, an OpenMP thread waiting for a descheduled sibling makes every op
    pay a scheduler time slice: on 2 busy cores a sine step at T=25 took ~0.5 s with 2
    threads and ~8 ms with 1. Returns the number of idle cores (at least 1) when that is
    below torch's thread count, else None."""
    if device != "cpu" or not hasattr(os, "getloadavg"):
        return None
    idle = max(1, int((os.cpu_count() or 1) - os.getloadavg()[0] + 0.5))
    return idle if idle < torch.get_num_threads() else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``metakern bench``: returns 0, or 2 when ``--plot`` could not be written."""
    t0 = time.perf_counter()
    args = build_parser().parse_args(argv)
    name, prof = plan(args)
    quantities = [q for q in QUANTITIES if q in _split(args.quantities, set(QUANTITIES), "--quantities")]
    provs = []
    for pr in select_providers(args.providers, args.backend):
        why = pr.unavailable(prof.device)
        if why:
            print(f"# provider {pr.name}: not run: {'; '.join(why)}")
        else:
            provs.append(pr)
    if args.list:
        for pr in provs:
            print(f"# provider {pr.name}: {pr.about}")
        for c in prof.configs:
            print(f"# config {c}: {c.flops / 1e6:.4g} MFLOP per meta-iteration")
        return 0
    if not provs:
        raise SystemExit("no provider can run here (see the reasons above)")
    if args.plot is not None and not have_matplotlib():
        print(f"warning: {NO_MPL}; the benchmark runs, the plot will not be written", file=sys.stderr)
    sink = CsvSink(None if args.no_csv else args.csv)

    old_threads, old_tf32 = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32
    threads = args.threads or auto_threads(prof.device)
    if threads and not args.threads:
        print(f"# load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: using {threads} torch "
              f"thread(s) instead of {old_threads} (--threads N to choose)")
    try:
        if threads:
            torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32 = False  # IEEE fp32 everywhere, the peak included
        deadline = t0 + args.time_budget if args.time_budget > 0 else math.inf
        rows, env = run(name, prof, provs, quantities, sink, deadline)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
        torch.set_num_threads(old_threads)
    if args.plot is not None:
        if not have_matplotlib():
            print(f"error: {NO_MPL}", file=sys.stderr)
            return 2
        try:
            print(f"# plot: {plot_rows(rows, args.plot, title=run_title(env))}")
        except ValueError as e:
            print(f"error: no plot: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
