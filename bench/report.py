"""Markdown tables for the README from recorded benchmark CSVs.

    python bench/report.py bench/results/bench.csv [--run latest|RUN_ID] [--quantity step]

One table per run: time per meta-iteration (median, p20-p80), achieved GFLOP/s and
share of the peak measured in the same run (and of the single-thread sgemm rate, for
runs that recorded it), peak memory of one call (CUDA: the
caching allocator's peak; CPU: PyTorch's CPU allocator, see metakern.benchmark),
and the speedup over torch.func vmap
on the same workload in the same run. Device, date, threads and versions head the
table, so every figure carries where and when it was measured.
"""
import argparse
import csv
import sys


def load(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table(rows, quantity):
    rows = [r for r in rows if r["status"] == "ok" and r["quantity"] == quantity]
    if not rows:
        return ""
    r0 = rows[0]
    peak = float(r0["peak_gflops"])
    # the single-thread sgemm rate: absent from older CSVs; the peak itself in a one-thread run
    one = float(r0["sgemm_1t_gflops"]) if r0.get("sgemm_1t_gflops") else 0.0
    one_s = "" if not one else " (the single-thread sgemm rate)" if one == peak else f", one thread {one:.1f} GFLOP/s"
    one = 0.0 if one == peak else one  # a column of its own only when it differs from "% of peak"
    head = (f"{r0['device']} ({r0['device_type']}, {r0['threads']} thread(s)), {r0['date'][:10]}, torch {r0['torch']}, "
            f"metakern {r0['metakern']} ({r0['git_rev']}); peak measured in the same run: "
            f"{peak:.1f} GFLOP/s fp32{one_s}")
    out = [f"*{head}*", "",
           "| workload | T | K | order | provider | ms / iteration (p20-p80) | GFLOP/s | % of peak | "
           + ("% of 1-thread sgemm | " if one else "") + "peak MB | x vmap |",
           "|---|---:|---:|---|---|---:|---:|---:|" + ("---:|" if one else "") + "---:|---:|"]
    for r in rows:
        sp, mem = r["speedup_vs_vmap"], r.get("peak_mem_mb", "")
        mem_s = f"{float(mem):.3g}" if mem else ""
        sp_s = f"{float(sp):.2f}" if sp else ""
        one_s = f"{100 * float(r['gflops']) / one:.1f} | " if one else ""
        out.append(f"| {r['workload']} {r['dims']} | {r['T']} | {r['K']} | {r['order']} | {r['provider']} | "
                   f"{float(r['median_ms']):.3g} ({float(r['p20_ms']):.3g}-{float(r['p80_ms']):.3g}) | "
                   f"{float(r['gflops']):.3g} | {100 * float(r['peak_fraction']):.1f} | {one_s}{mem_s} | {sp_s} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv")
    p.add_argument("--run", default="latest", help="run_id, 'latest' or 'all'")
    p.add_argument("--quantity", default="step", choices=["op", "step"])
    a = p.parse_args(argv)
    rows = load(a.csv)
    runs = list(dict.fromkeys(r["run_id"] for r in rows))
    if not runs:
        sys.exit(f"{a.csv} has no rows")
    chosen = runs if a.run == "all" else [runs[-1] if a.run == "latest" else a.run]
    for run in chosen:
        print(table([r for r in rows if r["run_id"] == run], a.quantity))
        print()


if __name__ == "__main__":
    main()
