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


# Packed forms (docs/kernels.md), for tests that call the kernels' raw ops: theta is
# [P] (shared) or [T, P]; loss and activation may be the ops' integer codes.
ACT_CODES = ("identity", "relu", "tanh", "sigmoid")
LOSS_CODES = ("mse", "cross_entropy")


def _name(v, codes):
    return codes[v] if isinstance(v, int) else v


def unpack(theta, dims, T):
    """``[W1, b1, ...]`` views with a leading task dim of packed ``theta``."""
    th = theta.expand(T, -1) if theta.dim() == 1 else theta
    params, off = [], 0
    for i, o in zip(dims[:-1], dims[1:]):
        params.append(th[:, off:off + o * i].reshape(T, o, i))
        off += o * i
        params.append(th[:, off:off + o])
        off += o
    if off != th.shape[1]:
        raise ValueError(f"theta has {th.shape[1]} entries, dims {list(dims)} need {off}")
    return params


def mlp_packed(theta, x, dims, act):
    """Batched MLP on packed parameters: ``[T, N, O]``."""
    return mlp(unpack(theta, dims, x.shape[0]), x, _name(act, ACT_CODES))


def adapt_packed(theta, lr, x, y, dims, steps, loss, act, first_order):
    """Unrolled inner SGD on packed parameters (``lr`` ``[P]`` or ``[T, P]``): ``theta_K`` ``[T, P]``."""
    return adapt_packed_path(theta, lr, x, y, dims, steps, loss, act, first_order, per_step=False)[-1]


def adapt_packed_path(theta, lr, x, y, dims, steps, loss, act, first_order, per_step=False):
    """Every parameter vector of the unrolled inner loop, ``[theta_0, ..., theta_K]``
    (each ``[T, P]``). ``lr``: ``[P]`` or ``[T, P]`` (one rate for every step), or, with
    ``per_step=True``, ``[K, P]``: row k is step k's rate."""
    th = theta.expand(x.shape[0], -1) if theta.dim() == 1 else theta
    th = th * 1
    loss, act = _name(loss, LOSS_CODES), _name(act, ACT_CODES)
    path = [th]
    for k in range(steps):
        L = task_losses(unpack(th, dims, x.shape[0]), x, y, loss, act)
        (g,) = torch.autograd.grad(L, th, create_graph=not first_order)
        if first_order:
            g = g.detach()
        th = th - (lr[k] if per_step else lr) * g
        path.append(th)
    return path


def maml_losses_packed(theta, lr, xs, ys, xq, yq, dims, steps, loss, act, first_order, step_weights=None,
                       per_step=False):
    """Per-task MAML objective ``[T]`` on packed parameters: the query loss at
    ``theta_K``, or with ``step_weights`` ``w`` ``[K]`` the multi-step loss
    ``sum_{k=1..K} w[k-1] * L_q(theta_k)``. ``lr`` as :func:`adapt_packed_path`."""
    path = adapt_packed_path(theta, lr, xs, ys, dims, steps, loss, act, first_order, per_step)
    T = xs.shape[0]
    loss_n, act_n = _name(loss, LOSS_CODES), _name(act, ACT_CODES)

    def per_task(th):
        out = mlp(unpack(th, dims, T), xq, act_n)
        if loss_n == "mse":
            return ((out - yq) ** 2).mean(dim=(1, 2))
        O = out.shape[-1]
        return F.cross_entropy(out.reshape(-1, O), yq.reshape(-1), reduction="none").view(T, -1).mean(1)

    if step_weights is None:
        return per_task(path[-1])
    return sum(step_weights[k - 1] * per_task(path[k]) for k in range(1, steps + 1))


# Any model, written out as a function ``fn(params, x)`` of one task's points (no
# nn.Module, no functional_call): the ground truth of the generic path.
def task_loss(out, y, loss="mse"):
    return F.mse_loss(out, y) if loss == "mse" else F.cross_entropy(out, y)


def unrolled_losses(fn, params, lrs, xs, ys, xq, yq, steps, loss="mse", first_order=False):
    """Per-task query losses ``[T]`` after ``steps`` inner SGD steps, one task at a time,
    each step's gradient by ``torch.autograd.grad(create_graph=True)``; ``lrs`` holds one
    rate (a float or a tensor) per parameter. First order: the inner gradients are
    detached (constants)."""
    out = []
    for t in range(xs.shape[0]):
        p = list(params)
        for _ in range(steps):
            gs = torch.autograd.grad(task_loss(fn(p, xs[t]), ys[t], loss), p, create_graph=not first_order)
            if first_order:
                gs = [g.detach() for g in gs]
            p = [a - r * g for a, r, g in zip(p, lrs, gs)]
        out.append(task_loss(fn(p, xq[t]), yq[t], loss))
    return torch.stack(out)


def module_meta_loss(model, xs, ys, xq, yq, lr, steps, loss="cross_entropy", first_order=False, embed=None):
    """Mean over tasks of the query loss after ``steps`` inner SGD steps of ``model`` per
    task (:func:`unrolled_losses` with the module as its function).

    ``lr``: a float, a 0-dim tensor, or one tensor per parameter in ``named_parameters()``
    order (Meta-SGD). Each call of the model sees one task's support or query set, so
    batch norm in training mode uses that set's statistics; the model runs on copies of
    its buffers, so its running statistics are left as they were. ``embed`` (ANIL's body)
    maps each task's support and query inputs to the model's inputs first; it runs as itself.
    """
    names, params = zip(*model.named_parameters())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(params)

    def fn(p, x):
        return torch.func.functional_call(model, {**dict(zip(names, p)), **buffers}, (x,))

    if embed is not None:
        xs, xq = (torch.stack([embed(x[t]) for t in range(x.shape[0])]) for x in (xs, xq))
    return unrolled_losses(fn, params, lrs, xs, ys, xq, yq, steps, loss, first_order).mean()
