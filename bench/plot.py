#!/usr/bin/env python
"""Plot benchmark rows from a CSV written by ``metakern bench``.

    python bench/plot.py                                   # bench/results/bench.csv, latest run
    python bench/plot.py OUT/bench_gpu.csv -o OUT/bench_gpu.png --run all --device H100

Draws the speedup over torch.func vmap of every provider on every config (bars),
peak memory against K where a run measured several K, and time against T where it
measured several T (metakern.benchmark.plots). Needs matplotlib (``pip install matplotlib``).
"""
import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # works without pip install


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", nargs="?", default=os.path.join("bench", "results", "bench.csv"))
    p.add_argument("-o", "--out", help="PNG to write (default: the CSV's name with .png)")
    p.add_argument("--run", default="latest", help="'latest' (default), 'all', or a run_id from the CSV")
    p.add_argument("--workloads", help="comma list of workloads to plot (default: all in the rows)")
    p.add_argument("--quantity", default="step", choices=("step", "op"),
                   help="step (whole meta-iteration, the default) or op (meta-gradient only)")
    p.add_argument("--device", help="keep rows whose device name contains this text")
    args = p.parse_args(argv)

    from metakern.benchmark import NO_MPL, have_matplotlib, plot_rows, run_title

    if not have_matplotlib():
        print(f"error: {NO_MPL.replace('--plot', 'bench/plot.py')}", file=sys.stderr)
        return 2
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if args.device:
        rows = [r for r in rows if args.device.lower() in r["device"].lower()]
    if args.run != "all":
        run = max((r["run_id"] for r in rows), default=None) if args.run == "latest" else args.run
        rows = [r for r in rows if r["run_id"] == run]
    if not rows:
        print(f"error: no rows in {args.csv} match (run={args.run!r}, device={args.device!r})", file=sys.stderr)
        return 1
    out = args.out or os.path.splitext(args.csv)[0] + ".png"
    title = run_title(rows[0], None if args.run != "all" else "all runs")
    try:
        wanted = [w.strip() for w in args.workloads.split(",") if w.strip()] if args.workloads else None
        print(plot_rows(rows, out, workloads=wanted, title=title, quantity=args.quantity))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
