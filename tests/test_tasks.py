import doctest
import math
import sys
import types

import numpy as np
import pytest
import torch

import metakern.tasks as tasks
from metakern.tasks import FewShotClassification, LinearRegression, Sinusoid, digits, make_task


def gen(seed):
    return torch.Generator().manual_seed(seed)


def synthetic(n_classes=10, per_class=12, F=3, ids=None):
    """Features whose first column is the row index, so rows can be traced back."""
    ids = list(range(n_classes)) if ids is None else ids
    labels = torch.tensor(ids).repeat_interleave(per_class)
    M = labels.numel()
    perm = torch.randperm(M, generator=gen(123))
    labels = labels[perm]
    features = torch.cat([torch.arange(M, dtype=torch.float64)[:, None], torch.randn(M, F - 1, dtype=torch.float64)], 1)
    return features, labels


def all_samplers():
    f, l = synthetic()
    return {
        "sine": Sinusoid(shots=5, queries=7),
        "linear": LinearRegression(in_features=3, out_features=2, shots=6, queries=4),
        "fewshot": FewShotClassification(f, l, ways=4, shots=2, queries=3),
    }


# ----------------------------------------------------------------------------- shapes, determinism


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(dtype):
    s = all_samplers()
    T = 6
    xs, ys, xq, yq = s["sine"].sample(T, gen(0), dtype=dtype)
    assert xs.shape == ys.shape == (T, 5, 1) and xq.shape == yq.shape == (T, 7, 1)
    assert {t.dtype for t in (xs, ys, xq, yq)} == {dtype}
    xs, ys, xq, yq = s["linear"].sample(T, gen(0), dtype=dtype)
    assert xs.shape == (T, 6, 3) and ys.shape == (T, 6, 2) and xq.shape == (T, 4, 3) and yq.shape == (T, 4, 2)
    assert {t.dtype for t in (xs, ys, xq, yq)} == {dtype}
    xs, ys, xq, yq = s["fewshot"].sample(T, gen(0), dtype=dtype)
    assert xs.shape == (T, 8, 3) and ys.shape == (T, 8) and xq.shape == (T, 12, 3) and yq.shape == (T, 12)
    assert xs.dtype == xq.dtype == dtype and ys.dtype == yq.dtype == torch.int64
    for sampler in s.values():
        assert all(t.is_contiguous() for t in sampler.sample(T, gen(0), dtype=dtype))


def test_attributes():
    s = all_samplers()
    assert (s["sine"].in_features, s["sine"].out_features, s["sine"].loss) == (1, 1, "mse")
    assert (s["linear"].in_features, s["linear"].out_features, s["linear"].loss) == (3, 2, "mse")
    assert (s["fewshot"].in_features, s["fewshot"].out_features, s["fewshot"].loss) == (3, 4, "cross_entropy")


def test_device_argument():
    for sampler in all_samplers().values():
        out = sampler.sample(3, gen(0), device="meta")
        assert all(t.device.type == "meta" for t in out)
        out = sampler.sample(3, gen(0), device=torch.device("cpu"))
        assert all(t.device.type == "cpu" for t in out)


@pytest.mark.parametrize("name", ["sine", "linear", "fewshot"])
def test_determinism_and_seed_dependence(name):
    sampler = all_samplers()[name]
    a = sampler.sample(5, gen(7))
    b = sampler.sample(5, gen(7))
    c = sampler.sample(5, gen(8))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[2], c[2])
    # a generator advances: two consecutive batches differ
    g = gen(7)
    assert not torch.equal(sampler.sample(5, g)[0], sampler.sample(5, g)[0])
    # the global generator is used when none is given
    torch.manual_seed(3)
    d = sampler.sample(5)
    torch.manual_seed(3)
    e = sampler.sample(5)
    for u, v in zip(d, e):
        assert torch.equal(u, v)


@pytest.mark.parametrize("name", ["sine", "linear", "fewshot"])
def test_same_draws_for_any_dtype(name):
    sampler = all_samplers()[name]
    a = sampler.sample(4, gen(1), dtype=torch.float64)
    b = sampler.sample(4, gen(1), dtype=torch.float32)
    for u, v in zip(a, b):
        assert torch.equal(u.to(v.dtype), v)


# ----------------------------------------------------------------------------- sine


def test_sine_ranges_and_params():
    task = Sinusoid(shots=10, queries=10)
    xs, ys, xq, yq, p = task.sample_with_params(500, gen(0), dtype=torch.float64)
    x = torch.cat([xs, xq], 1)
    assert x.min() >= -5.0 and x.max() <= 5.0
    assert x.min() < -4.5 and x.max() > 4.5  # covers the range
    A, phi = p["amplitude"], p["phase"]
    assert A.shape == phi.shape == (500,)
    assert A.min() >= 0.1 and A.max() <= 5.0 and phi.min() >= 0.0 and phi.max() <= math.pi
    assert A.max() - A.min() > 4.0 and phi.max() - phi.min() > 2.5
    y = torch.cat([ys, yq], 1)
    torch.testing.assert_close(y, A[:, None, None] * torch.sin(x - phi[:, None, None]))
    assert (y.abs() <= A[:, None, None] + 1e-12).all()


def test_sine_support_and_query_share_amplitude_and_phase():
    xs, ys, xq, yq, p = Sinusoid(shots=5, queries=9).sample_with_params(50, gen(2), dtype=torch.float64)
    for t in range(50):
        # y = A sin(x - phi) = (A cos phi) sin x + (-A sin phi) cos x: fit on support, predict query
        basis = lambda x: torch.cat([torch.sin(x), torch.cos(x)], 1)
        coef = torch.linalg.lstsq(basis(xs[t]), ys[t]).solution
        assert (basis(xs[t]) @ coef - ys[t]).abs().max() < 1e-9
        assert (basis(xq[t]) @ coef - yq[t]).abs().max() < 1e-9
        c1, c2 = coef[0, 0].item(), coef[1, 0].item()
        assert math.hypot(c1, c2) == pytest.approx(p["amplitude"][t].item(), abs=1e-9)
        assert math.atan2(-c2, c1) % (2 * math.pi) == pytest.approx(p["phase"][t].item(), abs=1e-9)


def test_sine_custom_ranges():
    xs, ys, xq, yq, p = Sinusoid(amplitude=(2.0, 2.0), phase=(0.5, 0.5), x_range=(0.0, 1.0)).sample_with_params(
        20, gen(0), dtype=torch.float64)
    assert (p["amplitude"] == 2.0).all() and (p["phase"] == 0.5).all()
    assert xs.min() >= 0 and xs.max() <= 1


# ----------------------------------------------------------------------------- linear


def test_linear_is_exactly_affine():
    task = LinearRegression(in_features=4, out_features=3, shots=8, queries=6)
    xs, ys, xq, yq, p = task.sample_with_params(20, gen(0), dtype=torch.float64)
    for t in range(20):
        X = torch.cat([xs[t], torch.ones(8, 1, dtype=torch.float64)], 1)
        sol = torch.linalg.lstsq(X, ys[t]).solution  # [in+1, out]
        assert (X @ sol - ys[t]).abs().max() < 1e-9
        Xq = torch.cat([xq[t], torch.ones(6, 1, dtype=torch.float64)], 1)
        assert (Xq @ sol - yq[t]).abs().max() < 1e-9  # query shares the task's map
        torch.testing.assert_close(sol[:-1].T, p["weight"][t])
        torch.testing.assert_close(sol[-1], p["bias"][t])


def test_linear_weight_scale_and_noise():
    w = LinearRegression(in_features=20, out_features=20, weight_scale=3.0).sample_with_params(50, gen(0))[4]["weight"]
    assert w.std().item() == pytest.approx(3.0, rel=0.05)
    clean = LinearRegression(in_features=2, noise=0.0).sample_with_params(10, gen(1), dtype=torch.float64)
    noisy = LinearRegression(in_features=2, noise=0.5).sample_with_params(10, gen(1), dtype=torch.float64)
    assert torch.equal(clean[0], noisy[0]) and torch.equal(clean[4]["weight"], noisy[4]["weight"])
    resid = noisy[1] - clean[1]
    assert 0.3 < resid.std().item() < 0.7


# ----------------------------------------------------------------------------- classification


def check_episodes(task, T=40, seed=0):
    features, labels = task.features, task.labels
    W, S, Q = task.ways, task.shots, task.queries
    sup, qry, task_classes = task.sample_indices(T, gen(seed))
    xs, ys, xq, yq = task.sample(T, gen(seed), dtype=torch.float64)
    assert sup.shape == (T, W * S) and qry.shape == (T, W * Q) and task_classes.shape == (T, W)
    # sample() uses the very same draws
    assert torch.equal(xs, features[sup]) and torch.equal(xq, features[qry])
    assert ys.min() >= 0 and ys.max() < W and yq.min() >= 0 and yq.max() < W
    for t in range(T):
        assert torch.equal(torch.bincount(ys[t], minlength=W), torch.full((W,), S))
        assert torch.equal(torch.bincount(yq[t], minlength=W), torch.full((W,), Q))
        used = torch.cat([sup[t], qry[t]])
        assert used.unique().numel() == used.numel()  # no example twice, support and query disjoint
        assert task_classes[t].unique().numel() == W  # distinct classes
        assert set(task_classes[t].tolist()) <= set(task.classes)
        # every example carries the original class behind its new label
        assert torch.equal(labels[sup[t]], task_classes[t][ys[t]])
        assert torch.equal(labels[qry[t]], task_classes[t][yq[t]])
    return task_classes


def test_fewshot_episodes():
    f, l = synthetic(n_classes=10, per_class=12)
    task = FewShotClassification(f, l, ways=5, shots=3, queries=9)  # shots+queries == per_class: uses them all
    task_classes = check_episodes(task)
    # all classes are used and the relabeling is random, not sorted by class id
    assert set(task_classes.flatten().tolist()) == set(range(10))
    assert any(task_classes[t].tolist() != sorted(task_classes[t].tolist()) for t in range(len(task_classes)))


def test_fewshot_arbitrary_class_ids_and_int32_labels():
    f, l = synthetic(n_classes=4, per_class=6, ids=[-3, 7, 100, 42])
    task = FewShotClassification(f, l.int(), ways=4, shots=2, queries=4)
    assert task.classes == (-3, 7, 42, 100)
    check_episodes(task)


def test_fewshot_classes_subset():
    f, l = synthetic()
    task = FewShotClassification(f, l, ways=3, shots=2, queries=2, classes=[8, 2, 5, 0])
    assert task.classes == (0, 2, 5, 8)
    task_classes = check_episodes(task)
    assert set(task_classes.flatten().tolist()) == {0, 2, 5, 8}
    assert FewShotClassification(f, l, 3, 2, 2, classes=torch.tensor([1, 2, 3])).classes == (1, 2, 3)


def test_fewshot_split_is_disjoint():
    f, l = synthetic(n_classes=10)
    task = FewShotClassification(f, l, ways=3, shots=2, queries=4)
    train, test = task.split(6)
    assert train.classes == (0, 1, 2, 3, 4, 5) and test.classes == (6, 7, 8, 9)
    a, b = task.split(6, generator=gen(0))
    a2, b2 = task.split(6, generator=gen(0))
    assert a.classes == a2.classes and b.classes == b2.classes
    assert len(a.classes) == 6 and not set(a.classes) & set(b.classes)
    assert set(a.classes) | set(b.classes) == set(range(10))
    assert (a.ways, a.shots, a.queries) == (3, 2, 4)
    ta, tb = check_episodes(a), check_episodes(b)
    assert not set(ta.flatten().tolist()) & set(tb.flatten().tolist())
    # a different evaluation setting on the test classes
    ev = FewShotClassification(f, l, ways=4, shots=1, queries=5, classes=b.classes)
    check_episodes(ev)
    with pytest.raises(ValueError, match="ways"):
        task.split(8)  # second part has 2 < ways classes


def test_fewshot_features_on_other_device_are_indexed_in_place():
    f, l = synthetic()
    task = FewShotClassification(f.to("meta"), l, ways=2, shots=1, queries=1)
    xs, ys, xq, yq = task.sample(3, gen(0))
    assert xs.device.type == "meta" and ys.device.type == "meta"


# ----------------------------------------------------------------------------- digits and make_task


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn...` raise ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install scikit-learn.*metakern\[digits\]"):
        digits()
    with pytest.raises(ImportError, match="scikit-learn"):
        make_task("digits")


def fake_sklearn(monkeypatch):
    rng = np.random.default_rng(0)
    target = np.repeat(np.arange(10), 30)
    data = rng.integers(0, 17, size=(300, 64)).astype(np.float64)
    mod = types.ModuleType("sklearn.datasets")
    mod.load_digits = lambda: types.SimpleNamespace(data=data, target=target)
    pkg = types.ModuleType("sklearn")
    pkg.datasets = mod
    monkeypatch.setitem(sys.modules, "sklearn", pkg)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", mod)


def test_digits_with_stubbed_sklearn(monkeypatch):
    fake_sklearn(monkeypatch)
    train, test, full = digits(split="train"), digits(split="test"), digits(ways=10, split="all")
    assert train.classes == (0, 1, 2, 3, 4) and test.classes == (5, 6, 7, 8, 9) and len(full.classes) == 10
    assert train.in_features == 64 and train.out_features == 5 and train.loss == "cross_entropy"
    assert 0.0 <= train.features.min() and train.features.max() <= 1.0 and train.features.max() > 0.9
    xs, ys, xq, yq = train.sample(4, gen(0))
    assert xs.shape == (4, 5, 64) and xq.shape == (4, 75, 64)
    check_episodes(test)
    assert make_task("digits", ways=3, shots=2, split="test").ways == 3
    with pytest.raises(ValueError, match="ways"):
        digits(ways=6, split="test")


def test_digits_real():
    pytest.importorskip("sklearn")
    task = digits(ways=5, shots=1, queries=15)
    xs, ys, xq, yq = task.sample(2, gen(0))
    assert xs.shape == (2, 5, 64) and xq.shape == (2, 75, 64) and 0 <= xs.min() and xs.max() <= 1


def test_make_task():
    assert isinstance(make_task("sine", shots=3), Sinusoid) and make_task("sine", shots=3).shots == 3
    lin = make_task("linear", in_features=2)
    assert isinstance(lin, LinearRegression) and lin.in_features == 2
    with pytest.raises(ValueError, match="choose from.*digits.*linear.*sine"):
        make_task("cosine")
    with pytest.raises(TypeError, match="name"):
        make_task(3)
    with pytest.raises(TypeError):
        make_task("sine", bogus=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA generator")
def test_cuda_generator_rejected_and_cuda_device():
    with pytest.raises(ValueError, match="generator"):
        SINE.sample(2, generator=torch.Generator(device="cuda"))
    for sampler in all_samplers().values():
        a = sampler.sample(3, gen(0), device="cuda")
        b = sampler.sample(3, gen(0))
        assert all(u.is_cuda and torch.equal(u.cpu(), v) for u, v in zip(a, b))


def test_docstring_examples():
    result = doctest.testmod(tasks, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 5


# ----------------------------------------------------------------------------- bad inputs

F, L = synthetic(n_classes=6, per_class=5)
SINE, LIN = Sinusoid(), LinearRegression()
FEW = FewShotClassification(F, L, ways=2, shots=2, queries=2)

BAD = [
    # (callable, exception, word the message must contain)
    (lambda: Sinusoid(shots=0), ValueError, "shots"),
    (lambda: Sinusoid(shots=2.0), TypeError, "shots"),
    (lambda: Sinusoid(shots=True), TypeError, "shots"),
    (lambda: Sinusoid(queries=-1), ValueError, "queries"),
    (lambda: Sinusoid(amplitude=(5.0, 0.1)), ValueError, "amplitude"),
    (lambda: Sinusoid(amplitude=(-1.0, 1.0)), ValueError, "amplitude"),
    (lambda: Sinusoid(amplitude=1.0), TypeError, "amplitude"),
    (lambda: Sinusoid(phase=(0.0, "pi")), TypeError, "phase"),
    (lambda: Sinusoid(x_range=(0.0, float("inf"))), ValueError, "x_range"),
    (lambda: Sinusoid(x_range=(1.0, 2.0, 3.0)), TypeError, "x_range"),
    (lambda: LinearRegression(in_features=0), ValueError, "in_features"),
    (lambda: LinearRegression(out_features=1.5), TypeError, "out_features"),
    (lambda: LinearRegression(noise=-0.1), ValueError, "noise"),
    (lambda: LinearRegression(noise="0"), TypeError, "noise"),
    (lambda: LinearRegression(weight_scale=float("nan")), ValueError, "weight_scale"),
    (lambda: SINE.sample(0), ValueError, "batch_size"),
    (lambda: LIN.sample(2.0), TypeError, "batch_size"),
    (lambda: SINE.sample(2, generator=0), TypeError, "generator"),
    (lambda: LIN.sample(2, generator=np.random.default_rng(0)), TypeError, "generator"),
    (lambda: SINE.sample(2, dtype=torch.int64), ValueError, "dtype"),
    (lambda: SINE.sample(2, dtype="float32"), TypeError, "dtype"),
    (lambda: SINE.sample(2, device=1.5), TypeError, "device"),
    (lambda: SINE.sample(2, device="nodevice"), ValueError, "device"),
    (lambda: FEW.sample(0), ValueError, "batch_size"),
    (lambda: FEW.sample_indices(2, generator="seed"), TypeError, "generator"),
    (lambda: FEW.sample(2, dtype=torch.int32), ValueError, "dtype"),
    (lambda: FewShotClassification(F.numpy(), L, 2, 1, 1), TypeError, "features"),
    (lambda: FewShotClassification(F.long(), L, 2, 1, 1), TypeError, "features"),
    (lambda: FewShotClassification(F[:, 0], L, 2, 1, 1), ValueError, "features"),
    (lambda: FewShotClassification(F, L.float(), 2, 1, 1), TypeError, "labels"),
    (lambda: FewShotClassification(F, L.tolist(), 2, 1, 1), TypeError, "labels"),
    (lambda: FewShotClassification(F, L[:-1], 2, 1, 1), ValueError, "labels"),
    (lambda: FewShotClassification(F, L, 0, 1, 1), ValueError, "ways"),
    (lambda: FewShotClassification(F, L, 7, 1, 1), ValueError, "ways"),
    (lambda: FewShotClassification(F, L, 2.0, 1, 1), TypeError, "ways"),
    (lambda: FewShotClassification(F, L, 2, 0, 1), ValueError, "shots"),
    (lambda: FewShotClassification(F, L, 2, 1, 0), ValueError, "queries"),
    (lambda: FewShotClassification(F, L, 2, 3, 3), ValueError, "shots + queries"),
    (lambda: FewShotClassification(F, L, 3, 1, 1, classes=[0, 1]), ValueError, "ways"),
    (lambda: FewShotClassification(F, L, 2, 1, 1, classes=[0, 99]), ValueError, "classes"),
    (lambda: FewShotClassification(F, L, 2, 1, 1, classes=[0, 1, 1]), ValueError, "classes"),
    (lambda: FewShotClassification(F, L, 2, 1, 1, classes=[]), ValueError, "classes"),
    (lambda: FewShotClassification(F, L, 2, 1, 1, classes=[0.0, 1.0]), TypeError, "classes"),
    (lambda: FewShotClassification(F, L, 2, 1, 1, classes=torch.tensor([0.0, 1.0])), TypeError, "classes"),
    (lambda: FewShotClassification(F, L, 2, 1, 1, classes="01"), TypeError, "classes"),
    (lambda: FewShotClassification(F, L, 2, 1, 1, classes=3), TypeError, "classes"),
    (lambda: FEW.split(6), ValueError, "n_train_classes"),
    (lambda: FEW.split(0), ValueError, "n_train_classes"),
    (lambda: FEW.split(3, generator=1), TypeError, "generator"),
    (lambda: digits(split="val"), ValueError, "split"),
    (lambda: digits(split=0), TypeError, "split"),
    (lambda: make_task("maml"), ValueError, "sine"),
]


@pytest.mark.parametrize("fn,exc,word", BAD, ids=[f"{i}-{w}" for i, (_, _, w) in enumerate(BAD)])
def test_bad_inputs(fn, exc, word):
    with pytest.raises(exc) as info:
        fn()
    assert word in str(info.value)
