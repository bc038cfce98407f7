"""Python-side registrations for the ops that ``metakern._C`` defines in C++.

``TORCH_LIBRARY(metakern, m)`` (``csrc/schema/ops.cpp``) declares the schemas and the
CPU/CUDA kernels; here they get fake (meta) implementations, for ``torch.compile``
and ``opcheck``, and autograd formulas: ``adapt_fwd`` is differentiated exactly
(second order) through ``adapt_bwd``, ``mlp_fwd`` through ``mlp_bwd``. The
first-order variant is a choice of the caller, made through ``metakern_py::adapt``.
``maml_fwd`` returns its own gradients (it is differentiated by ``metakern._ops``,
which calls it below the Autograd key), so it only gets a fake kernel here.
"""
import torch

_DONE = False


def register():
    global _DONE
    if _DONE:
        return
    _DONE = True
    from ._ops import reduce_adapt_grads, reduce_mlp_grads

    ops = torch.ops.metakern

    @torch.library.register_fake("metakern::adapt_fwd")
    def _(theta, lr, x, y, dims, steps, loss, act):
        return theta.new_empty((x.shape[0], theta.shape[-1]))

    @torch.library.register_fake("metakern::adapt_bwd")
    def _(grad, theta, lr, x, y, dims, steps, loss, act, first_order, need_x):
        return grad.new_empty(grad.shape), grad.new_empty(grad.shape), x.new_empty(x.shape)

    @torch.library.register_fake("metakern::mlp_fwd")
    def _(theta, x, dims, act):
        return x.new_empty((x.shape[0], x.shape[1], dims[-1]))

    @torch.library.register_fake("metakern::mlp_bwd")
    def _(grad_out, theta, x, dims, act, need_x):
        return x.new_empty((x.shape[0], theta.shape[-1])), x.new_empty(x.shape)

    @torch.library.register_fake("metakern::maml_fwd")
    def _(theta, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, need_grad, need_lr=True):
        n = xs.shape[0] if need_grad else 0
        n_lr = n if need_lr else 0
        return theta.new_empty((xs.shape[0],)), theta.new_empty((n, theta.shape[-1])), theta.new_empty(
            (n_lr, theta.shape[-1]))

    def adapt_setup(ctx, inputs, output):
        theta, lr, x, y, dims, steps, loss, act = inputs
        ctx.save_for_backward(theta, lr, x, y)
        ctx.args = (dims, steps, loss, act)

    def adapt_grad(ctx, grad):
        theta, lr, x, y = ctx.saved_tensors
        dims, steps, loss, act = ctx.args
        g = ops.adapt_bwd(grad.contiguous(), theta, lr, x, y, dims, steps, loss, act, False, ctx.needs_input_grad[2])
        return reduce_adapt_grads(theta, *g, ctx.needs_input_grad) + (None,) * 5

    torch.library.register_autograd("metakern::adapt_fwd", adapt_grad, setup_context=adapt_setup)

    def mlp_setup(ctx, inputs, output):
        theta, x, dims, act = inputs
        ctx.save_for_backward(theta, x)
        ctx.args = (dims, act)

    def mlp_grad(ctx, grad_out):
        theta, x = ctx.saved_tensors
        dims, act = ctx.args
        g_theta, g_x = ops.mlp_bwd(grad_out.contiguous(), theta, x, dims, act, ctx.needs_input_grad[1])
        return reduce_mlp_grads(theta, g_theta, g_x, ctx.needs_input_grad) + (None,) * 2

    torch.library.register_autograd("metakern::mlp_fwd", mlp_grad, setup_context=mlp_setup)
