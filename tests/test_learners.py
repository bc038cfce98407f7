"""Learners end to end: fused against generic path, Reptile, ANIL, state_dict, a short sine run."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metakern as mk
import reference as R
from helpers import assert_close, backends_under_test, seeded

DT = torch.float64


def _sine_batch(g, T=4, dtype=DT):
    return mk.tasks.Sinusoid().sample(T, g, dtype=dtype)


def _meta_grads(learner, batch, loss="mse"):
    xs, ys, xq, yq = batch
    learner.zero_grad()
    pred = learner.adapt(xs, ys)(xq)
    out = F.mse_loss(pred, yq) if loss == "mse" else F.cross_entropy(pred.reshape(-1, pred.shape[-1]), yq.reshape(-1))
    out.backward()
    return [p.grad.clone() for p in learner.parameters()]


@pytest.mark.parametrize("cls,kw", [(mk.MAML, {}), (mk.MAML, {"first_order": True}), (mk.MAML, {"learn_lr": True}),
                                    (mk.MetaSGD, {})])
@pytest.mark.parametrize("steps", [1, 3])
def test_fused_matches_generic(request, cls, kw, steps):
    """The same MLP through the fused op and through torch.func gives the same meta-gradient."""
    g = seeded(request)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    net = mk.MLP(1, [17, 9], 1, activation="tanh").to(DT)
    fused = cls(copy.deepcopy(net), lr=0.05, steps=steps, **kw)
    generic = cls(copy.deepcopy(net), lr=0.05, steps=steps, **kw)
    generic.fused = False  # force the torch.func path on the same model
    assert fused.fused
    batch = _sine_batch(g)
    for a, b in zip(_meta_grads(fused, batch), _meta_grads(generic, batch)):
        assert_close(a, b, 1e-9)


def test_model_kinds_take_the_right_path():
    assert mk.MAML(nn.Linear(10, 1)).fused
    assert mk.MAML(nn.Sequential(nn.Linear(3, 8), nn.Sigmoid(), nn.Linear(8, 2))).fused
    assert not mk.MAML(nn.Linear(10, 1, bias=False)).fused
    assert not mk.MAML(nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 2))).fused
    assert "generic" in repr(mk.MAML(nn.Linear(3, 1, bias=False)))


class SmallCNN(nn.Module):
    def __init__(self, ways=3):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.head = nn.Linear(4 * 4 * 4, ways, bias=False)

    def forward(self, x):
        h = torch.relu(self.norm(self.conv(x)))
        return self.head(F.max_pool2d(h, 2).flatten(1))


def _loop_reference(model, batch, lr, steps, loss):
    """Per-task unrolled autograd: the ground truth for the generic path."""
    xs, ys, xq, yq = batch
    names, params = zip(*model.named_parameters())
    total = 0
    for t in range(xs.shape[0]):
        p = list(params)
        for _ in range(steps):
            out = torch.func.functional_call(model, dict(zip(names, p)), (xs[t],))
            lt = F.mse_loss(out, ys[t]) if loss == "mse" else F.cross_entropy(out, ys[t])
            gs = torch.autograd.grad(lt, p, create_graph=True)
            p = [a - lr * b for a, b in zip(p, gs)]
        out = torch.func.functional_call(model, dict(zip(names, p)), (xq[t],))
        total = total + (F.mse_loss(out, yq[t]) if loss == "mse" else F.cross_entropy(out, yq[t]))
    return torch.autograd.grad(total / xs.shape[0], params)


# vmap over grad through LayerNorm gives a wrong second-order result in torch 2.14, so
# "auto" takes the loop for it (test_auto_mode_avoids_vmap_for_layernorm); forcing
# "vmap" on it is not a supported combination and is not listed here.
@pytest.mark.parametrize("kind,mode", [(k, m) for k in ("cnn", "bias_free", "layernorm") for m in ("auto", "vmap", "loop")
                                       if (k, m) != ("layernorm", "vmap")])
def test_generic_path_second_order(request, kind, mode):
    g = seeded(request)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    T, N = 3, 6
    if kind == "cnn":
        model, loss = SmallCNN().to(DT), "cross_entropy"
        xs, xq = torch.randn(T, N, 1, 8, 8, generator=g, dtype=DT), torch.randn(T, N, 1, 8, 8, generator=g, dtype=DT)
        ys, yq = torch.randint(0, 3, (T, N), generator=g), torch.randint(0, 3, (T, N), generator=g)
    else:
        mid = nn.LayerNorm(8) if kind == "layernorm" else nn.Tanh()
        model = nn.Sequential(nn.Linear(2, 8, bias=kind != "bias_free"), mid, nn.Linear(8, 1, bias=False)).to(DT)
        loss = "mse"
        xs, xq = torch.randn(T, N, 2, generator=g, dtype=DT), torch.randn(T, N, 2, generator=g, dtype=DT)
        ys, yq = torch.randn(T, N, 1, generator=g, dtype=DT), torch.randn(T, N, 1, generator=g, dtype=DT)
    maml = mk.MAML(model, lr=0.1, steps=2, loss=loss, generic_mode=mode)
    assert not maml.fused
    got = _meta_grads(maml, (xs, ys, xq, yq), loss)
    want = _loop_reference(model, (xs, ys, xq, yq), 0.1, 2, loss)
    for a, b in zip(got, want):
        assert_close(a, b, 1e-9)


def test_auto_mode_avoids_vmap_for_layernorm():
    from metakern import generic

    assert generic.choose_mode(nn.Sequential(nn.Linear(2, 8), nn.LayerNorm(8), nn.Linear(8, 1))) == "loop"
    assert generic.choose_mode(SmallCNN()) == "vmap"


def test_reptile_gradient_is_theta_minus_mean_adapted(request):
    g = seeded(request)
    net = mk.MLP(1, [12], 1).to(DT)
    rep = mk.Reptile(net, lr=0.05, steps=3)
    xs, ys, _, _ = _sine_batch(g)
    rep.zero_grad()
    rep.meta_loss(xs, ys).backward()
    adapted = R.adapt([p.detach().requires_grad_() for p in net.parameters()], xs, ys, 0.05, 3, first_order=True)
    for p, a in zip(net.parameters(), adapted):
        assert_close(p.grad, p.detach() - a.detach().mean(0), 1e-9)


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_meta_gradient_reaches_body(request, first_order):
    g = seeded(request)
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    body = nn.Sequential(nn.Linear(1, 16), nn.Tanh()).to(DT)
    head = nn.Linear(16, 1).to(DT)
    anil = mk.ANIL(body, head, lr=0.1, steps=2, first_order=first_order)
    assert anil.head.fused
    batch = _sine_batch(g)
    got = _meta_grads(anil, batch)
    # ground truth: autograd through features and the unrolled head adaptation
    xs, ys, xq, yq = batch
    fs, fq = body(xs), body(xq)
    hp = [head.weight, head.bias]
    adapted = R.adapt(hp, fs, ys, 0.1, 2, "mse", "identity", first_order)
    loss = F.mse_loss(R.mlp(adapted, fq, "identity"), yq)
    want = torch.autograd.grad(loss, list(anil.parameters()))
    for a, b in zip(got, want):
        assert_close(a, b, 1e-9)
    assert all(p.grad.abs().sum() > 0 for p in body.parameters())


def test_state_dict_round_trip(tmp_path):
    a = mk.MetaSGD(mk.MLP(1, [8], 1), lr=0.03)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p))
    torch.save(a.state_dict(), tmp_path / "ckpt.pt")
    b = mk.MetaSGD(mk.MLP(1, [8], 1), lr=0.5)
    b.load_state_dict(torch.load(tmp_path / "ckpt.pt"))
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    m = mk.MAML(mk.MLP(1, [8], 1), lr=0.2)
    m2 = mk.MAML(mk.MLP(1, [8], 1), lr=0.7)
    m2.load_state_dict(m.state_dict())
    assert float(m2.lr) == pytest.approx(0.2)


@pytest.mark.parametrize("backend", [b for b in backends_under_test() if b in ("torch", "cpp")])
def test_maml_learns_sine(backend):
    """A short MAML run on the standard sine protocol ends well below the un-adapted baseline."""
    from metakern import train as T

    torch.manual_seed(0)
    task = mk.tasks.Sinusoid()
    learner = T.build_learner("maml", task, inner_lr=0.01, steps=1, backend=backend)
    baseline = copy.deepcopy(learner)
    T.meta_train(learner, task, iterations=400, meta_batch=25, meta_lr=3e-3,
                 generator=torch.Generator().manual_seed(1), progress=False)
    after = T.meta_test(learner, task, tasks=300, generator=torch.Generator().manual_seed(2))
    before = T.meta_test(baseline, task, tasks=300, generator=torch.Generator().manual_seed(2))
    assert after.mean + after.ci95 < before.mean - before.ci95, (after, before)
    assert after.mean < 0.75 * before.mean, (after, before)
