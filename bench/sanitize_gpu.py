"""Small GPU workloads for ``compute-sanitizer`` (memcheck, racecheck).

    compute-sanitizer --tool memcheck --error-exitcode 3 python bench/sanitize_gpu.py [cuda,triton]

Runs each GPU backend's fused forward and backward once per case on odd shapes
(widths that are not multiples of a warp or a tile, shared and per-task parameters,
both orders, input gradients, both losses, float32 and float64 where supported),
so that every kernel variant the tests use is launched under the tool at least once,
through ``functional.adapt`` and through ``functional.meta_loss`` (for cuda: maml_fwd
composed in C++ under the C++ autograd node).
Each case also compares against the torch backend on the same device (float32:
relative error 2e-4, as tests/helpers.py), so a case that ran but computed garbage
fails here as well. Exits non-zero on the first mismatch.
"""
import sys

import torch

import metakern.backends as B
import metakern.functional as MF

# Off a GPU (a dry run of this script) the same cases run on the CPU: cpp, or triton
# under TRITON_INTERPRET=1.
DEV = "cuda" if torch.cuda.is_available() else "cpu"

CASES = [  # dims, N, loss, activation, per_task, steps, first_order
    ((1, 40, 40, 1), 10, "mse", "relu", False, 1, False),
    ((3, 17, 5), 7, "cross_entropy", "tanh", True, 2, False),
    ((5, 3, 17, 4, 2), 33, "mse", "sigmoid", False, 3, True),
    ((10, 1), 5, "mse", "identity", True, 2, False),
    ((33, 63, 9), 19, "cross_entropy", "relu", False, 1, False),
]


def run_case(backend, dims, N, loss, act, per_task, steps, first_order, dtype, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = []
    for i, o in zip(dims[:-1], dims[1:]):
        lead = (T,) if per_task else ()
        params.append(torch.randn(*lead, o, i, generator=g, dtype=torch.float64) * (2.0 / (i + o)) ** 0.5)
        params.append(torch.randn(*lead, o, generator=g, dtype=torch.float64) * 0.1)
    x = torch.randn(T, N, dims[0], generator=g, dtype=torch.float64)
    y = (torch.randn(T, N, dims[-1], generator=g, dtype=torch.float64) if loss == "mse"
         else torch.randint(0, dims[-1], (T, N), generator=g))
    xq = torch.randn(T, N + 2, dims[0], generator=g, dtype=torch.float64)
    yq = (torch.randn(T, N + 2, dims[-1], generator=g, dtype=torch.float64) if loss == "mse"
          else torch.randint(0, dims[-1], (T, N + 2), generator=g))
    gout = w = None  # drawn on the first backend's outputs, reused for the torch backend
    results = {}
    for b in (backend, "torch"):
        ps = [p.to(DEV, dtype).requires_grad_() for p in params]
        xx = x.to(DEV, dtype).requires_grad_()
        yy = y.to(DEV, dtype) if loss == "mse" else y.to(DEV)
        out = MF.adapt(ps, xx, yy, lr=0.1, steps=steps, loss=loss, activation=act, first_order=first_order,
                       backend=b)
        if gout is None:
            gout = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in out]
        grads = torch.autograd.grad(out, ps + [xx], [q.to(DEV, dtype) for q in gout])
        # the MAML objective (cuda: maml_fwd composed in C++, under the C++ autograd node)
        lr = torch.tensor(0.1, dtype=dtype, device=DEV, requires_grad=True)
        yyq = yq.to(DEV, dtype) if loss == "mse" else yq.to(DEV)
        obj = MF.meta_loss(ps, xx.detach(), yy, xq.to(DEV, dtype), yyq, lr=lr, steps=steps, loss=loss,
                           activation=act, first_order=first_order, backend=b, reduction="none")
        if w is None:
            w = torch.rand(T, generator=g, dtype=torch.float64)
        ograds = torch.autograd.grad(obj, ps + [lr], w.to(DEV, dtype))
        results[b] = [t.detach().double().cpu() for t in list(out) + list(grads) + [obj] + list(ograds)]
    if DEV == "cuda":
        torch.cuda.synchronize()
    rtol = 2e-4 if dtype == torch.float32 else 1e-9
    for k, (a, e) in enumerate(zip(results[backend], results["torch"])):
        err = (a - e).abs().max().item()
        scale = e.abs().max().item() or 1.0
        if not (err <= rtol * scale):
            raise SystemExit(f"{backend} {dims} {loss} {act} per_task={per_task} steps={steps} "
                             f"first_order={first_order} {dtype}: output {k} max error {err:.3e} > {rtol}*{scale:.3e}")


def main():
    wanted = sys.argv[1].split(",") if len(sys.argv) > 1 else ["cuda", "triton"]
    avail = B.available()
    n = 0
    for backend in wanted:
        if avail.get(backend):
            print(f"{backend}: unavailable: {'; '.join(avail[backend])}")
            continue
        dtypes = [torch.float32] if backend == "triton" else [torch.float32, torch.float64]
        for dtype in dtypes:
            for case in CASES:
                run_case(backend, *case, dtype=dtype)
                n += 1
    print(f"sanitize_gpu: {n} cases ran and matched the torch backend")


if __name__ == "__main__":
    main()
