"""Silent wrong answers found by using metakern as a new user would: each now gives the
right answer or a clear error."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metakern as mk
import metakern.functional as MF
from helpers import assert_close, seeded


def _sine(request, T=3):
    return mk.tasks.Sinusoid().sample(T, seeded(request), dtype=torch.float64)


class Doubled(nn.Linear):
    """An nn.Linear whose forward is not the plain layer."""

    def forward(self, x):
        return 2 * super().forward(x)


def _own_loss(model, xq, yq):
    return F.mse_loss(model(xq), yq)


@pytest.mark.parametrize("case", ["subclass", "hook", "subclass-in-sequential", "weight_norm"])
def test_altered_linear_models_take_the_generic_path(request, case):
    """steps=0: the meta-loss is the model's own loss, whatever its forward does."""
    torch.manual_seed(0)
    if case == "subclass":
        model = Doubled(1, 1)
    elif case == "hook":
        model = nn.Linear(1, 1)
        model.register_forward_hook(lambda m, i, o: o * 3)
    elif case == "subclass-in-sequential":
        model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), Doubled(8, 1))
    else:
        model = torch.nn.utils.parametrizations.weight_norm(nn.Linear(1, 1))
    model = model.double()
    maml = mk.MAML(model, steps=0)
    assert not maml.fused, maml.generic_reason
    xs, ys, xq, yq = _sine(request)
    assert_close(maml.meta_loss(xs, ys, xq, yq), _own_loss(model, xq, yq), 1e-12)


def test_plain_models_stay_fused():
    assert mk.MAML(nn.Linear(1, 1)).fused and mk.MAML(mk.MLP(1, [8], 1)).fused


def test_generic_path_checks_the_target_shape(request):
    model = nn.Sequential(nn.Linear(1, 8, bias=False), nn.Tanh(), nn.Linear(8, 1))  # bias-free: generic
    maml = mk.MAML(model.double())
    assert not maml.fused
    xs, ys, xq, yq = _sine(request)
    with pytest.raises(ValueError, match="y must have the model's output shape"):
        maml.adapt(xs, ys[..., 0])
    with pytest.raises(ValueError, match="yq must have the model's output shape"):
        maml.meta_loss(xs, ys, xq, yq[..., 0])


def test_generic_loop_adapts_under_inference_mode(request):
    """LayerNorm takes the loop; adapting at test time under inference mode works and
    gives the no_grad answer."""
    torch.manual_seed(0)
    maml = mk.MAML(nn.Sequential(nn.Linear(1, 8), nn.LayerNorm(8), nn.Linear(8, 1)).double(), steps=2)
    xs, ys, xq, yq = _sine(request)
    with torch.no_grad():
        ref = maml.adapt(xs, ys)(xq)
    with torch.inference_mode():
        got = maml.adapt(xs, ys)(xq)
    assert_close(got, ref, 1e-12)


@pytest.mark.parametrize("api", ["learner", "functional"])
def test_targets_that_want_a_gradient_are_refused(request, api):
    """The fused ops give no gradient to ys/yq: a clear error instead of a silent None."""
    xs, ys, xq, yq = _sine(request)
    maml = mk.MAML(mk.MLP(1, [8], 1).double())
    params = list(maml.module.parameters())
    for name in ("ys", "yq"):
        args = dict(xs=xs, ys=ys, xq=xq, yq=yq)
        args[name] = args[name].clone().requires_grad_()
        with pytest.raises(ValueError, match=f"{name} requires a gradient"):
            if api == "learner":
                maml.meta_loss(**args)
            else:
                MF.meta_loss(params, **args, lr=0.01)
    with pytest.raises(ValueError, match="y requires a gradient"):
        maml.adapt(xs, ys.clone().requires_grad_())
    with torch.no_grad():  # no gradient asked for: fine
        maml.meta_loss(xs, ys.clone().requires_grad_(), xq, yq)


@pytest.mark.parametrize("cls", [mk.MetaSGD, mk.Reptile])
def test_every_learner_takes_generic_mode(cls):
    model = nn.Sequential(nn.Linear(1, 4, bias=False), nn.Linear(4, 1))
    assert cls(model, generic_mode="loop").generic_mode == "loop"
    assert mk.ANIL(nn.Identity(), model, generic_mode="loop").head.generic_mode == "loop"
    with pytest.raises(ValueError, match="generic_mode"):
        cls(model, generic_mode="fast")
