"""MAML++'s per-step batch norm (BNRS, BNWB) on the generic path: ``mk.nn.PerStepBatchNorm2d``,
``mk.Conv4(per_step_bn=K)``, the inner-step context and the parameters the inner loop keeps fixed.

Ground truth: the Conv-4 forward written out by hand (convolution, batch norm from its
formula with row k of the per-step weights, biases and running statistics indexed
explicitly, ReLU, pooling, head) and an unrolled inner loop with
``torch.autograd.grad(create_graph=True)``, one task at a time, in float64. The batch-norm
weights and biases are not adapted (MAML++'s default); the meta-gradient reaches them
through every step. Running statistics are replayed in the order the learner calls the
network (every task's support steps, then the query forwards step by step).
"""
import pytest
import torch
import torch.nn.functional as F

import metakern as mk
from helpers import assert_close, seeded
from metakern.nn import PerStepBatchNorm2d, inner_step

DT = torch.float64
RTOL = 1e-9  # float64 through up to three second-order inner steps of a small Conv-4


def _net(g, K, hidden=3, ways=3, size=16, channels=1):
    """A per-step Conv4 with random (not the initial 1/0) batch-norm rows and running statistics."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    net = mk.Conv4(in_channels=channels, ways=ways, hidden=hidden, image_size=size, per_step_bn=K).to(DT)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, PerStepBatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g, dtype=DT))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g, dtype=DT))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g, dtype=DT))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g, dtype=DT))
    return net


def _data(g, T, N, Nq, ways=3, size=16, channels=1):
    xs = torch.randn(T, N, channels, size, size, generator=g, dtype=DT)
    xq = torch.randn(T, Nq, channels, size, size, generator=g, dtype=DT)
    return xs, torch.randint(0, ways, (T, N), generator=g), xq, torch.randint(0, ways, (T, Nq), generator=g)


def _stats(net):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in net.modules() if isinstance(m, PerStepBatchNorm2d)]


def _ref_forward(P, x, k, stats, train, update, momentum=0.1, eps=1e-5):
    """Conv-4 by hand at step k; ``stats[i] = (mean, var)`` ``[K+1, C]`` of block i, updated in
    place (row k) when ``train and update``."""
    h = x
    for i in range(4):
        h = F.conv2d(h, P[f"body.{i}.0.weight"], P[f"body.{i}.0.bias"], padding=1)
        gamma, beta = P[f"body.{i}.1.weight"][k], P[f"body.{i}.1.bias"][k]
        if train:
            mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
            if update:
                n = h.numel() // h.shape[1]
                rm, rv = stats[i]
                rm[k] = (1 - momentum) * rm[k] + momentum * mean.detach()
                rv[k] = (1 - momentum) * rv[k] + momentum * var.detach() * n / (n - 1)
        else:
            mean, var = stats[i][0][k], stats[i][1][k]
        h = (h - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + eps)
        h = torch.relu(h * gamma[None, :, None, None] + beta[None, :, None, None])
        h = F.max_pool2d(h, 2)
    return h.flatten(1) @ P["head.weight"].T + P["head.bias"]


def _reference(net, rates, xs, ys, xq, yq, K, first_order, w, train=True, update=True):
    """Per-task query losses ``[T]`` (weighted over steps by ``w``, or the last step's) and the
    running statistics after the calls. ``rates[name]``: ``[K]`` per adapted parameter."""
    P = dict(net.named_parameters())
    adapted = [n for n in P if not (n.startswith("body.") and n.split(".")[2] == "1")]  # all but batch norm
    stats = [(a.clone(), b.clone()) for a, b in _stats(net)]
    paths = []
    for t in range(xs.shape[0]):
        cur, path = {n: P[n] for n in adapted}, []
        for k in range(K):
            out = _ref_forward({**P, **cur}, xs[t], k, stats, train, update)
            gs = torch.autograd.grad(F.cross_entropy(out, ys[t]), list(cur.values()), create_graph=not first_order)
            if first_order:
                gs = [x.detach() for x in gs]
            cur = {n: v - rates[n][k] * gr for (n, v), gr in zip(cur.items(), gs)}
            path.append(cur)
        paths.append(path)
    losses = torch.zeros(xs.shape[0], dtype=DT)
    for k in range(1, K + 1):
        if w is None and k < K:
            continue
        q = torch.stack([F.cross_entropy(_ref_forward({**P, **paths[t][k - 1]}, xq[t], k, stats, train, update), yq[t])
                         for t in range(xs.shape[0])])
        losses = losses + (q if w is None else w[k - 1] * q)
    return losses, stats


def _check_grads(names, got, want):
    """Each gradient against its reference, on the scale of the largest reference gradient:
    batch norm with batch statistics cancels the convolution biases, whose exact gradient is
    zero (rounding leaves ~1e-16)."""
    scale = max(b.abs().max().item() for b in want if b is not None)
    for n, a, b in zip(names, got, want):
        assert (a is None) == (b is None), n
        if a is not None:
            assert_close(a, b, RTOL, f"gradient of {n}", floor=scale)


def _rates(pp, net):
    fixed = set(mk.generic.fixed_names(net))
    names = [n for n, _ in net.named_parameters() if n not in fixed]
    return dict(zip(names, pp.lrs))


@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("first_order", [False, True], ids=["so", "fo"])
@pytest.mark.parametrize("msl", [False, True], ids=["last", "msl"])
def test_mamlpp_per_step_bn_against_unrolled_loop(request, K, first_order, msl):
    """``MAMLPlusPlus.meta_loss`` on ``Conv4(per_step_bn=K)``: value, meta-gradient of every
    learner parameter (the convolutions, the per-step batch-norm rows, the head, the
    per-step rates) and the running statistics of every step, against the hand-written loop."""
    g = seeded(request)
    net = _net(g, K)
    pp = mk.MAMLPlusPlus(net, lr=0.1, steps=K, loss="cross_entropy", first_order=first_order,
                         msl_epochs=4 if msl else 0, first_order_epochs=0)
    pp.set_epoch(1)
    with torch.no_grad():
        for l in pp.lrs:
            l.copy_(0.05 + 0.2 * torch.rand(l.shape, generator=g, dtype=DT))
    w = pp.step_weights()
    assert (w is not None) == msl
    xs, ys, xq, yq = _data(g, T=2, N=3, Nq=5)
    ref, ref_stats = _reference(net, _rates(pp, net), xs, ys, xq, yq, K, first_order, w)
    g_out = torch.rand(2, generator=g, dtype=DT)
    want = torch.autograd.grad(ref, list(pp.parameters()), g_out, allow_unused=True)
    got_losses = pp.meta_loss(xs, ys, xq, yq, reduction="none")
    assert_close(got_losses, ref, RTOL, "losses")
    got = torch.autograd.grad(got_losses, list(pp.parameters()), g_out, allow_unused=True)
    names = [n for n, _ in pp.named_parameters()]
    _check_grads(names, got, want)
    bn_w = net.body[0][1].weight
    gw = dict(zip(names, got))["module.body.0.1.weight"]
    assert gw[K].abs().sum() > 0  # the query of theta_K
    assert (gw[0].abs().sum() > 0) == (not first_order)  # the support of step 0, through the inner gradient
    for i, ((m, v), (rm, rv)) in enumerate(zip(_stats(net), ref_stats)):
        assert_close(m, rm, 1e-12, f"running_mean of block {i}")
        assert_close(v, rv, 1e-12, f"running_var of block {i}")
    assert bn_w.shape == (K + 1, 3)


@pytest.mark.parametrize("K", [1, 3])
def test_adapt_at_meta_test_uses_row_k_and_updates_nothing(request, K):
    """``adapt`` (meta-test) normalises with each batch's statistics and row k's weights,
    the fast model is at step K, and no running statistics change; in eval mode the inner
    loop and the query use the running statistics of row k. Gradients flow as in training."""
    g = seeded(request)
    net = _net(g, K)
    pp = mk.MAMLPlusPlus(net, lr=0.1, steps=K, loss="cross_entropy", msl_epochs=0, first_order_epochs=0)
    xs, ys, xq, yq = _data(g, T=3, N=2, Nq=3)
    rates = _rates(pp, net)
    before = _stats(net)
    for train in (True, False):
        net.train(train)
        fast = pp.adapt(xs, ys)
        assert fast.step == K
        got = torch.stack([F.cross_entropy(o, y) for o, y in zip(fast(xq), yq)])
        ref, _ = _reference(net, rates, xs, ys, xq, yq, K, False, None, train=train, update=False)
        assert_close(got, ref, RTOL, f"query losses (train={train})")
        a = torch.autograd.grad(got.sum(), list(pp.parameters()), allow_unused=True)
        b = torch.autograd.grad(ref.sum(), list(pp.parameters()), allow_unused=True)
        _check_grads([f"{n} (train={train})" for n, _ in pp.named_parameters()], a, b)
        # eval mode: meta_loss uses and updates no statistics either
        if not train:
            ref_ml, _ = _reference(net, rates, xs, ys, xq, yq, K, False, None, train=False)
            assert_close(pp.meta_loss(xs, ys, xq, yq, reduction="none"), ref_ml, RTOL, "eval meta_loss")
        for (m, v), (m0, v0) in zip(_stats(net), before):
            assert torch.equal(m, m0) and torch.equal(v, v0)
    # every fast model of the multi-step path is at its own step
    net.train()
    path = pp._adapt_generic(xs, ys, K, False, all_steps=True)
    assert [f.step for f in path] == list(range(1, K + 1))
    assert [tuple(p.shape) for p in fast.params] == [(3, *p.shape) for p in net.parameters()]


def test_per_step_layer_matches_batchnorm2d(request):
    """At step k, ``PerStepBatchNorm2d`` is ``nn.BatchNorm2d`` with row k's weight, bias and
    running statistics, in training (batch statistics, momentum update of row k only) and
    eval mode; outside ``inner_step`` it is at step 0 and updates row 0; with
    ``update_stats=False`` nothing changes."""
    g = seeded(request)
    C, K = 5, 3
    layer = PerStepBatchNorm2d(C, steps=K, momentum=0.3).to(DT)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(K + 1, C, generator=g, dtype=DT) + 0.5)
        layer.bias.copy_(torch.randn(K + 1, C, generator=g, dtype=DT))
        layer.running_mean.copy_(torch.randn(K + 1, C, generator=g, dtype=DT))
        layer.running_var.copy_(torch.rand(K + 1, C, generator=g, dtype=DT) + 0.5)
    x = torch.randn(7, C, 3, 5, generator=g, dtype=DT)
    for k in (None, 0, 2, K):
        row = 0 if k is None else k
        plain = torch.nn.BatchNorm2d(C, momentum=0.3).to(DT)
        with torch.no_grad():
            plain.weight.copy_(layer.weight[row])
            plain.bias.copy_(layer.bias[row])
            plain.running_mean.copy_(layer.running_mean[row])
            plain.running_var.copy_(layer.running_var[row])
        before = layer.running_mean.clone(), layer.running_var.clone()
        if k is None:
            out = layer(x)
        else:
            with inner_step(k, update_stats=True):
                out = layer(x)
        assert_close(out, plain(x), 1e-12, f"step {k}")
        assert_close(layer.running_mean[row], plain.running_mean, 1e-14, f"running_mean row {row}")
        assert_close(layer.running_var[row], plain.running_var, 1e-14, f"running_var row {row}")
        others = [r for r in range(K + 1) if r != row]
        assert torch.equal(layer.running_mean[others], before[0][others])
        with inner_step(row):  # no update
            frozen = layer.running_mean.clone()
            layer(x)
            assert torch.equal(layer.running_mean, frozen)
        layer.eval(), plain.eval()
        with inner_step(row, update_stats=True):
            assert_close(layer(x), plain(x), 1e-12, f"eval step {k}")
        assert torch.equal(layer.running_mean[row], plain.running_mean)
        layer.train()


def test_state_dict_round_trip(request):
    """A trained learner's state (model, per-step batch-norm rows and statistics, rates)
    loads into a fresh one, which then gives the same objective and gradient."""
    g = seeded(request)
    K = 2
    net = _net(g, K, hidden=4, ways=2)
    pp = mk.MAMLPlusPlus(net, lr=0.1, steps=K, loss="cross_entropy", msl_epochs=3, first_order_epochs=1)
    opt = torch.optim.Adam(pp.parameters(), lr=0.01)
    xs, ys, xq, yq = _data(g, T=2, N=3, Nq=3, ways=2)
    for epoch in range(2):
        pp.set_epoch(epoch)
        opt.zero_grad()
        pp.meta_loss(xs, ys, xq, yq).backward()
        opt.step()
    state = pp.state_dict()
    assert state["module.body.1.1.running_var"].shape == (K + 1, 4) and state["module.body.2.1.bias"].shape == (K + 1, 4)
    fresh = mk.MAMLPlusPlus(mk.Conv4(1, 2, 4, 16, per_step_bn=K).to(DT), lr=0.5, steps=K, loss="cross_entropy",
                            msl_epochs=3, first_order_epochs=1)
    fresh.load_state_dict(state)
    fresh.set_epoch(1)
    a, b = pp.meta_loss(xs, ys, xq, yq), fresh.meta_loss(xs, ys, xq, yq)
    assert_close(b, a, 1e-12, "objective")
    _check_grads([n for n, _ in pp.named_parameters()], torch.autograd.grad(b, list(fresh.parameters())),
                 torch.autograd.grad(a, list(pp.parameters())))
    for (m, v), (m2, v2) in zip(_stats(pp.module), _stats(fresh.module)):
        assert torch.equal(m, m2) and torch.equal(v, v2)


def test_maml_and_adapted_affine(request):
    """Plain MAML on a per-step Conv4 with fewer steps than its rows uses rows 0..steps;
    ``adapt_affine=True`` puts the batch-norm rows in the inner loop (a rate each, adapted
    per task); plain Conv4 keeps nn.BatchNorm2d and adapts everything."""
    g = seeded(request)
    net = _net(g, 3)
    maml = mk.MAML(net, lr=0.1, steps=2, loss="cross_entropy")
    xs, ys, xq, yq = _data(g, T=2, N=3, Nq=2)
    fixed = mk.generic.fixed_names(net)
    rates = {n: torch.full((2,), 0.1, dtype=DT) for n, _ in net.named_parameters() if n not in fixed}
    ref, ref_stats = _reference(net, rates, xs, ys, xq, yq, 2, False, None)
    assert_close(maml.meta_loss(xs, ys, xq, yq, reduction="none"), ref, RTOL, "MAML losses")
    layer = PerStepBatchNorm2d(4, steps=2, adapt_affine=True)
    assert layer.inner_loop_fixed == ()
    seq = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), layer, torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 2))
    msgd = mk.MetaSGD(seq, lr=0.1, steps=2, loss="cross_entropy")
    assert len(msgd.lrs) == 6 and tuple(msgd.lrs[2].shape) == (3, 4)
    fast = msgd.adapt(torch.randn(2, 3, 1, 6, 6, generator=g), torch.randint(0, 2, (2, 3), generator=g))
    assert not torch.equal(fast.params[2][0], fast.params[2][1])
    plain = mk.Conv4(1, 3, 4, 16)
    assert mk.generic.fixed_names(plain) == [] and plain.per_step_bn is None
    assert mk.generic.fixed_names(_net(g, 1)) == [f"body.{i}.1.{a}" for i in range(4) for a in ("weight", "bias")]


def test_bad_input():
    with pytest.raises(ValueError, match="per_step_bn must be >= 1"):
        mk.Conv4(per_step_bn=0)
    with pytest.raises(TypeError, match="per_step_bn must be an int"):
        mk.Conv4(per_step_bn=2.5)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        PerStepBatchNorm2d(4, steps=0)
    with pytest.raises(ValueError, match=r"momentum must be in \(0, 1\]"):
        PerStepBatchNorm2d(4, steps=1, momentum=0)
    with pytest.raises(TypeError, match="adapt_affine must be a bool"):
        PerStepBatchNorm2d(4, steps=1, adapt_affine=1)
    layer = PerStepBatchNorm2d(4, steps=2)
    with pytest.raises(ValueError, match=r"built for steps=2 \(rows 0..2\) but is called at inner step 3"):
        with inner_step(3):
            layer(torch.randn(3, 4, 2, 2))
    with pytest.raises(ValueError, match="step must be >= 0"):
        with inner_step(-1):
            pass
    with pytest.raises(ValueError, match=r"PerStepBatchNorm2d\(4\) takes \[N, 4, H, W\]"):
        layer(torch.randn(3, 5, 2, 2))
    net = mk.Conv4(1, 3, 2, 16, per_step_bn=2)
    with pytest.raises(ValueError, match=r"steps=3, but PerStepBatchNorm2d 'body.0.1' has rows for 2 inner steps.*"
                                         r"exactly 3.*per_step_bn=3"):
        mk.MAMLPlusPlus(net, steps=3)
    with pytest.raises(ValueError, match="steps=1, but .*exactly 1"):
        mk.MAMLPlusPlus(net, steps=1)
    xs, ys = torch.randn(2, 3, 1, 16, 16), torch.randint(0, 3, (2, 3))
    maml = mk.MAML(net, steps=3, loss="cross_entropy")
    with pytest.raises(ValueError, match=r"steps=3, but .*3 or more"):
        maml.meta_loss(xs, ys, xs, ys)
    with pytest.raises(ValueError, match=r"steps=4, but"):
        mk.MAML(net, steps=1, loss="cross_entropy").adapt(xs, ys, steps=4)
    vm = mk.MAML(net, steps=1, loss="cross_entropy", generic_mode="vmap", first_order=True)
    with pytest.raises(ValueError, match="generic_mode='vmap' cannot run PerStepBatchNorm2d 'body.0.1' in training"):
        vm.meta_loss(xs, ys, xs, ys)
    net.eval()  # the running statistics: vmap runs, and agrees with the loop
    loop = mk.MAML(net, steps=1, loss="cross_entropy", generic_mode="loop", first_order=True)
    assert_close(vm.meta_loss(xs, ys, xs, ys, reduction="none"), loop.meta_loss(xs, ys, xs, ys, reduction="none"),
                 2e-5, "vmap against loop in eval mode (float32)")


def test_build_learner_mamlpp_conv4_has_per_step_bn(request):
    """``metakern train --model conv4 --algo mamlpp`` (``train.build_learner``) builds the
    Conv-4 with per-step batch norm for its steps; the other algorithms keep nn.BatchNorm2d."""
    from test_fewshot_models import ImageTask
    from metakern import train

    task = ImageTask(ways=3, size=16)
    pp = train.build_learner("mamlpp", task, model="conv4", filters=3, steps=2)
    assert pp.module.per_step_bn == 2 and isinstance(pp.module.body[3][1], PerStepBatchNorm2d)
    assert len(pp.lrs) == 10  # four convolutions and the head, weight and bias each
    opt = torch.optim.Adam(pp.parameters(), lr=1e-3)
    loss = train.meta_step(pp, opt, task.sample(2, seeded(request)))
    assert loss == loss and loss >= 0
    assert train.build_learner("maml", task, model="conv4", filters=3).module.per_step_bn is None
