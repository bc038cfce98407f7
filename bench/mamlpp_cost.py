"""What MAML++'s additions cost inside the fused op, against plain ``meta_loss``.

One meta-gradient (``meta_loss`` and ``autograd.grad`` of it, second order) with
the plain scalar inner rate, with per-step per-tensor rates (LSLR, learnable), with
the multi-step loss (uniform ``step_weights``), and with both, timed in interleaved
rounds (``metakern.benchmark.timing.time_interleaved``) so that the ratios come from
one run. Workloads: the sine MLP 1-40-40-1 at T=1024 and the wider 32-128-128-5
cross-entropy MLP (``mlp-ce``) at T=256, both K=5. The target is at most 1.3x the
plain fused op.

    python bench/mamlpp_cost.py --threads 1 --out bench/results/mamlpp_cost_cpu.csv
"""
import argparse
import datetime
import platform
import subprocess

import torch

import metakern.functional as MF
from metakern.benchmark.results import append_rows
from metakern.benchmark.timing import time_interleaved
from metakern.benchmark.workloads import WORKLOADS, Profile

CASES = {"sine": 1024, "mlp-ce": 256}
VARIANTS = ("plain", "lslr", "msl", "lslr+msl")


def _problem(name, T, K, g):
    w = WORKLOADS[name]
    dims = w.dims
    params = []
    for i, o in zip(dims[:-1], dims[1:]):
        params.append((torch.randn(o, i, generator=g) * (2.0 / (i + o)) ** 0.5).requires_grad_())
        params.append(torch.zeros(o).requires_grad_())
    xs = torch.randn(T, w.n_support, dims[0], generator=g)
    xq = torch.randn(T, w.n_query, dims[0], generator=g)
    if w.loss == "mse":
        ys, yq = torch.randn(T, w.n_support, dims[-1], generator=g), torch.randn(T, w.n_query, dims[-1], generator=g)
    else:
        ys, yq = (torch.randint(0, dims[-1], (T, n), generator=g) for n in (w.n_support, w.n_query))
    return w, params, xs, ys, xq, yq


def _step(w, params, xs, ys, xq, yq, K, variant, backend):
    if "lslr" in variant:
        lr = [torch.full((K,), w.lr, requires_grad=True) for _ in params]
    else:
        lr = torch.tensor(w.lr, requires_grad=True)
    leaves = params + (lr if isinstance(lr, list) else [lr])
    sw = torch.full((K,), 1.0 / K) if "msl" in variant else None

    def fn():
        out = MF.meta_loss(params, xs, ys, xq, yq, lr=lr, steps=K, loss=w.loss, activation=w.activation,
                           backend=backend, step_weights=sw)
        torch.autograd.grad(out, leaves)

    return fn


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="cpp,torch")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="append the rows to this CSV")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    prof = Profile(grids=[], min_reps=10, min_time_s=1.0, max_time_s=4.0)
    run_id = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        git = ""
    rows = []
    for backend in a.backends.split(","):
        for name, T in CASES.items():
            g = torch.Generator().manual_seed(0)
            prob = _problem(name, T, a.steps, g)
            fns = [_step(*prob, a.steps, v, backend) for v in VARIANTS]
            res = time_interleaved(fns, prof)
            base = res[0][0]
            for v, r in zip(VARIANTS, res):
                if isinstance(r, BaseException):
                    raise r
                ratio = r[0] / base
                print(f"{backend:5s} {name:7s} T={T:5d} K={a.steps} {v:9s} {r[0]:9.3f} ms "
                      f"(p20 {r[1]:.3f}, p80 {r[2]:.3f}, n={r[3]})  x{ratio:.3f} plain", flush=True)
                rows.append(dict(run_id=run_id, git=git, device=platform.processor() or platform.machine(),
                                 torch=torch.__version__, threads=a.threads, backend=backend, workload=name, T=T,
                                 K=a.steps, variant=v, median_ms=f"{r[0]:.4f}", p20_ms=f"{r[1]:.4f}",
                                 p80_ms=f"{r[2]:.4f}", samples=r[3], ratio_vs_plain=f"{ratio:.4f}"))
    if a.out:
        append_rows(a.out, rows)


if __name__ == "__main__":
    main()
