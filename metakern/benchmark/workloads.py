"""Workloads, configs and profiles: what the benchmark measures, with the data and models for it.

Every *workload* is a fixed model and task shape (:data:`WORKLOADS`); a *config* adds
the number of tasks ``T``, inner steps ``K`` and the order (first / second). A *profile*
(:func:`make_profile`, one of :data:`PROFILES`) is a grid of configs and the timers'
settings. :func:`meta_flops` counts a config's FLOPs per meta-iteration.
:data:`BASELINE` names the provider the others are compared with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import metakern as mk

BASELINE = "vmap"  # the provider of the speedup_vs_vmap and grad_err columns


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
    # The MAML paper's non-convolutional Omniglot network (without its batch norm) at
    # the paper's 5-way 1-shot sizes and inner rate; the inputs are random 28x28 "images".
    Workload("omniglot-mlp", (784, 256, 128, 64, 64, 5), "relu", "cross_entropy", 5, 75, 0.4,
             "MAML's Omniglot MLP 784-256-128-64-64-5 ReLU, 5-way 1-shot, 15 queries per class, random inputs"),
    # `metakern train --task wordnet`'s MLP on MiniLM sentence features (384-d), 5-way
    # 1-shot at the 5-way defaults' inner rate; the inputs are random 384-d vectors.
    Workload("wordnet-mlp", (384, 256, 5), "relu", "cross_entropy", 5, 75, 0.4,
             "MLP 384-256-5 ReLU on MiniLM-sized text features, 5-way 1-shot, 15 queries per class, random inputs"),
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
    peak_gflops: float = 0.0   # measured at the start of the run, with the run's threads
    sgemm_1t_gflops: float = 0.0  # CPU: the same with one thread (0 on CUDA: not measured)
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
                        ("head", (4,), (1,), ("second",)), ("mlp-ce", (2,), (1,), ("second",)),
                        ("omniglot-mlp", (2,), (1,), ("second",)), ("wordnet-mlp", (2,), (1,), ("second",))],
                       warmup_s=0.0, min_reps=3, min_time_s=0.0, max_time_s=0.5, burst_ms=0.0, warmup_ms=2, rep_ms=5,
                       peak_n=256, loop_max_T=8)
    if name == "quick":  # < 2 minutes on a 2-core CPU
        return Profile([("sine", (25,), (1,), ("second",)), ("sine", (1024,), (5,), ("second",)),
                        ("head", (256,), (5,), ("second",)), ("sine", (256,), (1, 10), ("second",)),
                        ("omniglot-mlp", (32,), (1, 5), ("second",)), ("wordnet-mlp", (32,), (1, 5), ("second",))],
                       warmup_s=0.1, min_reps=5, min_time_s=0.3, max_time_s=2.0, warmup_ms=10, rep_ms=50,
                       peak_n=1024 if not gpu else 8192, loop_max_T=32)
    if name == "full":
        return Profile([("sine", (25, 100, 400, 1600, 6400), (1, 5), _BOTH),
                        ("linear", (100, 1600), (1, 5), ("second",)),
                        ("head", (100, 1600), (1, 5), ("second",)),
                        ("mlp-ce", (100, 1600), (1, 5), ("second",)),
                        ("omniglot-mlp", (32, 256), (1, 5), ("second",)),
                        ("wordnet-mlp", (32, 256), (1, 5), ("second",))],
                       peak_n=2048 if not gpu else 8192, loop_max_T=400)
    if name == "gpu":  # the one-shot GPU check: most important first, T up to 16384
        return Profile([("sine", (25, 256, 1024, 4096, 16384), (5, 1), ("second",)),
                        ("mlp-ce", (256, 4096, 16384), (5, 1), ("second",)),
                        ("head", (256, 4096, 16384), (5, 1), ("second",)),
                        ("linear", (256, 4096, 16384), (5, 1), ("second",)),
                        ("sine", (25, 256, 1024, 4096, 16384), (5, 1), ("first",)),
                        ("omniglot-mlp", (32, 1024), (5, 1), ("second",)),
                        ("wordnet-mlp", (32, 1024), (5, 1), ("second",))],
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
