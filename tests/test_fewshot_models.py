"""The few-shot image models (Conv4, OmniglotMLP) and the learners on them, against an
unrolled float64 autograd reference (tests/reference.py: module_meta_loss)."""
import pytest
import torch
from torch import nn

import metakern as mk
import reference as R
from helpers import RTOL, assert_close, backends_under_test, seeded
from metakern import train
from metakern.nn import fused_spec

DT = torch.float64
FUSED_BACKENDS = [b for b in backends_under_test() if b in ("torch", "cpp")]


def _episodes(g, T, ways, shots, queries, channels=1, size=28, dtype=DT):
    """Random images in [0, 1] and class-major cross-entropy labels (as the few-shot samplers give them)."""
    xs = torch.rand(T, ways * shots, channels, size, size, generator=g, dtype=dtype)
    xq = torch.rand(T, ways * queries, channels, size, size, generator=g, dtype=dtype)
    ys = torch.arange(ways).repeat_interleave(shots).expand(T, -1).contiguous()
    yq = torch.arange(ways).repeat_interleave(queries).expand(T, -1).contiguous()
    return xs, ys, xq, yq


def _seed_modules(g):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))


def _compare(learner, batch, want_loss, rtol=RTOL[DT]):
    """``learner``'s meta-loss and meta-gradient (over ``learner.parameters()``) against the reference's."""
    params = list(learner.parameters())
    want = torch.autograd.grad(want_loss, params, allow_unused=True)
    got_loss = learner.meta_loss(*batch)
    got = torch.autograd.grad(got_loss, params, allow_unused=True)
    assert_close(got_loss, want_loss, rtol, "meta-loss")
    assert all(v is not None for v in got + want), "a parameter got no gradient"
    # the scale of the whole meta-gradient: a convolution's bias before batch norm (training
    # mode) has a gradient of exactly 0, so rounding alone is all either side gives it
    scale = max(v.abs().max().item() for v in want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, rtol, f"meta-gradient of parameter {i}", floor=scale)
    return got


# ----------------------------------------------------------------------------- the models


@pytest.mark.parametrize("channels,size,hidden,features", [
    (1, 28, 8, 8), (3, 84, 8, 8 * 25),      # small, at Omniglot's and mini-ImageNet's image sizes
    (1, 28, 64, 64), (3, 84, 32, 32 * 25),  # the paper's widths: 64 filters (Omniglot), 32 (mini-ImageNet)
    (1, 16, 4, 4), (2, 31, 5, 5),           # the smallest size four poolings allow; an odd size
])
def test_conv4_shapes(request, channels, size, hidden, features):
    g = seeded(request)
    net = mk.Conv4(in_channels=channels, ways=7, hidden=hidden, image_size=size)
    x = torch.rand(3, channels, size, size, generator=g)
    assert net.features == features and net.head.in_features == features
    assert net.body(x).shape == (3, features)
    assert net(x).shape == (3, 7)
    convs = [m for m in net.body.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == \
        [(channels, hidden, (3, 3), (1, 1))] + [(hidden, hidden, (3, 3), (1, 1))] * 3
    kinds = [type(m) for m in net.body[0]]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert fused_spec(net)[0] is None and fused_spec(net.head)[0] == ((features, 7), "identity")


@pytest.mark.parametrize("kw,err,text", [
    ({"image_size": 15}, ValueError, "at least 16"), ({"hidden": 0}, ValueError, "hidden"),
    ({"ways": 2.0}, TypeError, "ways"), ({"in_channels": True}, TypeError, "in_channels"),
])
def test_conv4_rejects_bad_arguments(kw, err, text):
    with pytest.raises(err, match=text):
        mk.Conv4(**kw)


def test_conv4_rejects_images_of_another_shape():
    net = mk.Conv4(in_channels=1, hidden=4, image_size=28)
    with pytest.raises(ValueError, match=r"Conv4 takes images \[N, 1, 28, 28\].*image_size=28"):
        net(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="Conv4 takes images"):
        net(torch.zeros(2, 1, 32, 32))


def test_omniglot_mlp_takes_the_fused_path():
    net = mk.OmniglotMLP(in_features=196, ways=20)
    assert net.dims == (196, 256, 128, 64, 64, 20) and net.activation == "relu"
    assert fused_spec(net) == ((net.dims, "relu"), "")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    for learner in (mk.MAML(net), mk.MetaSGD(net)):
        assert learner.fused, learner.generic_reason


# ------------------------------------------------------------- the learners against the reference


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("algo", ["maml", "fomaml", "metasgd"])
@pytest.mark.parametrize("steps", [1, 2])
def test_mlp_learners_on_images(request, backend, algo, steps):
    """MAML, FOMAML and Meta-SGD with the paper's MLP on images [T, N, 1, 14, 14], fused."""
    g = seeded(request)
    _seed_modules(g)
    net = mk.OmniglotMLP(in_features=14 * 14, ways=5).to(DT)
    lr = 0.1 + 0.3 * float(torch.rand((), generator=g))
    if algo == "metasgd":
        learner = mk.MetaSGD(net, lr=lr, steps=steps, loss="cross_entropy", backend=backend)
        with torch.no_grad():  # per-element rates that differ
            for r in learner.lrs:
                r.mul_(0.5 + torch.rand(r.shape, generator=g, dtype=DT))
        rates = list(learner.lrs)
    else:
        learner = mk.MAML(net, lr=lr, steps=steps, first_order=algo == "fomaml", loss="cross_entropy",
                          backend=backend)
        rates = lr
    assert learner.fused
    batch = _episodes(g, T=3, ways=5, shots=1, queries=3, size=14)
    want = R.module_meta_loss(net, *batch, rates, steps, first_order=algo == "fomaml", embed=lambda x: x.flatten(1))
    _compare(learner, batch, want)
    # the adapted fast models take the images as well
    xs, ys, xq, yq = batch
    logits = learner.adapt(xs, ys)(xq)
    assert logits.shape == (3, 15, 5)
    assert_close(nn.functional.cross_entropy(logits.transpose(1, 2), yq), want, RTOL[DT], "adapt(xs, ys)(xq)")


@pytest.mark.parametrize("first_order,steps", [(False, 1), (False, 2), (True, 2)])
def test_maml_conv4_generic_path(request, first_order, steps):
    """MAML and FOMAML on Conv4 (generic path): batch norm with each task's own statistics."""
    g = seeded(request)
    _seed_modules(g)
    net = mk.Conv4(in_channels=1, ways=5, hidden=8, image_size=28).to(DT)
    maml = mk.MAML(net, lr=0.1, steps=steps, first_order=first_order, loss="cross_entropy")
    assert not maml.fused
    batch = _episodes(g, T=3, ways=5, shots=1, queries=2)
    want = R.module_meta_loss(net, *batch, 0.1, steps, first_order=first_order)
    grads = _compare(maml, batch, want)
    assert all(v.abs().sum() > 0 for v, p in zip(grads, net.parameters()) if p.dim() > 1)  # weights


def test_maml_conv4_mini_imagenet_size(request):
    """The same at mini-ImageNet's size: 3 channels, 84x84 (one task, one step)."""
    g = seeded(request)
    _seed_modules(g)
    net = mk.Conv4(in_channels=3, ways=5, hidden=4, image_size=84).to(DT)
    maml = mk.MAML(net, lr=0.05, steps=1, loss="cross_entropy")
    batch = _episodes(g, T=1, ways=5, shots=1, queries=1, channels=3, size=84)
    _compare(maml, batch, R.module_meta_loss(net, *batch, 0.05, 1))
    assert maml.adapt(batch[0], batch[1])(batch[2]).shape == (1, 5, 5)


@pytest.mark.parametrize("first_order,steps", [(False, 1), (False, 3), (True, 2)])
def test_anil_conv4_body_fused_head(request, first_order, steps):
    """ANIL with the Conv4 body and its linear head adapted on the fused kernels; the body
    normalises each task's support and query sets by their own statistics."""
    g = seeded(request)
    _seed_modules(g)
    net = mk.Conv4(in_channels=1, ways=5, hidden=8, image_size=28).to(DT)
    anil = mk.ANIL(net.body, net.head, lr=0.3, steps=steps, first_order=first_order, loss="cross_entropy")
    assert anil.head.fused
    batch = _episodes(g, T=3, ways=5, shots=1, queries=2)
    want = R.module_meta_loss(net.head, *batch, 0.3, steps, first_order=first_order, embed=net.body)
    grads = _compare(anil, batch, want)
    assert all(v.abs().sum() > 0 for v, p in zip(grads, net.body.parameters()) if p.dim() > 1)  # body weights


def test_anil_features_use_each_tasks_statistics(request):
    g = seeded(request)
    _seed_modules(g)
    net = mk.Conv4(in_channels=1, ways=5, hidden=4, image_size=16).to(DT)
    anil = mk.ANIL(net.body, net.head, loss="cross_entropy")
    x = torch.rand(3, 4, 1, 16, 16, generator=g, dtype=DT)
    stats = {n: b.clone() for n, b in net.body.named_buffers()}
    got = anil.features(x)
    for n, b in net.body.named_buffers():  # the generic path's rule: no running-statistics update
        assert torch.equal(b, stats[n]), f"{n} changed"
    per_task = torch.stack([net.body(x[t]) for t in range(3)])
    assert_close(got, per_task, RTOL[DT], "training mode")
    net.eval()  # running statistics: one pass over all the points gives the same
    assert_close(anil.features(x), net.body(x.flatten(0, 1)).view(3, 4, -1), RTOL[DT], "eval mode")


# ------------------------------------------------------------------ images on the fused path


def test_fused_learners_refuse_points_of_the_wrong_size(request):
    g = seeded(request)
    maml = mk.MAML(mk.OmniglotMLP(), loss="cross_entropy")
    xs, ys, xq, yq = _episodes(g, T=2, ways=5, shots=1, queries=1, size=14, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"xs has points of shape \(1, 14, 14\) \(196 values\).*takes 784"):
        maml.meta_loss(xs, ys, xq, yq)
    with pytest.raises(ValueError, match=r"x has points of shape \(1, 14, 14\).*784"):
        maml.adapt(xs, ys)
    right = _episodes(g, T=2, ways=5, shots=1, queries=1, size=28, dtype=torch.float32)
    fast = maml.adapt(right[0], right[1])
    with pytest.raises(ValueError, match="784"):
        fast(xq)
    assert fast(right[2].flatten(2)).shape == (2, 5, 5)  # flat points are taken as they are


def test_functional_api_says_how_to_flatten():
    params = list(mk.OmniglotMLP().parameters())
    x = torch.rand(2, 5, 1, 28, 28)
    with pytest.raises(ValueError, match=r"flatten each point with x.flatten\(2\)"):
        mk.functional.adapt(params, x, torch.zeros(2, 5, dtype=torch.int64), lr=0.1, loss="cross_entropy")


# -------------------------------------------------------------------------------- build_learner


class ImageTask:
    """A stand-in for an image sampler: random images [T, N, C, S, S] and class-major labels."""

    loss = "cross_entropy"

    def __init__(self, ways=5, channels=1, size=16, shots=1, queries=2):
        self.input_shape, self.out_features = (channels, size, size), ways
        self.in_features = channels * size * size
        self.ways, self.shots, self.queries = ways, shots, queries

    def sample(self, batch_size, generator=None, device=None, dtype=torch.float32):
        return _episodes(generator, batch_size, self.ways, self.shots, self.queries, self.input_shape[0],
                         self.input_shape[1], dtype=dtype)


@pytest.mark.parametrize("model", train.MODELS)
@pytest.mark.parametrize("algo", train.ALGORITHMS)
def test_build_learner_on_images(request, algo, model):
    task = ImageTask()
    learner = train.build_learner(algo, task, model=model, filters=4, hidden=None if model == "conv4" else (16,))
    inner = learner.head if algo == "anil" else learner
    if model == "mlp" or algo == "anil":
        assert inner.fused, inner.generic_reason
    else:
        assert not inner.fused and isinstance(learner.module, mk.Conv4)
    if model == "conv4" and algo == "anil":
        assert isinstance(learner.head.module, nn.Linear) and learner.head.module.in_features == 4
    assert isinstance(learner, {"maml": mk.MAML, "fomaml": mk.MAML, "metasgd": mk.MetaSGD, "reptile": mk.Reptile,
                                "anil": mk.ANIL, "mamlpp": mk.MAMLPlusPlus}[algo])
    # MAML++ starts first order (derivative-order annealing, epoch 0)
    assert getattr(inner, "first_order") == (algo in ("fomaml", "reptile", "mamlpp"))
    opt = torch.optim.SGD(learner.parameters(), lr=1e-3)
    loss = train.meta_step(learner, opt, task.sample(2, seeded(request)))
    assert loss == loss and loss >= 0


def test_build_learner_paper_mlp_on_flat_and_image_tasks():
    learner = train.build_learner("maml", ImageTask(size=28), hidden=mk.OmniglotMLP.HIDDEN)
    assert learner.dims == (784, 256, 128, 64, 64, 5)
    assert train.input_shape(mk.tasks.Sinusoid()) == (1,)
    assert train.build_learner("maml", mk.tasks.Sinusoid()).dims == (1, 40, 40, 1)  # the default widths


def test_build_learner_rejects_bad_models():
    with pytest.raises(ValueError, match=r"model must be one of \('mlp', 'conv4'\)"):
        train.build_learner("maml", ImageTask(), model="resnet")
    with pytest.raises(ValueError, match=r"model='conv4' needs a task of square images.*\(1,\)"):
        train.build_learner("maml", mk.tasks.Sinusoid(), model="conv4")
    with pytest.raises(ValueError, match="filters="):
        train.build_learner("maml", ImageTask(), model="conv4", hidden=(8,))
    with pytest.raises(ValueError, match="filters must be >= 1"):
        train.build_learner("maml", ImageTask(), model="conv4", filters=0)
