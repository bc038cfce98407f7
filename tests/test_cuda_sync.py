"""The GPU path without host synchronisation, which CUDA-graph capture needs.

A GPU test: skipped where the cuda backend cannot run (the CPU machines of CI). The
class-index check that used to read a device tensor back is checked on the host here
too, through the device-side form that the GPU takes (``check_class_indices`` with
``on_host=False``: ``torch._assert_async`` raises at once on a CPU tensor).
"""
import os
import subprocess
import sys

import pytest
import torch

import metakern.backends as B
import metakern.functional as MF
from metakern._validate import check_class_indices

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or bool(B.available()["cuda"]),
                                reason="needs a GPU and the cuda backend")


@pytest.mark.parametrize("on_host", [True, False], ids=["host", "device-form"])
def test_class_index_check_names_the_argument(on_host):
    """Both forms of the check refuse an index outside [0, O) and name the argument;
    good indices pass both."""
    y = torch.randint(0, 4, (3, 7))
    check_class_indices(y, 4, "yq", on_host=on_host)
    bad = y.clone()
    bad[1, 2] = 4
    with pytest.raises(ValueError if on_host else RuntimeError, match=r"yq holds class indices"):
        check_class_indices(bad, 4, "yq", on_host=on_host)
    bad[1, 2] = -1
    with pytest.raises(ValueError if on_host else RuntimeError, match=r"yq holds class indices"):
        check_class_indices(bad, 4, "yq", on_host=on_host)


def _problem(device, loss, T=8, dims=(3, 16, 4)):
    g = torch.Generator().manual_seed(0)
    params = []
    for i, o in zip(dims[:-1], dims[1:]):
        params.append((torch.randn(o, i, generator=g) * 0.5).to(device).requires_grad_())
        params.append(torch.zeros(o, device=device, requires_grad=True))
    xs, xq = (torch.randn(T, n, dims[0], generator=g).to(device) for n in (5, 7))
    if loss == "mse":
        ys, yq = (torch.randn(T, n, dims[-1], generator=g).to(device) for n in (5, 7))
    else:
        ys, yq = (torch.randint(0, dims[-1], (T, n), generator=g).to(device) for n in (5, 7))
    return params, xs, ys, xq, yq


@needs_cuda
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "msl"])
def test_cuda_meta_step_does_not_sync(loss, weighted):
    """meta_loss and its backward on the cuda backend under
    torch.cuda.set_sync_debug_mode("error"): any host synchronisation raises."""
    params, xs, ys, xq, yq = _problem("cuda", loss)
    lr = torch.tensor(0.1, device="cuda", requires_grad=True)
    sw = torch.full((3,), 1.0 / 3, device="cuda") if weighted else None
    out = MF.meta_loss(params, xs, ys, xq, yq, lr=lr, steps=3, loss=loss, backend="cuda", step_weights=sw)
    out.backward()  # a first call outside the check: one-time work (loading, caches) may sync
    torch.cuda.synchronize()
    prev = torch.cuda.get_sync_debug_mode()
    try:
        torch.cuda.set_sync_debug_mode("error")
        out = MF.meta_loss(params, xs, ys, xq, yq, lr=lr, steps=3, loss=loss, backend="cuda", step_weights=sw)
        out.backward()
    finally:
        torch.cuda.set_sync_debug_mode(prev)
    torch.cuda.synchronize()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)


@needs_cuda
def test_cuda_bad_class_index_fails_on_the_device():
    """A class index outside [0, O) on the GPU is caught by the device-side check (the
    stream fails at the next synchronisation) instead of being read as an offset. In a
    child process: a device-side assert leaves the process's CUDA context unusable."""
    script = (
        "import torch, metakern.functional as MF\n"
        "import sys; sys.path.insert(0, %r)\n"
        "from test_cuda_sync import _problem\n"
        "params, xs, ys, xq, yq = _problem('cuda', 'cross_entropy')\n"
        "yq = yq.clone(); yq[0, 0] = 4\n"
        "MF.meta_loss(params, xs, ys, xq, yq, lr=0.1, steps=2, loss='cross_entropy', backend='cuda')\n"
        "torch.cuda.synchronize()\n"
        "print('NO ERROR')\n" % os.path.dirname(__file__))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "NO ERROR" not in done.stdout, done.stdout + done.stderr
    assert "assert" in (done.stdout + done.stderr).lower(), done.stderr[-2000:]
