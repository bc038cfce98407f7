"""The command line of ``metakern bench`` and ``python -m metakern.benchmark``.

:func:`build_parser` has the flags, :func:`plan` the profile they select, :func:`run`
measures it (the table to stdout, the rows to the CSV) and :func:`main` does it all,
``--plot`` included.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
import time
from typing import List, Optional, Sequence, Tuple

import torch

from .measure import QUANTITIES, measure_config
from .plots import NO_MPL, have_matplotlib, plot_rows, run_title
from .providers import Provider, _split, providers, select_providers
from .results import CsvSink, _utc_now, env_info, table_header, table_line
from .timing import auto_threads, measure_peak
from .workloads import _BOTH, BASELINE, PROFILES, WORKLOADS, Profile, make_data, make_model, make_profile

DESCRIPTION = "Microbenchmarks: metakern's fused backends against what a user would otherwise run."
# Where the results go unless --out says otherwise: one folder in the user's home, the
# same whichever directory the command runs in (python bench/run.py passes the
# checkout's bench/results/ instead).
DEFAULT_OUT = os.path.join("~", "metakern-bench")
CSV_NAME, PNG_NAME = "bench.csv", "bench.png"


def _ints(s: str) -> Tuple[int, ...]:
    try:
        v = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return v


def build_parser(default_out: str = DEFAULT_OUT) -> argparse.ArgumentParser:
    """The flags; ``default_out`` is the results folder when ``--out`` is not given."""
    description = DESCRIPTION + "\n\n" + textwrap.fill(
        f"Results: rows are appended to {os.path.join(default_out, CSV_NAME)} (--out DIR, --csv PATH or --no-csv "
        f"to change that); the run prints the path.", 79)
    p = argparse.ArgumentParser(prog="metakern bench", description=description,
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
    p.add_argument("--out", default=default_out, metavar="DIR",
                   help=f"folder of the results, DIR/{CSV_NAME} and DIR/{PNG_NAME}, created if missing "
                   f"(default: {default_out})")
    p.add_argument("--csv", default=None, metavar="PATH", help=f"CSV to append rows to (default: DIR/{CSV_NAME})")
    p.add_argument("--no-csv", action="store_true", help="write no CSV")
    p.add_argument("--plot", nargs="?", const="", metavar="PNG",
                   help=f"write a plot (default path: DIR/{PNG_NAME}): speedup over vmap per config and provider, "
                   "memory against K and time against T where the run has several; needs matplotlib")
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
    if device == "cpu":  # the single-thread sgemm rate: the same measurement when the run has one thread
        one = torch.get_num_threads() == 1
        prof.sgemm_1t_gflops = prof.peak_gflops if one else measure_peak(device, prof.peak_n, threads=1)
    run_id = _utc_now()
    print(f"# metakern bench  profile={name}  device={env['device']} ({device}, threads={env['threads']})  "
          f"torch {env['torch']}  triton {env['triton']}  python {env['python']}  metakern {env['metakern']} "
          f"({env['git_rev']})  run_id {run_id}")
    print(f"# measured fp32 matmul peak: {prof.peak_gflops:.1f} GFLOP/s ({prof.peak_n}^3 torch.mm, TF32 off)"
          + (f"; one thread: {prof.sgemm_1t_gflops:.1f} GFLOP/s" if prof.sgemm_1t_gflops else ""))
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
                           n_support=w.n_support, n_query=w.n_query, flops=cfg.flops, peak_gflops=prof.peak_gflops,
                           sgemm_1t_gflops=prof.sgemm_1t_gflops or None)
                rows.append(row)
                sink.write(row)
                print(table_line(row), flush=True)
        del data, base_model
    print(f"# {len(rows)} rows in {time.perf_counter() - t_start:.1f} s" +
          (f", appended to {sink.path}" if sink.path else ""))
    return rows, dict(env, run_id=run_id)


def result_paths(args) -> Tuple[Optional[str], Optional[str]]:
    """Absolute paths of the CSV (None with ``--no-csv``) and of the plot (None
    without ``--plot``): ``--csv`` / ``--plot PNG`` where given, else in ``--out``."""
    out = os.path.abspath(os.path.expanduser(args.out))
    csv_path = None if args.no_csv else os.path.abspath(os.path.expanduser(args.csv or os.path.join(out, CSV_NAME)))
    png = None if args.plot is None else os.path.abspath(os.path.expanduser(args.plot or os.path.join(out, PNG_NAME)))
    return csv_path, png


def main(argv: Optional[Sequence[str]] = None, *, default_out: str = DEFAULT_OUT) -> int:
    """``metakern bench``: returns 0, or 2 when ``--plot`` could not be written.

    ``default_out`` is the results folder when ``--out`` is not given (``bench/run.py``
    passes the checkout's ``bench/results``)."""
    t0 = time.perf_counter()
    args = build_parser(default_out).parse_args(argv)
    csv_path, png = result_paths(args)
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
    if png is not None and not have_matplotlib():
        print(f"warning: {NO_MPL}; the benchmark runs, the plot will not be written", file=sys.stderr)
    sink = CsvSink(csv_path)
    print(f"# results: appending to {csv_path}" if csv_path else "# results: no CSV (--no-csv)", flush=True)

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
    if png is not None:
        if not have_matplotlib():
            print(f"error: {NO_MPL}", file=sys.stderr)
            return 2
        try:
            print(f"# plot: {plot_rows(rows, png, title=run_title(env))}")
        except ValueError as e:
            print(f"error: no plot: {e}", file=sys.stderr)
            return 2
    return 0
