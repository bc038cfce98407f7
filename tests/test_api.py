"""Bad input: a clear exception naming the argument, never a crash or a silent wrong answer."""
import pytest
import torch

import metakern as mk
import metakern.functional as MF
import reference as R
from helpers import RTOL, assert_close, backends_under_test, leaf, make_problem, seeded


def _ok(T=2, N=3, D=4, H=5, O=2, loss="mse"):
    params = [torch.randn(H, D), torch.randn(H), torch.randn(O, H), torch.randn(O)]
    x = torch.randn(T, N, D)
    y = torch.randn(T, N, O) if loss == "mse" else torch.randint(0, O, (T, N))
    return params, x, y


def _with(**over):
    params, x, y = _ok(loss=over.pop("_loss", "mse"))
    kw = dict(lr=0.1, steps=1, loss="mse", activation="relu", first_order=False, backend="torch")
    args = {"params": params, "x": x, "y": y}
    for k, v in over.items():
        if k in args:
            args[k] = v(args[k]) if callable(v) else v
        else:
            kw[k] = v
    return args, kw


BAD = [
    # (id, overrides, exception, text that must appear)
    ("params-not-list", dict(params=lambda p: p[0]), TypeError, "params"),
    ("params-odd", dict(params=lambda p: p[:3]), ValueError, "params"),
    ("params-elem-type", dict(params=lambda p: [p[0], 1.0, p[2], p[3]]), TypeError, "params[1]"),
    ("params-dtype", dict(params=lambda p: [p[0].double()] + p[1:]), TypeError, "params[0]"),
    ("params-chain", dict(params=lambda p: [p[0], p[1], torch.randn(2, 7), p[3]]), ValueError, "params[2]"),
    ("params-bias", dict(params=lambda p: [p[0], torch.randn(4), p[2], p[3]]), ValueError, "params[1]"),
    ("params-in", dict(params=lambda p: [torch.randn(5, 3)] + p[1:]), ValueError, "params[0]"),
    ("params-T", dict(params=lambda p: [torch.randn(7, 5, 4)] + p[1:]), ValueError, "T=2"),
    ("params-rank", dict(params=lambda p: [torch.randn(1, 1, 5, 4)] + p[1:]), ValueError, "params[0]"),
    ("x-type", dict(x=[[1.0]]), TypeError, "x"),
    ("x-rank", dict(x=lambda x: x[0]), ValueError, "x"),
    ("x-int", dict(x=lambda x: x.long()), TypeError, "x"),
    ("x-empty", dict(x=lambda x: x[:, :0]), ValueError, "x"),
    ("y-shape", dict(y=lambda y: y[:, :2]), ValueError, "y"),
    ("y-dtype", dict(y=lambda y: y.double()), TypeError, "y"),
    ("y-ce-float", dict(_loss="cross_entropy", loss="cross_entropy", y=lambda y: y.float()), TypeError, "int64"),
    ("y-ce-range", dict(_loss="cross_entropy", loss="cross_entropy", y=lambda y: y + 5), ValueError, "[0, 1]"),
    ("y-ce-negative", dict(_loss="cross_entropy", loss="cross_entropy", y=lambda y: y - 3), ValueError, "indices"),
    ("y-ce-shape", dict(_loss="cross_entropy", loss="cross_entropy", y=lambda y: y[..., None]), ValueError, "[T, N]"),
    ("lr-str", dict(lr="0.1"), TypeError, "lr"),
    ("lr-bool", dict(lr=True), TypeError, "lr"),
    ("lr-nan", dict(lr=float("nan")), ValueError, "lr"),
    ("lr-vector", dict(lr=torch.ones(3)), ValueError, "0-dim"),
    ("lr-int-tensor", dict(lr=torch.tensor(1)), TypeError, "lr"),
    ("lr-list-len", dict(lr=[torch.tensor(0.1)]), ValueError, "one tensor per parameter"),
    ("lr-list-shape", dict(lr=[torch.ones(2, 2), torch.ones(5), torch.ones(2, 5), torch.ones(2)]), ValueError, "lr[0]"),
    ("steps-neg", dict(steps=-1), ValueError, "steps"),
    ("steps-float", dict(steps=1.5), TypeError, "steps"),
    ("loss-name", dict(loss="l1"), ValueError, "loss"),
    ("activation-name", dict(activation="gelu"), ValueError, "activation"),
    ("first-order-type", dict(first_order="yes"), TypeError, "first_order"),
    ("backend-name", dict(backend="cuDNN"), ValueError, "backend"),
]


@pytest.mark.parametrize("over,exc,text", [pytest.param(o, e, t, id=i) for i, o, e, t in BAD])
def test_adapt_bad_input(over, exc, text):
    args, kw = _with(**over)
    with pytest.raises(exc) as info:
        MF.adapt(args["params"], args["x"], args["y"], **kw)
    assert text in str(info.value), str(info.value)


@pytest.mark.parametrize("backend", backends_under_test())
def test_bad_class_index_every_backend(backend):
    params, x, y = _ok(loss="cross_entropy")
    with pytest.raises(ValueError, match="class indices"):
        MF.adapt(params, x, y + 2, lr=0.1, loss="cross_entropy", backend=backend)


def test_unavailable_backend_lists_reasons():
    params, x, y = _ok()
    for name, reasons in mk.backends.available().items():
        if reasons:
            with pytest.raises(RuntimeError) as info:
                MF.adapt(params, x, y, lr=0.1, backend=name)
            assert name in str(info.value) and reasons[0][:20] in str(info.value)


def test_non_contiguous_inputs():
    params, x, y = _ok(T=3, N=5)
    nc_params = [p.t().contiguous().t() if p.dim() == 2 else p for p in params]
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)
    assert not xt.is_contiguous() and not nc_params[0].is_contiguous()
    a = MF.adapt(params, x, y, lr=0.1, steps=2)
    b = MF.adapt(nc_params, xt, y, lr=0.1, steps=2)
    for u, v in zip(a, b):
        assert torch.allclose(u, v, atol=1e-6)


def test_forward_bad_input():
    params, x, _ = _ok()
    with pytest.raises(ValueError, match="params"):
        MF.forward(params[:3], x, activation="relu")
    with pytest.raises(ValueError, match="activation"):
        MF.forward(params, x, activation="elu")


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "identity", "relu"])
def test_forward_uses_the_activation_of_adapt(request, act):
    """The list functional.adapt returns carries its activation: forward needs no repeat of it."""
    g = seeded(request)
    params, xs, ys, lr = make_problem(g, (3, 6, 5, 2), 3, 4, "mse")
    _, xq, _, _ = make_problem(g, (3, 6, 5, 2), 3, 7, "mse")
    fast = MF.adapt(params, xs, ys, lr=lr, steps=2, activation=act)
    ref = R.mlp(R.adapt([leaf(p, torch.float64, "cpu") for p in params], xs, ys, lr, 2, activation=act), xq, act)
    assert_close(MF.forward(fast, xq), ref, RTOL[torch.float64], "forward(adapt(...))")
    assert fast.activation == act and len(fast) == len(params)
    assert_close(MF.forward(fast, xq, activation=act), ref, RTOL[torch.float64], "the same activation repeated")


def test_forward_needs_an_activation_for_a_plain_list():
    g = seeded("test_forward_needs_an_activation_for_a_plain_list")
    params, x, y, _ = make_problem(g, (3, 6, 2), 2, 5, "mse")
    with pytest.raises(TypeError, match=r"needs activation= \('identity', 'relu', 'tanh' or 'sigmoid'\)"):
        MF.forward(params, x)
    fast = MF.adapt(params, x, y, lr=0.1, activation="tanh")
    with pytest.raises(TypeError, match="activation"):
        MF.forward([p.detach() for p in fast], x)  # a new plain list remembers nothing
    with pytest.raises(ValueError, match=r"activation='relu'.*adapted with activation='tanh'"):
        MF.forward(fast, x, activation="relu")


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_fast_model_params_carry_the_activation(request, act):
    g = seeded(request)
    xs, ys, xq = (torch.randn(3, n, d, generator=g, dtype=torch.float64) for n, d in ((5, 2), (5, 1), (6, 2)))
    maml = mk.MAML(mk.MLP(2, [8], 1, activation=act).double(), lr=0.1, steps=2)
    fast = maml.adapt(xs, ys)
    assert_close(MF.forward(fast.params, xq), fast(xq), RTOL[torch.float64], "forward(fast.params)")
    assert fast.params.activation == act


def test_learner_bad_input():
    with pytest.raises(TypeError, match="model"):
        mk.MAML("not a module")
    with pytest.raises(ValueError, match="steps"):
        mk.MAML(mk.MLP(1, [4], 1), steps=-2)
    with pytest.raises(ValueError, match="loss"):
        mk.MAML(mk.MLP(1, [4], 1), loss="hinge")
    with pytest.raises(ValueError, match="backend"):
        mk.MAML(mk.MLP(1, [4], 1), backend="fast")
    with pytest.raises(ValueError, match="hidden"):
        mk.MLP(1, [0], 1)
    maml = mk.MAML(mk.MLP(1, [4], 1))
    with pytest.raises(ValueError, match=r"\[T, N"):
        maml.adapt(torch.randn(5, 1), torch.randn(5, 1))
    with pytest.raises(ValueError, match="y"):
        maml.adapt(torch.randn(2, 5, 1), torch.randn(2, 4, 1))
    fast = maml.adapt(torch.randn(2, 5, 1), torch.randn(2, 5, 1))
    with pytest.raises(ValueError, match="tasks"):
        fast(torch.randn(3, 5, 1))
