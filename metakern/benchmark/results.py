"""Results: the run's environment, the CSV and the table printed to stdout.

Results stream to stdout as a table (:func:`table_header`, :func:`table_line`) and are
appended, one row at a time, to a CSV (:class:`CsvSink`, :data:`COLUMNS`; by default
``~/metakern-bench/bench.csv``, see ``metakern bench --help``). Every row carries its run's environment
(:func:`env_info`).
"""
from __future__ import annotations

import csv
import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
from typing import Optional

try:
    import fcntl  # POSIX file locks
except ImportError:  # Windows: no lock
    fcntl = None

import torch

import metakern as mk

COLUMNS = [
    "date", "run_id", "device", "device_type", "threads", "torch", "triton", "python", "metakern", "git_rev",
    "profile", "workload", "dims", "loss", "T", "K", "order", "n_support", "n_query", "provider", "quantity",
    "status", "median_ms", "p20_ms", "p80_ms", "samples", "timer", "tasks_per_s", "flops", "gflops",
    "peak_gflops", "peak_fraction", "peak_mem_mb", "speedup_vs_vmap", "grad_err", "note", "sgemm_1t_gflops",
]
# Columns added after the first CSVs were written; a CSV without them is upgraded in
# place when a run appends to it (:class:`CsvSink`), its old rows left empty there.
# ``sgemm_1t_gflops``: the CPU's fp32 torch.mm rate with one thread, measured in the
# same run (empty on CUDA).
ADDED_COLUMNS = ("sgemm_1t_gflops",)


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
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout
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
    """Appends rows (flushed one by one, so a killed run keeps what it measured).

    A CSV written by an older version, whose header lacks only some of
    :data:`ADDED_COLUMNS`, is first rewritten with the current header (its rows
    unchanged, the new cells empty); a CSV with any other header is refused."""

    def __init__(self, path: Optional[str]):
        self.path = path
        if not path:
            return
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if os.path.exists(path) and os.path.getsize(path) > 0:
                with open(path, newline="") as f:
                    header = next(csv.reader(f), [])
                if header != COLUMNS:
                    _upgrade(path, header)
            else:
                with open(path, "w", newline="") as f:
                    csv.writer(f).writerow(COLUMNS)
        except OSError as e:
            raise SystemExit(f"cannot write the results to {path} ({e.strerror or e}); "
                             f"pass --out DIR, --csv PATH or --no-csv") from None

    def write(self, row: dict):
        if self.path:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, COLUMNS).writerow({k: _cell(row.get(k)) for k in COLUMNS})


def _upgrade(path: str, header: list):
    """Rewrite an older CSV with :data:`COLUMNS` (atomically), or refuse a foreign one."""
    missing = [c for c in COLUMNS if c not in header]
    older = len(set(header)) == len(header) and set(header) <= set(COLUMNS) and set(missing) <= set(ADDED_COLUMNS)
    if not older:
        raise SystemExit(f"{path} has other columns than this version writes; pass another --csv path")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)
    os.replace(tmp, path)
    print(f"# {path}: added the column(s) {', '.join(missing)} (empty in its {len(rows)} earlier rows)")


def append_rows(path: str, rows: list):
    """Append ``rows`` (dicts with the same keys) to the CSV ``path``, with a header when
    the file is empty; the folder is made if needed. Under an exclusive lock (POSIX), so
    that several runs can append to one file. For the scripts in ``bench/`` whose rows
    are their own (not :data:`COLUMNS`)."""
    if not rows:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", newline="") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if f.seek(0, os.SEEK_END) == 0:
                w.writeheader()
            w.writerows(rows)
            f.flush()
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _num(v, fmt="{:.3g}"):
    return "" if v is None or v == "" else fmt.format(float(v))


_TABLE = [("workload", 12), ("T", 6), ("K", 2), ("order", 6), ("provider", 11), ("qty", 4), ("median_ms", 10),
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
