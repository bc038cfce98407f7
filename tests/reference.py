"""Ground truth: plain autograd through the unrolled inner loop."""
import torch
import torch.nn.functional as F

ACT = {"identity": lambda z: z, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}


def mlp(params, x, activation):
    """Batched MLP with per-task or shared parameters (autograd-friendly)."""
    T = x.shape[0]
    a = x
    L = len(params) // 2
    for l in range(L):
        W, b = params[2 * l], params[2 * l + 1]
        W = W if W.dim() == 3 else W.expand(T, *W.shape)
        b = b if b.dim() == 2 else b.expand(T, *b.shape)
        a = torch.baddbmm(b.unsqueeze(1), a, W.transpose(1, 2))
        if l < L - 1:
            a = ACT[activation](a)
    return a


def task_losses(params, x, y, loss, activation):
    """Sum over tasks of each task's mean loss (so per-task gradients are exact)."""
    out = mlp(params, x, activation)
    if loss == "mse":
        return ((out - y) ** 2).mean(dim=(1, 2)).sum()
    T, N, O = out.shape
    return F.cross_entropy(out.reshape(T * N, O), y.reshape(-1), reduction="none").view(T, N).mean(1).sum()


def adapt(params, x, y, lr, steps, loss="mse", activation="relu", first_order=False):
    """Unrolled inner SGD. ``lr`` float, 0-dim tensor or list per parameter."""
    T = x.shape[0]
    cur = [p if p.dim() == (3 if i % 2 == 0 else 2) else p.unsqueeze(0).expand(T, *p.shape)
           for i, p in enumerate(params)]
    lrs = lr if isinstance(lr, (list, tuple)) else [lr] * len(params)
    for _ in range(steps):
        L = task_losses(cur, x, y, loss, activation)
        gs = torch.autograd.grad(L, cur, create_graph=not first_order)
        if first_order:
            gs = [g.detach() for g in gs]
        cur = [p - a * g for p, a, g in zip(cur, lrs, gs)]
    if steps == 0:
        cur = [c * 1 for c in cur]
    return cur
