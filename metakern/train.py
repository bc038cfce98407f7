"""Meta-training and meta-testing loops used by the command line and the examples."""
from __future__ import annotations

import copy
import hashlib
import inspect
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ._validate import check_int
from .distributed import World
from .learners import ANIL, MAML, MAMLPlusPlus, MetaSGD, Reptile
from .nn import MLP, Conv4, activation_module

ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile", "anil", "mamlpp")


_CLASSES = {"maml": MAML, "fomaml": MAML, "metasgd": MetaSGD, "reptile": Reptile, "anil": ANIL, "mamlpp": MAMLPlusPlus}


def inner_defaults(algo: str):
    """``(inner lr, inner steps)`` an algorithm uses by default: its learner's defaults."""
    if algo not in ALGORITHMS:
        raise ValueError(f"algo must be one of {ALGORITHMS}, got {algo!r}")
    params = inspect.signature(_CLASSES[algo]).parameters
    return params["lr"].default, params["steps"].default


MODELS = ("mlp", "conv4")


def input_shape(task) -> tuple:
    """The shape of one input point of ``task``: its ``input_shape`` when it has one, else
    the trailing shape of its ``features`` tensor (``FewShotClassification``), else
    ``(task.in_features,)``."""
    shape = getattr(task, "input_shape", None)
    if shape is None and isinstance(getattr(task, "features", None), torch.Tensor):
        shape = task.features.shape[1:]
    return tuple(int(d) for d in shape) if shape is not None else (int(task.in_features),)


def build_learner(algo: str, task, *, hidden=None, inner_lr: Optional[float] = None,
                  steps: Optional[int] = None, backend: str = "auto", activation: str = "relu",
                  model: str = "mlp", filters: int = 64, msl_epochs: Optional[int] = None,
                  first_order_epochs: Optional[int] = None) -> nn.Module:
    """The learner for ``algo`` on ``task``, with a model sized by the task.

    ``model="mlp"``: an :class:`~metakern.nn.MLP` with hidden widths ``hidden`` (default
    ``(40, 40)``; ``mk.OmniglotMLP.HIDDEN`` gives the MAML paper's 256-128-64-64) on the
    task's inputs, flattened (a task of images ``[C, H, W]`` feeds ``C*H*W`` features);
    fused for every algorithm. ``model="conv4"``: :class:`~metakern.nn.Conv4` with
    ``filters`` per convolution, for tasks whose points are square images ``[C, S, S]``
    (:func:`input_shape`); MAML, FOMAML, Meta-SGD and Reptile adapt the whole network on
    the generic path, ANIL meta-learns its body and adapts its linear head on the fused
    kernels. MAML++ takes it with per-step batch norm (``Conv4(per_step_bn=steps)``).

    ``inner_lr`` and ``steps`` default to the algorithm's own (:func:`inner_defaults`);
    ``msl_epochs`` and ``first_order_epochs`` set MAML++'s schedule (``algo="mamlpp"``
    only; default: :class:`~metakern.learners.MAMLPlusPlus`'s).
    For ANIL with ``model="mlp"`` the hidden layers are the body (each followed by the
    activation) and the head is one ``nn.Linear``; with no hidden layer the body is the
    identity (a flattening for images).
    """
    lr0, steps0 = inner_defaults(algo)
    mamlpp_kw = {k: v for k, v in (("msl_epochs", msl_epochs), ("first_order_epochs", first_order_epochs))
                 if v is not None}
    if mamlpp_kw and algo != "mamlpp":
        raise ValueError(f"{' and '.join(mamlpp_kw)} set MAML++'s schedule; they need algo='mamlpp', got {algo!r}")
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    inner_lr = lr0 if inner_lr is None else inner_lr
    steps = steps0 if steps is None else steps
    shape, O, loss = input_shape(task), task.out_features, task.loss
    if model == "conv4":
        if hidden is not None:
            raise ValueError("hidden sets the widths of model='mlp'; for model='conv4' set filters= (filters per "
                             "convolution) instead")
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"model='conv4' needs a task of square images [C, S, S] per point, but {task!r} has "
                             f"points of shape {shape}; use model='mlp' for feature vectors")
        # MAML++ on Conv-4 includes its per-step batch norm (BNRS, BNWB), built for its steps
        net = Conv4(in_channels=shape[0], ways=O, hidden=check_int("filters", filters, 1), image_size=shape[1],
                    per_step_bn=check_int("steps", steps, 1) if algo == "mamlpp" else None)
        if algo == "anil":
            return ANIL(net.body, net.head, lr=inner_lr, steps=steps, loss=loss, backend=backend)
        return _whole_model_learner(algo, net, inner_lr, steps, loss, backend, mamlpp_kw)
    hidden = (40, 40) if hidden is None else tuple(hidden)
    D = math.prod(shape)
    flat = [nn.Flatten()] if len(shape) > 1 else []  # ANIL's body gets batches of points [N, *shape]
    if algo == "anil":
        if hidden:
            body = nn.Sequential(*flat, MLP(D, list(hidden[:-1]), hidden[-1], activation=activation),
                                 activation_module(activation))
            feat = hidden[-1]
        else:
            body, feat = (flat[0] if flat else nn.Identity()), D
        return ANIL(body, nn.Linear(feat, O), lr=inner_lr, steps=steps, loss=loss, backend=backend)
    return _whole_model_learner(algo, MLP(D, list(hidden), O, activation=activation), inner_lr, steps, loss, backend,
                                mamlpp_kw)


def _whole_model_learner(algo, model, inner_lr, steps, loss, backend, mamlpp_kw=None):
    if algo == "mamlpp":
        return MAMLPlusPlus(model, lr=inner_lr, steps=steps, loss=loss, backend=backend, **(mamlpp_kw or {}))
    if algo == "metasgd":
        return MetaSGD(model, lr=inner_lr, steps=steps, loss=loss, backend=backend)
    if algo == "reptile":
        return Reptile(model, lr=inner_lr, steps=steps, loss=loss, backend=backend)
    return MAML(model, lr=inner_lr, steps=steps, first_order=(algo == "fomaml"), loss=loss, backend=backend)


def meta_step(learner: nn.Module, opt: torch.optim.Optimizer, batch, objective=None) -> float:
    """One meta-iteration: adapt every task, meta-loss, meta-gradient, optimizer step.

    ``objective`` computes the loss from the batch (default ``learner.meta_loss``;
    across processes the DDP-wrapped :class:`metakern.distributed.MetaObjective`, whose
    value is this rank's share). Returns the loss value (what it is:
    ``learner.objective``)."""
    xs, ys, xq, yq = batch
    opt.zero_grad(set_to_none=True)
    out = (objective or learner.meta_loss)(xs, ys, xq, yq)
    out.backward()
    opt.step()
    return out.item()


def make_optimizer(learner: nn.Module, meta_lr: float = 1e-3) -> torch.optim.Optimizer:
    """The meta-optimizer of :func:`meta_train`: Adam, fused where torch has a fused kernel."""
    try:  # one fused kernel over all parameters (CPU and CUDA); the per-tensor loop elsewhere
        return torch.optim.Adam(learner.parameters(), lr=meta_lr, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(learner.parameters(), lr=meta_lr)


def meta_train(learner, task, *, iterations: int, meta_batch: int = 25, meta_lr: float = 1e-3,
               generator: Optional[torch.Generator] = None, progress: bool = True, device=None, dtype=torch.float32,
               log_every: int = 100, timings: Optional[dict] = None, optimizer: Optional[torch.optim.Optimizer] = None,
               start: int = 0, checkpoint_every: int = 0, on_checkpoint: Optional[Callable] = None,
               world: Optional[World] = None, callback_every: int = 0, callback: Optional[Callable] = None,
               epoch_length: int = 500):
    """Meta-train ``learner`` with Adam on batches of ``meta_batch`` tasks; returns the loss history.

    ``timings``, when given, receives ``"first_s"`` (the first iteration: start-up,
    kernel and allocator warm-up) and ``"rest_s"`` (the other iterations: the steady
    state), in seconds of wall time.

    Resuming: ``optimizer`` replaces the default one (:func:`make_optimizer`; pass the
    one whose state :func:`load_checkpoint` restored) and ``start`` is the number of
    iterations already done; the loop runs iterations ``start+1 .. iterations``.
    ``on_checkpoint(iteration, optimizer)`` is called after every ``checkpoint_every``-th
    iteration (on rank 0 only).

    ``callback(iteration, loss)`` is called on every rank after every
    ``callback_every``-th iteration (0: none) and after the last one, with the mean over
    ranks of the meta-loss averaged over the iterations since its previous call (or
    since ``start``). It may run collectives, e.g. a validation :func:`meta_test` with
    ``world``, and runs before ``on_checkpoint`` of the same iteration, so a checkpoint
    holds what it recorded. ``timings`` leave its time out and, with a callback, hold
    it as ``"callback_s"``.

    A learner with a schedule by epoch (``set_epoch``: :class:`~metakern.MAMLPlusPlus`)
    gets ``set_epoch(i // epoch_length)`` before iteration ``i`` (0-based), so a resumed
    run continues the schedule where it was; 500 iterations an epoch is the MAML++
    code's setting.

    ``world`` (a :class:`metakern.distributed.World`) trains across its processes:
    every rank draws the global batch of ``meta_batch`` tasks from ``generator`` (which
    must be seeded the same on every rank) and the DDP-wrapped objective takes its
    shard, so the parameters follow the one-process run up to rounding. The history
    and the progress bar show the mean over ranks; only rank 0 shows progress.
    """
    world = world or World()
    check_int("iterations", iterations, 0)
    check_int("callback_every", callback_every, 0)
    check_int("epoch_length", epoch_length, 1)
    set_epoch = getattr(learner, "set_epoch", None)
    start = check_int("start", start, 0)
    if start > iterations:
        raise ValueError(f"start ({start} iterations done) must be <= iterations ({iterations}); ask for more "
                         "iterations to continue a run")
    opt = optimizer if optimizer is not None else make_optimizer(learner, meta_lr)
    objective = None
    if world.distributed:
        world.shard(meta_batch)  # every rank needs a task
        if generator is None:
            raise ValueError("meta_train across processes needs generator=: a torch.Generator seeded the same on "
                             "every rank, so that every rank draws the same global batches")
        world.same("the generator state", hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest())
        world.same("(iterations, meta_batch, start)", (iterations, meta_batch, start))
        objective = world.wrap(learner)
    history = []
    bar = None
    if progress and world.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=iterations, initial=start, desc="meta-train", unit="it", dynamic_ncols=True)
    running = None
    window, count = 0.0, 0  # the losses since the last callback
    paused = paused_first = 0.0  # seconds in callbacks: all of them, those of the first iteration
    t0 = t1 = time.perf_counter()
    for it in range(start, iterations):
        if it == start + 1:
            t1, paused_first = time.perf_counter(), paused
        if set_epoch is not None:
            set_epoch(it // epoch_length)
        batch = task.sample(meta_batch, generator, device=device, dtype=dtype)
        with world.guard(f"meta-iteration {it + 1}"):
            val = meta_step(learner, opt, batch, objective)
        running = val if running is None else 0.98 * running + 0.02 * val
        n = it + 1
        if n % log_every == 0 or n % 50 == 0:
            shown = world.mean(running)  # the mean over ranks (every rank calls it at the same iterations)
            if n % log_every == 0:
                history.append((n, shown))
            if bar is not None and n % 50 == 0:
                bar.set_postfix({getattr(learner, "objective", "meta-loss"): f"{shown:.3f}"})
        if bar is not None:
            bar.update(1)
        window, count = window + val, count + 1
        if callback is not None and ((callback_every and n % callback_every == 0) or n == iterations):
            c0 = time.perf_counter()
            callback(n, world.mean(window / count))
            window, count = 0.0, 0
            paused += time.perf_counter() - c0
        if checkpoint_every and on_checkpoint is not None and n % checkpoint_every == 0 and world.is_main:
            on_checkpoint(n, opt)
    if bar is not None:
        bar.close()
    if timings is not None:
        end = time.perf_counter()
        done = iterations - start
        if done > 1:
            timings.update(first_s=t1 - t0 - paused_first, rest_s=end - t1 - (paused - paused_first))
        else:
            timings.update(first_s=end - t0 - paused, rest_s=0.0)
        if callback is not None:
            timings["callback_s"] = paused
    return history


def save_checkpoint(path: str, learner: nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                    generator: Optional[torch.Generator], **extra):
    """Write what resuming needs: the learner's and optimizer's state, the iterations done
    and the task generator's state (plus ``extra`` entries), atomically (a temporary file
    renamed over ``path``)."""
    ckpt = {"state_dict": learner.state_dict(), "optimizer": optimizer.state_dict(), "iteration": iteration,
            "generator": None if generator is None else generator.get_state(), **extra}
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(ckpt, learner: nn.Module, optimizer: torch.optim.Optimizer,
                    generator: Optional[torch.Generator]) -> int:
    """Restore a :func:`save_checkpoint` checkpoint (a dict or a path) into ``learner``,
    ``optimizer`` and ``generator``; returns the iterations it had done."""
    if not isinstance(ckpt, dict):
        ckpt = torch.load(ckpt, map_location="cpu")
    missing = [k for k in ("state_dict", "optimizer", "iteration", "generator") if k not in ckpt]
    if missing:
        raise ValueError(f"the checkpoint has no {', '.join(missing)}: it cannot be resumed (only checkpoints "
                         "written by this version's save_checkpoint / metakern train --save hold the optimizer, "
                         "the iteration and the generator state)")
    learner.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if generator is not None and ckpt["generator"] is not None:
        generator.set_state(ckpt["generator"])
    return int(ckpt["iteration"])


@dataclass
class MetaTestResult:
    metric: str
    mean: float
    ci95: float
    tasks: int

    def __str__(self):
        return f"{self.metric} {self.mean:.4f} ± {self.ci95:.4f} (95% interval over {self.tasks} tasks)"


def meta_test(learner, task, *, tasks: int = 600, batch: int = 100, steps: Optional[int] = None,
              generator: Optional[torch.Generator] = None, device=None, dtype=torch.float32,
              world: Optional[World] = None) -> MetaTestResult:
    """Adapt to ``tasks`` held-out tasks; query MSE (regression) or accuracy (classification) with a 95% interval.

    With ``world`` (:class:`metakern.distributed.World`) every rank draws the same
    batches and adapts its shard of each; the per-task values are gathered in the
    one-process order, and every rank returns the same result."""
    world = world or World()
    vals = []
    done = 0
    while done < tasks:
        n = min(batch, tasks - done)
        xs, ys, xq, yq = task.sample(n, generator, device=device, dtype=dtype)
        lo, hi = world.shard(n, allow_empty=True)
        if hi > lo:
            xs, ys, xq, yq = (t[lo:hi] for t in (xs, ys, xq, yq))
            with torch.no_grad():
                pred = learner.adapt(xs, ys, steps=steps)(xq)
                if task.loss == "mse":
                    vals.append(((pred - yq) ** 2).mean(dim=(1, 2)).cpu())
                else:
                    vals.append((pred.argmax(-1) == yq).to(torch.float64).mean(1).cpu())
        else:
            vals.append(torch.zeros(0, dtype=torch.float64))
        done += n
    if world.distributed:  # batch by batch, rank by rank: the one-process order
        ranks = world.gather(vals)
        vals = [part for b in range(len(vals)) for part in (r[b] for r in ranks)]
    v = torch.cat(vals).to(torch.float64)
    half = 1.96 * v.std(unbiased=True).item() / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return MetaTestResult("MSE" if task.loss == "mse" else "accuracy", v.mean().item(), half, len(v))


def prototype_accuracy(xs, ys, xq, yq, ways: int) -> torch.Tensor:
    """Query accuracy ``[T]`` (float64) of the nearest class mean: each query point of a
    task gets the label of the closest (Euclidean) mean of that task's support points
    of one class, computed in float64; no training. The prototypical-network rule
    (Snell et al., 2017) on the features as given."""
    xs, xq = xs.flatten(2).to(torch.float64), xq.flatten(2).to(torch.float64)
    onehot = torch.nn.functional.one_hot(ys, ways).to(torch.float64)  # [T, Ns, W]
    means = onehot.transpose(1, 2) @ xs / onehot.sum(1)[..., None]  # [T, W, D]
    pred = torch.cdist(xq, means).argmin(-1)
    return (pred == yq).to(torch.float64).mean(1)


def prototype_test(task, *, tasks: int = 600, batch: int = 100, generator: Optional[torch.Generator] = None,
                   device=None, dtype=torch.float32) -> MetaTestResult:
    """:func:`prototype_accuracy` on ``tasks`` tasks of a classification ``task``, drawn in
    batches of ``batch`` as :func:`meta_test` draws them (the same generator state gives
    the same tasks); accuracy with a 95% interval."""
    if task.loss != "cross_entropy":
        raise ValueError(f"prototype_test needs a classification task (loss cross_entropy), got {task!r}")
    tasks, batch = check_int("tasks", tasks, 1), check_int("batch", batch, 1)
    vals, done = [], 0
    while done < tasks:
        n = min(batch, tasks - done)
        xs, ys, xq, yq = task.sample(n, generator, device=device, dtype=dtype)
        vals.append(prototype_accuracy(xs, ys, xq, yq, task.out_features).cpu())
        done += n
    v = torch.cat(vals)
    half = 1.96 * v.std(unbiased=True).item() / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return MetaTestResult("accuracy", v.mean().item(), half, len(v))


def untrained_copy(learner: nn.Module) -> nn.Module:
    """A copy of the learner at its current (e.g. initial) meta-parameters."""
    return copy.deepcopy(learner)


def plot_learning_curve(path: str, loss, val=(), *, loss_label: str = "query loss", title: str = ""):
    """A learning-curve PNG at ``path``: ``loss`` (``(iteration, value)`` pairs: the
    training meta-loss) on the left axis and, when given, ``val`` (``(iteration,
    accuracy, ci95)``: validation accuracy with its 95% interval) on the right one,
    against meta-iterations. Needs matplotlib; drawn on a bare ``Figure`` (the Agg
    canvas), so neither pyplot's state nor a display is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if loss:
        it, v = zip(*loss)
        ax.plot(it, v, color="tab:blue", lw=1.2, marker="." if len(it) < 50 else None)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(f"training {loss_label}", color="tab:blue")
    ax.grid(alpha=0.3)
    if val:
        it, acc, ci = zip(*val)
        right = ax.twinx()
        right.plot(it, acc, color="tab:orange", lw=1.2, marker="o", ms=3)
        right.fill_between(it, [a - c for a, c in zip(acc, ci)], [a + c for a, c in zip(acc, ci)],
                           color="tab:orange", alpha=0.2, lw=0)
        right.set_ylabel("validation accuracy (95% interval)", color="tab:orange")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
