"""Python-side registrations for the ops that ``metakern._C`` defines in C++.

``TORCH_LIBRARY(metakern, m)`` (``csrc/ops.cpp``) declares the schemas and the
CPU/CUDA kernels; here they get fake (meta) implementations, for ``torch.compile``
and ``opcheck``, and autograd formulas: ``adapt_fwd`` is differentiated exactly
(second order) through ``adapt_bwd``, ``mlp_fwd`` through ``mlp_bwd``. The
first-order variant is a choice of the caller, made through ``metakern_py::adapt``.
"""
import torch

_DONE = False


def register():
    global _DONE
    if _DONE:
        return
    _DONE = True
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

    def adapt_setup(ctx, inputs, output):
        theta, lr, x, y, dims, steps, loss, act = inputs
        ctx.save_for_backward(theta, lr, x, y)
        ctx.args = (dims, steps, loss, act)

    def adapt_grad(ctx, grad):
        theta, lr, x, y = ctx.saved_tensors
        dims, steps, loss, act = ctx.args
        need_theta, need_lr, need_x = ctx.needs_input_grad[:3]
        g_theta, g_lr, g_x = ops.adapt_bwd(grad.contiguous(), theta, lr, x, y, dims, steps, loss, act, False, need_x)
        if theta.dim() == 1:
            g_theta = g_theta.sum(0)
        return (g_theta if need_theta else None, g_lr.sum(0) if need_lr else None, g_x if need_x else None,
                None, None, None, None, None)

    torch.library.register_autograd("metakern::adapt_fwd", adapt_grad, setup_context=adapt_setup)

    def mlp_setup(ctx, inputs, output):
        theta, x, dims, act = inputs
        ctx.save_for_backward(theta, x)
        ctx.args = (dims, act)

    def mlp_grad(ctx, grad_out):
        theta, x = ctx.saved_tensors
        dims, act = ctx.args
        need_theta, need_x = ctx.needs_input_grad[:2]
        g_theta, g_x = ops.mlp_bwd(grad_out.contiguous(), theta, x, dims, act, need_x)
        if theta.dim() == 1:
            g_theta = g_theta.sum(0)
        return g_theta if need_theta else None, g_x if need_x else None, None, None

    torch.library.register_autograd("metakern::mlp_fwd", mlp_grad, setup_context=mlp_setup)
