"""The standard sine protocol, metakern against a plain-PyTorch implementation.

MAML and Meta-SGD, MLP 1-40-40-1 ReLU, 10 support + 10 query points, one inner
step at lr 0.01, meta-batch 25, Adam 1e-3 (Finn et al., 2017; Li et al., 2017).
MAML++ (``--kinds mamlpp``): 5 inner steps, per-step per-tensor rates starting at
0.01, the multi-step loss annealed over ``--msl-epochs`` epochs of ``--epoch-length``
iterations, first order for ``--first-order-epochs`` epochs (Antoniou et al., 2019);
its plain implementation is the same unrolled loop with the same schedule.
The plain implementation differentiates through the unrolled inner step with
``torch.autograd.grad(create_graph=True)``, batched over tasks. Both start from the
same initialisation and see the same task batches, then both are meta-tested on
the same 600 held-out tasks (query MSE after one inner step, 95% interval).

    python bench/sine_protocol.py --iterations 20000 --out bench/results/sine_protocol.csv
"""
import argparse
import copy
import datetime
import platform
import time

import torch
import torch.nn.functional as F

import metakern as mk
from metakern import train as T
from metakern.benchmark.results import append_rows


class PlainMAML(torch.nn.Module):
    """MAML / Meta-SGD written the usual way: autograd through the unrolled inner loop."""

    def __init__(self, model, lr, per_param_lr):
        super().__init__()
        self.module = model
        if per_param_lr:
            self.lrs = torch.nn.ParameterList([torch.nn.Parameter(torch.full_like(p, lr)) for p in model.parameters()])
        else:
            self.lrs = None
            self.lr = lr

    def _forward(self, params, x):
        h = x
        L = len(params) // 2
        for l in range(L):
            h = torch.matmul(h, params[2 * l].transpose(-1, -2)) + params[2 * l + 1].unsqueeze(-2)
            if l < L - 1:
                h = torch.relu(h)
        return h

    def meta_loss(self, xs, ys, xq, yq, create_graph=True):
        T_ = xs.shape[0]
        params = [p.unsqueeze(0).expand(T_, *p.shape) for p in self.module.parameters()]
        loss = ((self._forward(params, xs) - ys) ** 2).mean(dim=(1, 2)).sum()  # sum of per-task means
        grads = torch.autograd.grad(loss, params, create_graph=create_graph)
        lrs = list(self.lrs) if self.lrs is not None else [self.lr] * len(params)
        fast = [p - a * g for p, a, g in zip(params, lrs, grads)]
        return F.mse_loss(self._forward(fast, xq), yq), fast

    def adapt(self, xs, ys, steps=None):
        with torch.enable_grad():
            _, fast = self.meta_loss(xs, ys, xs, ys, create_graph=False)
        fast = [f.detach() for f in fast]
        return lambda xq: self._forward(fast, xq)


class PlainMAMLPlusPlus(PlainMAML):
    """MAML++ written the usual way: K unrolled steps, a learnable rate per parameter
    tensor and step, the query loss after every step weighted by the schedule."""

    def __init__(self, model, lr, steps, msl_epochs, first_order_epochs):
        torch.nn.Module.__init__(self)
        self.module, self.steps = model, steps
        self.lrs = torch.nn.ParameterList([torch.nn.Parameter(torch.full((steps,), lr)) for _ in model.parameters()])
        self.msl_epochs, self.first_order_epochs, self.epoch = msl_epochs, first_order_epochs, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _inner(self, xs, ys, create_graph, each):
        T_ = xs.shape[0]
        fast = [p.unsqueeze(0).expand(T_, *p.shape) for p in self.module.parameters()]
        for k in range(self.steps):
            loss = ((self._forward(fast, xs) - ys) ** 2).mean(dim=(1, 2)).sum()
            grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
            if not create_graph:
                grads = [g.detach() for g in grads]
            fast = [p - a[k] * g for p, a, g in zip(fast, self.lrs, grads)]
            each(k, fast)
        return fast

    def meta_loss(self, xs, ys, xq, yq, create_graph=None):
        second = self.epoch >= self.first_order_epochs if create_graph is None else create_graph
        w = mk.learners.msl_weights(self.epoch, self.steps, self.msl_epochs) if self.epoch < self.msl_epochs else None
        total = []

        def each(k, fast):
            if w is not None or k == self.steps - 1:
                q = F.mse_loss(self._forward(fast, xq), yq)
                total.append(q * (w[k] if w is not None else 1.0))

        fast = self._inner(xs, ys, second, each)
        return sum(total), fast

    def adapt(self, xs, ys, steps=None):
        with torch.enable_grad():
            fast = [f.detach() for f in self._inner(xs, ys, False, lambda k, f: None)]
        return lambda xq: self._forward(fast, xq)


def run(kind, impl, iterations, seed, backend, pp=None):
    torch.manual_seed(seed)
    model = mk.MLP(1, [40, 40], 1)
    task = mk.tasks.Sinusoid()
    pp = pp or {}
    if kind == "mamlpp":
        kw = dict(msl_epochs=pp.get("msl_epochs", 10), first_order_epochs=pp.get("first_order_epochs", 0))
        if impl == "metakern":
            learner = mk.MAMLPlusPlus(copy.deepcopy(model), lr=0.01, steps=5, backend=backend, **kw)
        else:
            learner = PlainMAMLPlusPlus(copy.deepcopy(model), 0.01, 5, **kw)
    elif impl == "metakern":
        cls = mk.MetaSGD if kind == "metasgd" else mk.MAML
        learner = cls(copy.deepcopy(model), lr=0.01, steps=1, backend=backend)
    else:
        learner = PlainMAML(copy.deepcopy(model), 0.01, kind == "metasgd")
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    for it in range(iterations):
        if kind == "mamlpp":
            learner.set_epoch(it // pp.get("epoch_length", 500))
        xs, ys, xq, yq = task.sample(25, g)
        opt.zero_grad(set_to_none=True)
        if impl == "metakern":
            loss = learner.meta_loss(xs, ys, xq, yq)  # == F.mse_loss(learner.adapt(xs, ys)(xq), yq)
        else:
            loss, _ = learner.meta_loss(xs, ys, xq, yq)
        loss.backward()
        opt.step()
    secs = time.perf_counter() - t0
    res = T.meta_test(learner, task, tasks=600, generator=torch.Generator().manual_seed(seed + 2))
    return res, secs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto")
    p.add_argument("--kinds", default="maml,metasgd", help="maml, metasgd, mamlpp (comma separated)")
    p.add_argument("--epoch-length", type=int, default=500, help="mamlpp: iterations per epoch")
    p.add_argument("--msl-epochs", type=int, default=10, help="mamlpp: epochs of the multi-step loss")
    p.add_argument("--first-order-epochs", type=int, default=0, help="mamlpp: first-order epochs")
    p.add_argument("--out", default=None, help="append rows to this CSV")
    a = p.parse_args(argv)
    rows = []
    for kind in a.kinds.split(","):
        for impl in ("metakern", "plain"):
            res, secs = run(kind, impl, a.iterations, a.seed, a.backend,
                            dict(epoch_length=a.epoch_length, msl_epochs=a.msl_epochs,
                                 first_order_epochs=a.first_order_epochs))
            print(f"{kind:8s} {impl:9s} {a.iterations} it  {res}   ({secs:.1f} s, {1e3 * secs / a.iterations:.2f} ms/it)",
                  flush=True)
            rows.append(dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                             device=platform.processor() or platform.machine(), torch=torch.__version__,
                             algo=kind, impl=impl, backend=a.backend if impl == "metakern" else "autograd",
                             iterations=a.iterations, seed=a.seed, mse=f"{res.mean:.4f}", ci95=f"{res.ci95:.4f}",
                             seconds=f"{secs:.1f}"))
    if a.out:
        append_rows(a.out, rows)


if __name__ == "__main__":
    main()
