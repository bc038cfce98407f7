"""The generic (torch.func) path against the unrolled autograd reference."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metakern as mk
import reference as R
from helpers import RTOL, assert_close, seeded

DT = torch.float64
TOL = RTOL[DT]  # float64 against float64 autograd: rounding order only
MODES = ["vmap", "loop"]


def _batch(g, T, N, D, O, Nq=None):
    Nq = Nq or N
    return (torch.randn(T, N, D, generator=g, dtype=DT), torch.randn(T, N, O, generator=g, dtype=DT),
            torch.randn(T, Nq, D, generator=g, dtype=DT), torch.randn(T, Nq, O, generator=g, dtype=DT))


def _init(g, *modules):
    """Fresh random parameters (and running statistics) from ``g``, away from the defaults."""
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.6)
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=DT) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=DT) + 0.5)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True, materialize_grads=True)


def _check(got, want, names):
    """Each gradient against its reference, relative to the largest entry of them all (one
    meta-gradient: an entry that is zero in exact arithmetic, like the gradient of a bias
    before a batch norm, is compared at the scale of the whole)."""
    scale = max(float(w.abs().max()) for w in want)
    for a, b, n in zip(got, want, names):
        assert_close(a, b, TOL, n, floor=scale)


# ------------------------------------------------------------- gradients to the targets
def _sine_net():
    """A sine MLP the fused kernels do not take (its first layer has no bias)."""
    return nn.Sequential(nn.Linear(1, 16, bias=False), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 1)).to(DT)


def _sine_fn(p, x):
    W1, W2, b2, W3, b3 = p
    return F.linear(torch.tanh(F.linear(torch.tanh(F.linear(x, W1)), W2, b2)), W3, b3)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("api", ["meta_loss", "adapt"])
@pytest.mark.parametrize("learner", ["maml", "metasgd"])
@pytest.mark.parametrize("mode", MODES)
def test_targets_get_the_exact_gradient(request, mode, learner, api, first_order):
    """ys and yq that require a gradient get the unrolled reference's, in both modes
    (first order: ys gets none through the inner loop, as in the reference)."""
    g = seeded(request)
    net = _sine_net()
    _init(g, net)
    cls = mk.MetaSGD if learner == "metasgd" else mk.MAML
    m = cls(net, lr=0.05, steps=2, first_order=first_order, generic_mode=mode)
    assert not m.fused
    if learner == "metasgd":
        with torch.no_grad():
            for r in m.lrs:
                r.copy_(0.02 + 0.08 * torch.rand(r.shape, generator=g, dtype=DT))
    xs, ys, xq, yq = _batch(g, 4, 6, 1, 1)
    ys, yq = ys.requires_grad_(), yq.requires_grad_()
    if api == "meta_loss":
        loss = m.meta_loss(xs, ys, xq, yq)
    else:
        loss = F.mse_loss(m.adapt(xs, ys)(xq), yq)
    params = list(net.parameters())
    lrs = list(m.lrs) if learner == "metasgd" else [m.lr] * len(params)
    want = R.unrolled_losses(_sine_fn, params, lrs, xs, ys, xq, yq, 2, first_order=first_order).mean()
    assert_close(loss, want, TOL, "loss")
    wrt = [ys, yq] + params + (list(m.lrs) if learner == "metasgd" else [])
    _check(_grads(loss, wrt), _grads(want, wrt), ["ys", "yq"] + [f"param {i}" for i in range(len(wrt) - 2)])
    if first_order:
        assert _grads(loss, [ys])[0].abs().max() == 0


@pytest.mark.parametrize("mode", MODES)
def test_anil_generic_head_targets_and_body(request, mode):
    g = seeded(request)
    body, head = nn.Linear(1, 8).to(DT), nn.Linear(8, 1, bias=False).to(DT)
    _init(g, body, head)
    anil = mk.ANIL(body, head, lr=0.1, steps=2, generic_mode=mode)
    assert not anil.head.fused
    xs, ys, xq, yq = _batch(g, 3, 5, 1, 1)
    ys, yq = ys.requires_grad_(), yq.requires_grad_()
    loss = anil.meta_loss(xs, ys, xq, yq)

    def fn(p, x):  # the body's features are fixed per task: the head sees them as its input
        return F.linear(x, p[0])

    fs, fq = anil.features(xs), anil.features(xq)
    want = R.unrolled_losses(fn, [head.weight], [0.1], fs, ys, fq, yq, 2).mean()
    wrt = [ys, yq, head.weight, body.weight, body.bias]
    assert_close(loss, want, TOL, "loss")
    _check(_grads(loss, wrt), _grads(want, wrt), ["ys", "yq", "head", "body weight", "body bias"])
