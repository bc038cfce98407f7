"""Scaling across processes: tasks per second of a meta-iteration on 1, 2, ... processes.

A meta-iteration here is what :func:`metakern.train.meta_step` does: ``zero_grad``, the
meta-loss of the global batch (each process its shard, through
``DistributedDataParallel(MetaObjective(learner))`` from :mod:`metakern.distributed`),
``backward`` (with DDP's all-reduce of the meta-gradient) and an Adam step (fused).
One process runs the plain ``learner.meta_loss``, with no process group: what a user
would run without this module. The global batch is fixed (``workloads.make_data``), so
drawing it is not timed; in :func:`metakern.train.meta_train` every rank draws the
whole global batch, which does not shrink with more processes.

The all-reduce time per step (``allreduce_ms``) is measured inside DDP by a
communication hook around its default all-reduce: from the launch of each gradient
bucket to the completion of its future, summed over the step's buckets, on every
rank. A rank that finishes its backward first waits there for the others, so the
row takes, per step, the smallest rank's time (the rank that arrived last waited for
nobody: the exchange itself) and reports the spread over ranks as
``allreduce_wait_ms`` (load imbalance). DDP also broadcasts the learner's buffers (a
fixed inner rate is one) at each forward; that time is in the step only.
``cpu_ms`` is rank 0's process CPU time per step (all its threads, gloo's included):
on a machine whose cores other jobs share, the wall time of several processes says
little, while the CPU time of one still shows how the work divides. ``load_avg`` is
the machine's 1-minute load average before each measurement.

Every configuration runs in fresh processes (started with ``torch.multiprocessing``,
spawn), each with ``--threads`` torch threads, in ``--rounds`` rounds that alternate
the process counts, so a slow spell of a shared machine hits all of them::

    python -m metakern.benchmark.scaling                          # sine and mlp-ce, T=1024 K=5, 1 and 2 processes
    python -m metakern.benchmark.scaling --nproc 1,2,4 --workloads sine --T 4096 --csv out.csv

Rows go to ``--csv`` (:data:`COLUMNS`), the table to stdout.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import socket
import sys
import tempfile
import time
from typing import List, Optional

import torch

from .results import cpu_name, git_rev
from .workloads import WORKLOADS, make_data, make_model, meta_flops

COLUMNS = ["date", "run_id", "machine", "device", "torch", "metakern", "git_rev", "workload", "dims", "loss", "T",
           "K", "order", "backend", "dist_backend", "processes", "threads_per_process", "round", "steps",
           "median_ms", "p20_ms", "p80_ms", "cpu_ms", "tasks_per_s", "gflops", "allreduce_ms", "allreduce_wait_ms",
           "allreduce_kb", "load_avg", "note"]

DEFAULT_CSV = os.path.join("bench", "results", "distributed.csv")


def _quantiles(ms: List[float]):
    q = torch.quantile(torch.tensor(ms, dtype=torch.float64), torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return tuple(float(v) for v in q)


def _worker(rank: int, size: int, port: int, cfg: dict, out: str):
    """One process of a measurement: build, warm up, time ``cfg['steps']`` meta-iterations
    (at least ``cfg['min_s']`` seconds); rank 0 writes the samples to ``out``."""
    import metakern as mk
    from metakern import distributed
    from metakern.train import make_optimizer

    torch.set_num_threads(cfg["threads"])
    w = WORKLOADS[cfg["workload"]]
    device = cfg["device"]
    world = distributed.World(device=torch.device(device))
    if size > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        world = distributed.init(device=device, timeout_s=cfg["timeout_s"])
    learner = mk.MAML(make_model(w, device), lr=w.lr, steps=cfg["K"], first_order=cfg["first_order"], loss=w.loss,
                      backend=cfg["backend"])
    batch = make_data(w, cfg["T"], device)
    comm: List[float] = []
    if world.distributed:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        objective = world.wrap(learner)

        def timed_allreduce(group, bucket):
            t0 = time.perf_counter()

            def done(fut):
                comm.append(time.perf_counter() - t0)
                return fut.value()

            return default_hooks.allreduce_hook(group, bucket).then(done)

        objective.register_comm_hook(None, timed_allreduce)
    else:
        objective = learner.meta_loss
    opt = make_optimizer(learner)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        opt.zero_grad(set_to_none=True)
        objective(*batch).backward()
        opt.step()

    for _ in range(cfg["warmup"]):
        step()
    sync()
    if world.distributed:
        world.mean(0.0)  # start the timed steps together
    samples, cpu, per_step_comm = [], [], []
    end = time.perf_counter() + cfg["min_s"]
    while len(samples) < cfg["steps"] or time.perf_counter() < end:
        comm.clear()
        c0, t0 = time.process_time(), time.perf_counter()
        step()
        sync()
        samples.append(1e3 * (time.perf_counter() - t0))
        cpu.append(1e3 * (time.process_time() - c0))
        per_step_comm.append(1e3 * sum(comm))
        if world.distributed:  # every rank runs as many steps as rank 0
            if world.broadcast(len(samples) >= cfg["steps"] and time.perf_counter() >= end):
                break
    comm_all = world.gather(per_step_comm)  # per step, the last rank to arrive waits for nobody
    if world.is_main:
        per_step_comm = [min(c) for c in zip(*comm_all)]
        wait = [max(c) - min(c) for c in zip(*comm_all)]
        kb = sum(p.numel() * p.element_size() for p in learner.parameters()) / 1e3
        torch.save({"samples": samples, "cpu": cpu, "comm": per_step_comm, "wait": wait,
                    "kb": kb if world.distributed else 0.0,
                    "dist_backend": world.backend or ""}, out)
    world.close()


def _load() -> str:
    """The 1-minute load average before a measurement (other jobs on a shared machine)."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(cfg: dict, processes: int, deadline_s: float) -> dict:
    """Run one measurement on ``processes`` fresh processes; the samples of rank 0."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        ctx = mp.start_processes(_worker, args=(processes, _free_port(), cfg, out), nprocs=processes, join=False,
                                 start_method="spawn")
        end = time.monotonic() + deadline_s
        try:
            for p in ctx.processes:
                p.join(max(0.0, end - time.monotonic()))
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                    p.join(10)
        codes = [p.exitcode for p in ctx.processes]
        if codes != [0] * processes or not os.path.exists(out):
            raise RuntimeError(f"{processes} process(es) ended with exit codes {codes} (deadline {deadline_s:g} s)")
        return torch.load(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m metakern.benchmark.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="sine,mlp-ce", help="comma list of " + ",".join(WORKLOADS)
                   + " (default: %(default)s)")
    p.add_argument("--T", type=int, default=1024, help="tasks of the global batch (default: %(default)s)")
    p.add_argument("--K", type=int, default=5, help="inner steps (default: %(default)s)")
    p.add_argument("--order", choices=("first", "second"), default="second", help="(default: %(default)s)")
    p.add_argument("--nproc", default="1,2", help="comma list of process counts (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default: %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: one GPU per process, NCCL (default: %(default)s)")
    p.add_argument("--backend", default="auto", help="metakern backend (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over the process counts (default: %(default)s)")
    p.add_argument("--steps", type=int, default=5, help="timed meta-iterations at least (default: %(default)s)")
    p.add_argument("--min-time", type=float, default=2.0, metavar="S",
                   help="and at least this many seconds of them (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed meta-iterations first (default: %(default)s)")
    p.add_argument("--machine", default=None, help="machine label of the rows (default: <device>-<cores>core)")
    p.add_argument("--csv", default=DEFAULT_CSV, help="CSV to append rows to (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=120.0, help="process-group timeout, s (default: %(default)s)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    import metakern as mk

    args = build_parser().parse_args(argv)
    nprocs = [int(v) for v in args.nproc.split(",")]
    names = args.workloads.split(",")
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or min(nprocs) < 1 or args.T < max(nprocs) or args.rounds < 1:
        raise SystemExit(f"bad arguments: workloads {unknown or 'ok'}, --nproc {nprocs} (>= 1, <= --T {args.T}), "
                         f"--rounds {args.rounds} (>= 1)")
    if args.device == "cuda" and torch.cuda.device_count() < max(nprocs):
        raise SystemExit(f"--nproc {max(nprocs)} needs as many GPUs; this machine has {torch.cuda.device_count()}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = args.machine or (f"cpu-{cores}core" if args.device == "cpu" else f"gpu-{torch.cuda.device_count()}")
    now = _dt.datetime.now(_dt.timezone.utc)
    common = dict(date=now.date().isoformat(), run_id=now.isoformat(timespec="seconds"), machine=machine,
                  device=cpu_name() if args.device == "cpu" else torch.cuda.get_device_name(), torch=torch.__version__,
                  metakern=mk.__version__, git_rev=git_rev(), K=args.K, T=args.T, order=args.order,
                  backend=args.backend, threads_per_process=args.threads)
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        new = not os.path.exists(args.csv) or os.path.getsize(args.csv) == 0
        if new:
            with open(args.csv, "w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)
    print(f"{'workload':8s} {'T':>5s} {'K':>2s} {'procs':>5s} {'round':>5s} {'median_ms':>10s} {'p20-p80_ms':>15s} "
          f"{'cpu_ms':>8s} {'tasks/s':>9s} {'allreduce_ms':>12s} {'wait_ms':>8s}")
    for name in names:
        w = WORKLOADS[name]
        flops = meta_flops(w.dims, args.T, args.K, args.order == "first", w.n_support, w.n_query)
        cfg = dict(workload=name, T=args.T, K=args.K, first_order=args.order == "first", threads=args.threads,
                   device=args.device, backend=args.backend, steps=args.steps, min_s=args.min_time,
                   warmup=args.warmup, timeout_s=args.timeout)
        for rnd in range(args.rounds):
            order = nprocs if rnd % 2 == 0 else nprocs[::-1]
            for n in order:
                row = dict(common, load_avg=_load(), workload=name, dims="-".join(map(str, w.dims)), loss=w.loss,
                           processes=n,
                           round=rnd)
                try:
                    res = measure(cfg, n, deadline_s=600)
                    med, p20, p80 = _quantiles(res["samples"])
                    comm = res["comm"]
                    row.update(dist_backend=res["dist_backend"], steps=len(res["samples"]), median_ms=med, p20_ms=p20,
                               p80_ms=p80, cpu_ms=_quantiles(res["cpu"])[0], tasks_per_s=1e3 * args.T / med,
                               gflops=flops / med / 1e6,
                               allreduce_ms=_quantiles(comm)[0] if n > 1 else 0.0,
                               allreduce_wait_ms=_quantiles(res["wait"])[0] if n > 1 else 0.0,
                               allreduce_kb=res["kb"], note="")
                    print(f"{name:8s} {args.T:5d} {args.K:2d} {n:5d} {rnd:5d} {med:10.4g} {p20:7.4g}-{p80:<7.4g} "
                          f"{row['cpu_ms']:8.4g} {row['tasks_per_s']:9.4g} {row['allreduce_ms']:12.3g} "
                          f"{row['allreduce_wait_ms']:8.3g}", flush=True)
                except RuntimeError as e:
                    row.update(note=f"failed: {e}")
                    print(f"{name:8s} {args.T:5d} {args.K:2d} {n:5d} {rnd:5d} failed: {e}", flush=True)
                if args.csv:
                    with open(args.csv, "a", newline="") as f:
                        csv.DictWriter(f, COLUMNS).writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                                                             for k, v in row.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
