"""Peak memory and time of a Conv-4 meta-iteration on the CPU, one case per process.

MAML on ``mk.Conv4`` (generic path, second order unless ``--first-order``) and ANIL on
its body with a fused head, at the sizes of MAML's Omniglot protocol: 28x28 images, 64
filters, 15 query images per class. Each case runs in a fresh subprocess that
meta-trains a few iterations on random images (the memory and time do not depend on
the pixels) and reports its peak resident set (``VmHWM`` of ``/proc/self/status``:
what the process held at its peak, the torch import included, which the ``import_mb``
column gives on its own). A case that runs out of memory or past ``--timeout`` is
recorded as such, with the time it had run.

    python bench/conv4_memory.py --out bench/results/conv4_memory.csv
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's metakern

from metakern.benchmark.results import append_rows  # noqa: E402 (after the path)

# algo, ways, shots, queries per class, T (meta-batch), K (inner steps)
CASES = [
    ("maml", 5, 1, 15, 32, 1),
    ("maml", 5, 1, 15, 32, 5),
    ("maml", 5, 5, 15, 32, 1),
    ("maml", 20, 1, 15, 16, 5),
    ("anil", 5, 1, 15, 32, 5),
]


def _status_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_name():
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run_case(args):
    """In the child: build the learner, run the iterations, print one JSON line."""
    import torch

    import metakern as mk
    import metakern.generic  # noqa: F401  (mk.generic.choose_mode)

    torch.set_num_threads(args.threads)
    import_mb = _status_mb("VmHWM")
    torch.manual_seed(0)
    net = mk.Conv4(in_channels=1, ways=args.ways, hidden=args.hidden, image_size=args.image_size)
    if args.algo == "anil":
        learner = mk.ANIL(net.body, net.head, lr=0.4, steps=args.steps, first_order=args.first_order,
                          loss="cross_entropy")
    else:
        learner = mk.MAML(net, lr=0.4, steps=args.steps, first_order=args.first_order, loss="cross_entropy")
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    T, W, S, Q, size = args.tasks, args.ways, args.shots, args.queries, args.image_size
    ys = torch.arange(W).repeat_interleave(S).expand(T, -1).contiguous()
    yq = torch.arange(W).repeat_interleave(Q).expand(T, -1).contiguous()
    times = []
    for _ in range(args.iterations):
        xs = torch.rand(T, W * S, 1, size, size, generator=g)
        xq = torch.rand(T, W * Q, 1, size, size, generator=g)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = learner.meta_loss(xs, ys, xq, yq)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    mode = "fused head" if args.algo == "anil" else learner.generic_mode
    if mode == "auto":
        mode = mk.generic.choose_mode(net)
    print(json.dumps({"peak_mb": _status_mb("VmHWM"), "import_mb": import_mb, "times_s": times, "mode": mode,
                      "loss": loss.item()}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/conv4_memory.csv")
    ap.add_argument("--iterations", type=int, default=5, help="meta-iterations per case; the first is warm-up")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per case")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--first-order", action="store_true")
    ap.add_argument("--case", nargs=6, metavar=("ALGO", "WAYS", "SHOTS", "QUERIES", "T", "K"),
                    help="one case instead of the protocol's (run in this process)")
    args = ap.parse_args()
    if args.case:
        algo, *nums = args.case
        args.algo, (args.ways, args.shots, args.queries, args.tasks, args.steps) = algo, map(int, nums)
        return run_case(args)
    import torch

    import metakern as mk

    rows = []
    for algo, W, S, Q, T, K in CASES:
        cmd = [sys.executable, __file__, "--case", algo, str(W), str(S), str(Q), str(T), str(K),
               "--iterations", str(args.iterations), "--threads", str(args.threads), "--hidden", str(args.hidden),
               "--image-size", str(args.image_size)] + (["--first-order"] if args.first_order else [])
        t0 = time.perf_counter()
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            status = "ok" if out.returncode == 0 else f"failed (exit {out.returncode}): {out.stderr.strip()[-300:]}"
            res = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {}
        except subprocess.TimeoutExpired:
            status, res = f"timed out after {args.timeout:.0f} s", {}
        times = res.get("times_s", [])
        steady = times[1:] or times
        row = {
            "date": datetime.date.today().isoformat(), "device": _cpu_name(),
            "threads": args.threads, "torch": torch.__version__, "metakern": mk.__version__,
            "algo": algo, "order": "first" if args.first_order else "second", "ways": W, "shots": S, "queries": Q,
            "T": T, "K": K, "image_size": args.image_size, "filters": args.hidden, "mode": res.get("mode", ""),
            "peak_mb": round(res["peak_mb"]) if res else "", "import_mb": round(res["import_mb"]) if res else "",
            "first_s": round(times[0], 2) if times else "",
            "s_per_iteration": round(sum(steady) / len(steady), 2) if steady else "",
            "wall_s": round(time.perf_counter() - t0, 1), "status": status,
        }
        rows.append(row)
        print(", ".join(f"{k}={v}" for k, v in row.items() if k not in ("date", "device", "torch", "metakern")),
              flush=True)
    append_rows(args.out, rows)


if __name__ == "__main__":
    main()
