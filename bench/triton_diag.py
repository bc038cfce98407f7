"""Locate a Triton kernel error: each launcher against the torch backend, per variant.

    python bench/triton_diag.py

For a few architectures it runs ``mlp_fwd``, ``mlp_bwd``, ``adapt_fwd`` and
``adapt_bwd`` (second order, input gradient) of ``metakern.triton.adapt`` with
tl.dot on (the launcher's choice), tl.dot off (broadcast products everywhere) and
tl.dot on with 4 warps, and prints each output's max error relative to the float64
torch backend on the same inputs (float32 kernels land near 1e-6..1e-5), plus
whether a second launch gave the same bits (a race shows as a difference). Shared
theta (one [P] vector for all tasks), MSE, relu unless the row says otherwise.
Off a GPU it runs under TRITON_INTERPRET=1 (slow; for checking the script).
"""
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import metakern.backends.torch_backend as TB  # noqa: E402
from metakern._contract import num_params  # noqa: E402
from metakern.triton import adapt as TA  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ARCHS = [((1, 40, 40, 1), 10, 0, 1), ((16, 16, 16), 16, 0, 1), ((3, 17, 5), 7, 0, 1), ((1, 40, 40, 1), 10, 1, 2)]
if len(sys.argv) > 1 and sys.argv[1] == "--quick":
    ARCHS = ARCHS[2:3]


def rel(a, e):
    a, e = a.double().cpu(), e.double().cpu()
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


def main():
    g = torch.Generator().manual_seed(1)
    orig_init = TA._Config.__init__
    variants = {"dot": dict(use_dot=True), "nodot": dict(use_dot=False), "dot-w4": dict(use_dot=True)}
    print(f"{'dims':<14}{'N':>3} {'loss':>4} {'variant':<8} {'op':<10} {'output':<8} {'rel err':>10} {'repeat':>7}")
    for dims, N, loss, act in ARCHS:
        T, K, P, D, O = 5, 1, num_params(dims), dims[0], dims[-1]
        theta = torch.randn(P, generator=g, dtype=torch.float64) * 0.3
        lr = torch.full((P,), 0.1, dtype=torch.float64)
        x = torch.randn(T, N, D, generator=g, dtype=torch.float64)
        y = torch.randn(T, N, O, generator=g, dtype=torch.float64) if loss == 0 else torch.randint(0, O, (T, N), generator=g)
        gt = torch.randn(T, P, generator=g, dtype=torch.float64)
        go = torch.randn(T, N, O, generator=g, dtype=torch.float64)
        d64 = dict(theta=theta.to(DEV), lr=lr.to(DEV), x=x.to(DEV), y=y.to(DEV), gt=gt.to(DEV), go=go.to(DEV))
        th_t = d64["theta"].expand(T, P)
        ref = {
            "mlp_fwd": [TB.mlp_fwd(th_t, d64["x"], dims, act)],
            "mlp_bwd": list(TB.mlp_bwd(d64["go"], th_t, d64["x"], dims, act, True)),
            "adapt_fwd": [TB.adapt_fwd(d64["theta"], d64["lr"], d64["x"], d64["y"], dims, K, loss, act)],
            "adapt_bwd": list(TB.adapt_bwd(d64["gt"], d64["theta"], d64["lr"], d64["x"], d64["y"], dims, K, loss, act,
                                           False, True)),
        }
        f = {k: (v.float() if v.is_floating_point() else v) for k, v in d64.items()}
        thf = f["theta"].expand(T, P).contiguous()
        for vname, kw in variants.items():
            if vname == "dot-w4":
                def init(self, *a, **k):
                    orig_init(self, *a, **k)
                    self.num_warps = 4
                TA._Config.__init__ = init
            else:
                TA._Config.__init__ = orig_init
            cfg = TA._Config(dims, N, False, kw["use_dot"])
            calls = {
                "mlp_fwd": lambda: [TA.mlp_fwd(thf, f["x"], dims, act, **kw)],
                "mlp_bwd": lambda: list(TA.mlp_bwd(f["go"], thf, f["x"], dims, act, True, **kw)),
                "adapt_fwd": lambda: [TA.adapt_fwd(f["theta"], f["lr"], f["x"], f["y"], dims, K, loss, act, **kw)],
                "adapt_bwd": lambda: list(TA.adapt_bwd(f["gt"], f["theta"], f["lr"], f["x"], f["y"], dims, K, loss,
                                                       act, False, True, **kw)),
            }
            for op, call in calls.items():
                try:
                    out1, out2 = call(), call()
                except Exception as e:  # report and go on: this is a diagnostic
                    print(f"{str(dims):<14}{N:>3} {loss:>4} {vname:<8} {op:<10} raised {type(e).__name__}: {e}")
                    continue
                names = ["out"] if len(out1) == 1 else (["g_theta", "g_x"] if op == "mlp_bwd"
                                                        else ["g_theta", "g_lr", "g_x"])
                for name, a, b, e in zip(names, out1, out2, ref[op]):
                    if name == "g_lr":
                        continue  # the torch reference returns it in another layout
                    same = "same" if torch.equal(a, b) else "DIFF"
                    print(f"{str(dims):<14}{N:>3} {loss:>4} {vname:<8} {op:<10} {name:<8} {rel(a, e):>10.2e} {same:>7}"
                          f"   DOT={cfg.DOT[:cfg.L]} B={cfg.B[:cfg.L + 1]} BN={cfg.BN} warps={cfg.num_warps}"
                          if name == names[0] else
                          f"{str(dims):<14}{N:>3} {loss:>4} {vname:<8} {op:<10} {name:<8} {rel(a, e):>10.2e} {same:>7}")
        TA._Config.__init__ = orig_init


if __name__ == "__main__":
    main()
