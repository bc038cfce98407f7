"""Timers and meters: time per call, CUDA graphs, peak memory, the device's matmul rate.

Timing: on CPU ``time.perf_counter`` per iteration after a warmup, the providers of
one (config, quantity) *interleaved*: each round calls every provider once, until
enough rounds and time are collected, so that a slow spell of a shared machine
slows them all alike instead of one of them (:func:`time_interleaved`); on CUDA
``triton.testing.do_bench`` (L2 flushed between calls, CUDA events) with p50/p20/p80
quantiles, or CUDA events when Triton is missing (:func:`time_fn`). On a CPU whose
cores other processes already keep busy, the run uses fewer torch threads
(:func:`auto_threads`; the ``threads`` column says how many). The device's fp32 matmul
rate is measured once per run (:func:`measure_peak`), on the CPU also with one thread
(the single-thread sgemm rate).

Peak memory (``peak_mem_mb``) on CUDA is ``torch.cuda.max_memory_allocated`` over
building and one call; on CPU it is the peak of the bytes allocated through PyTorch's
CPU allocator during one call and not yet freed, from the profiler's memory events
(:func:`cpu_peak_mb`): what the call adds on top of the model and data, the graph kept
for the backward included. It does not see the C++ kernels' per-thread scratch
(``std::aligned_alloc``, ``(K + c) P`` elements per worker thread,
``csrc/cpu/task_passes.h:Scratch``).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .workloads import Profile


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


def measure_peak(device: str, n: int, threads: Optional[int] = None) -> float:
    """The device's fp32 matmul rate in GFLOP/s: best of several ``n x n`` ``torch.mm`` (TF32 off).

    On the CPU it takes the best of at least 5 calls and about 0.3 s of them, so that a
    short slow spell of a shared machine does not set the rate; ``threads`` runs them
    with that many torch threads (and restores the count), e.g. 1 for the
    single-thread sgemm rate."""
    old = torch.get_num_threads()
    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)
    try:
        a, b = (torch.randn(n, n, device=device) for _ in range(2))
        torch.mm(a, b)
        _sync(device)
        best, calls, start = math.inf, 0, time.perf_counter()
        while calls < (5 if device == "cpu" else 20) or (device == "cpu" and time.perf_counter() - start < 0.3):
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
            best, calls = min(best, dt), calls + 1
        return 2 * n ** 3 / best / 1e9
    finally:
        torch.set_num_threads(old)


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


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:300] if msg else ''}"
