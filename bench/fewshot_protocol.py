"""The few-shot handwriting protocol on the drawn KanjiVG characters, metakern against
plain PyTorch.

Settings: 5-way 1-shot, 5-way 5-shot and 20-way 1-shot, 15 query images per class,
28x28 images (``metakern.tasks.kanji``: meta-training on the train split's
characters, meta-testing on the test split's, which no training task contains).
Rows, each trained twice from the same initialisation on the same task batches:

* ``maml-mlp``, ``fomaml-mlp``, ``metasgd-mlp``: the MLP 784-256-128-64-64-ways of
  the MAML paper (``mk.OmniglotMLP``, without its batch norm), fused kernels;
* ``anil-conv4``: the Conv-4 body meta-learned, its linear head adapted (fused);
* ``maml-conv4``: MAML on the whole Conv-4 (generic path, second order).

Each beside a plain-PyTorch reference written here (no metakern op): autograd
through the unrolled inner loop (``torch.autograd.grad(create_graph=True)``; without
it for FOMAML), the MLP batched over tasks, the Conv-4 with ``F.conv2d`` and
``F.batch_norm`` on each task's own batch statistics, as the library does
(tests/test_fewshot_protocol.py checks that the two give the same meta-gradient in
float64). Then both are meta-tested on the same held-out tasks (600 by default):
query accuracy with a 95% interval, after the inner steps of training and after the
paper's test-time steps, beside the learner at its initialisation (not meta-trained)
adapted the same way. The interval covers the sampling of the test tasks, not the
spread between training runs: Adam turns float32 rounding differences into different
trajectories within a few iterations (``--lockstep N`` shows it), so two correct
implementations can end apart where training is unstable.

The MAML paper's Omniglot settings (Finn et al., 2017): 5-way: meta-batch 32, inner
lr 0.4, 1 inner step in training and 10 at test; 20-way: meta-batch 16, inner lr 0.1,
5 inner steps in training and 10 at test; Adam, meta-lr 1e-3; 60,000 meta-iterations
in the reference code's Omniglot commands. What differs here: the data (KanjiVG
characters drawn by simulated writers, not Omniglot; no rotation classes), the number
of iterations (``--iterations``, per row and setting with ``--row-iterations``: a
2-core CPU cannot run 60,000), the Conv-4 width (``--filters``, 64 in the paper), the
Conv-4 itself (max pooling, as the reference code's mini-ImageNet network, where its
Omniglot one uses strided convolutions; batch norm with a scale; see ``mk.Conv4``),
and the MLP has no batch norm. ANIL and Meta-SGD use MAML's inner rates and steps
(Meta-SGD's rates start there).

``--task wordnet`` (``--labels lexname|domain``, ``--features minilm|glove|tfidf``) runs
the few-shot text protocol instead: 5-way 1-shot and 5-shot over sentence features of
WordNet glosses (``metakern.tasks.wordnet``, classes of the test split unseen in
training), the CLI's wordnet settings (an MLP 384-256-5 for MiniLM, meta-batch 32, inner
lr 0.4, 1 inner step in training, 1 and 10 at test), rows ``maml-mlp``, ``fomaml-mlp``,
``metasgd-mlp`` and ``anil-mlp`` (the hidden layer and its ReLU meta-learned, the linear
head adapted), each beside its plain reference, and a nearest class mean row
(``metakern.train.prototype_test``, no training) on the same test tasks.

    python bench/fewshot_protocol.py --iterations 2000 --out bench/results/fewshot_protocol.csv
    python bench/fewshot_protocol.py --task wordnet --labels domain --iterations 300 --out bench/results/wordnet_protocol.csv
    python bench/fewshot_protocol.py --quick --settings 5w1s --out /tmp/quick.csv   # a small end-to-end check
    python bench/fewshot_protocol.py --table bench/results/fewshot_protocol.csv   # the README's table
"""
import argparse
import csv
import datetime
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's metakern
import metakern as mk  # noqa: E402
from metakern import train as T  # noqa: E402
from metakern.benchmark.results import append_rows  # noqa: E402

SETTINGS = {  # name: (ways, shots, meta-batch, inner lr, train steps, test steps)
    "5w1s": (5, 1, 32, 0.4, 1, 10),
    "5w5s": (5, 5, 32, 0.4, 1, 10),
    "20w1s": (20, 1, 16, 0.1, 5, 10),
}
ROWS = {  # name: (algorithm, model)
    "maml-mlp": ("maml", "mlp"),
    "fomaml-mlp": ("fomaml", "mlp"),
    "metasgd-mlp": ("metasgd", "mlp"),
    "anil-conv4": ("anil", "conv4"),
    "maml-conv4": ("maml", "conv4"),
}
IMPLS = ("metakern", "plain")

# --task wordnet: 5-way 1- and 5-shot over sentence features of WordNet glosses, with the
# CLI's wordnet defaults (the MAML paper's 5-way settings, an MLP 384-256-5)
WORDNET_SETTINGS = {
    "5w1s": (5, 1, 32, 0.4, 1, 10),
    "5w5s": (5, 5, 32, 0.4, 1, 10),
}
WORDNET_ROWS = {  # the body of ANIL's MLP is its hidden layer (with its ReLU), its head one linear layer
    "maml-mlp": ("maml", "mlp"),
    "fomaml-mlp": ("fomaml", "mlp"),
    "metasgd-mlp": ("metasgd", "mlp"),
    "anil-mlp": ("anil", "mlp"),
}
WORDNET_HIDDEN = (256,)


# ----------------------------------------------------------------------------- plain PyTorch


def _task_ce(logits, y):
    """Per-task mean cross-entropy ``[T]`` of logits ``[T, N, O]`` and labels ``[T, N]``."""
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)


def _mlp(params, x):
    """Batched MLP: ``params`` ``[W1, b1, ...]`` each ``[T, *shape]``, ``x`` ``[T, N, D]``; ReLU between layers."""
    h = x
    L = len(params) // 2
    for l in range(L):
        h = torch.baddbmm(params[2 * l + 1].unsqueeze(1), h, params[2 * l].transpose(1, 2))
        if l < L - 1:
            h = torch.relu(h)
    return h


def _conv_body(p, x):
    """Conv-4 body on one task's images ``[N, 1, S, S]``: ``p`` holds 4 x (conv weight, conv
    bias, batch-norm scale, batch-norm shift); batch norm on this batch's statistics."""
    h = x
    for b in range(4):
        w, bias, g, beta = p[4 * b:4 * b + 4]
        h = F.conv2d(h, w, bias, padding=1)
        h = F.batch_norm(h, None, None, g, beta, training=True, eps=1e-5)
        h = F.max_pool2d(torch.relu(h), 2)
    return h.flatten(1)


def _sgd_steps(loss_fn, params, lrs, steps, create_graph, first_order):
    """``steps`` inner SGD steps on ``loss_fn(params)`` (a sum of per-task losses)."""
    for _ in range(steps):
        grads = torch.autograd.grad(loss_fn(params), params, create_graph=create_graph and not first_order)
        params = [p - a * g for p, a, g in zip(params, lrs, grads)]
    return params


class PlainLearner(torch.nn.Module):
    """MAML / FOMAML / Meta-SGD / ANIL written the usual way, from a copy of a metakern
    learner's initialisation (the same parameter values, in the same order)."""

    def __init__(self, algo, model, learner, lr, steps):
        super().__init__()
        self.algo, self.model, self.steps = algo, model, steps
        self.first_order = algo == "fomaml"
        if algo == "anil":
            self.body = torch.nn.ParameterList([torch.nn.Parameter(p.detach().clone()) for p in learner.body.parameters()])
            src = learner.head.module
        else:
            src = learner.module
        self.theta = torch.nn.ParameterList([torch.nn.Parameter(p.detach().clone()) for p in src.parameters()])
        if algo == "metasgd":
            self.lrs = torch.nn.ParameterList([torch.nn.Parameter(torch.full_like(p, lr)) for p in self.theta])
        else:
            self.lr = lr

    def _rates(self):
        return list(self.lrs) if self.algo == "metasgd" else [self.lr] * len(self.theta)

    def _features(self, x):
        if self.model == "mlp":  # ANIL's MLP body: every linear layer followed by a ReLU
            h, body = x.flatten(2), list(self.body)
            for l in range(0, len(body), 2):
                h = torch.relu(F.linear(h, body[l], body[l + 1]))
            return h
        return torch.stack([_conv_body(list(self.body), x[t]) for t in range(x.shape[0])])

    def _adapt_batched(self, xs, ys, steps, create_graph):
        """Adapted parameters ``[T, *shape]`` of an MLP (or ANIL's linear head on features)."""
        Tn = xs.shape[0]
        params = [p.unsqueeze(0).expand(Tn, *p.shape) for p in self.theta]
        return _sgd_steps(lambda q: _task_ce(_mlp(q, xs), ys).sum(), params, self._rates(), steps, create_graph,
                          self.first_order)

    def _adapt_conv(self, xs_t, ys_t, steps, create_graph):
        """Adapted Conv-4 parameters of one task (body then head)."""

        def loss(q):
            return F.cross_entropy(F.linear(_conv_body(q[:16], xs_t), q[16], q[17]), ys_t)

        return _sgd_steps(loss, list(self.theta), self._rates(), steps, create_graph, self.first_order)

    def meta_step(self, xs, ys, xq, yq):
        """Mean query loss over the tasks, its gradient accumulated into ``.grad``; returns the loss."""
        if self.model == "conv4" and self.algo != "anil":
            total = 0.0
            for t in range(xs.shape[0]):  # one task's graph at a time: the same gradient, less memory
                p = self._adapt_conv(xs[t], ys[t], self.steps, True)
                lq = F.cross_entropy(F.linear(_conv_body(p[:16], xq[t]), p[16], p[17]), yq[t]) / xs.shape[0]
                lq.backward()
                total += lq.item()
            return total
        if self.algo == "anil":
            xs, xq = self._features(xs), self._features(xq)
        else:
            xs, xq = xs.flatten(2), xq.flatten(2)
        fast = self._adapt_batched(xs, ys, self.steps, True)
        loss = _task_ce(_mlp(fast, xq), yq).mean()
        loss.backward()
        return loss.item()

    def adapt(self, xs, ys, steps=None):
        """The adapted models of a batch of tasks, as ``metakern.train.meta_test`` calls them."""
        steps = self.steps if steps is None else steps
        with torch.enable_grad():
            if self.model == "conv4" and self.algo != "anil":
                fast = [[v.detach() for v in self._adapt_conv(xs[t], ys[t], steps, False)] for t in range(xs.shape[0])]
                return lambda xq: torch.stack(
                    [F.linear(_conv_body(p[:16], xq[t]), p[16], p[17]) for t, p in enumerate(fast)])
            feats = self._features if self.algo == "anil" else (lambda x: x.flatten(2))
            fast = [v.detach() for v in self._adapt_batched(feats(xs), ys, steps, False)]
        return lambda xq: _mlp(fast, feats(xq))


# ----------------------------------------------------------------------------- the protocol


def _metakern_step(learner):
    def step(xs, ys, xq, yq):
        loss = learner.meta_loss(xs, ys, xq, yq)
        loss.backward()
        return loss.item()

    return step


def _adam(params):
    try:  # one fused kernel over all parameters, as metakern.train.meta_train uses
        return torch.optim.Adam(params, lr=1e-3, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=1e-3)


def meta_train(learner, step, train_task, *, iterations, meta_batch, seed, label, progress):
    """Meta-train ``learner`` for ``iterations`` on batches drawn from ``seed + 1``.
    Returns ``(seconds, running query loss at the end)``."""
    opt = _adam(learner.parameters())
    g = torch.Generator().manual_seed(seed + 1)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=iterations, desc=label, unit="it", dynamic_ncols=True, mininterval=5, file=sys.stdout)
    running = float("nan")
    t0 = time.perf_counter()
    for it in range(iterations):
        xs, ys, xq, yq = train_task.sample(meta_batch, g)
        opt.zero_grad(set_to_none=True)
        val = step(xs, ys, xq, yq)
        opt.step()
        running = val if it == 0 else 0.95 * running + 0.05 * val
        if bar is not None:
            bar.update(1)
            if (it + 1) % 10 == 0:
                bar.set_postfix({"query loss": f"{running:.3f}"})
    secs = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return secs, running


def lockstep(learner, plain, train_task, *, iterations, meta_batch, seed, sync):
    """Train the metakern learner and its plain reference side by side on the same batches
    and print, every 10 iterations, the two meta-losses and the largest difference of their
    meta-gradients and of their parameters (relative to the largest entry). With ``sync`` the reference is reset to
    the learner's parameters before each step (so the gradients are compared at the same
    point); without, the two trajectories run apart and the drift shows how fast
    rounding differences grow."""
    mine = [p for _, p in _pairs(learner, plain)]
    ref = [q for q, _ in _pairs(learner, plain)]
    opt1, opt2 = _adam(learner.parameters()), _adam(plain.parameters())
    step1 = _metakern_step(learner)
    g = torch.Generator().manual_seed(seed + 1)

    def rel(a, b):  # the largest difference relative to the largest entry, over all tensors
        top = max(y.abs().max().item() for y in b)
        return max((x - y).abs().max().item() for x, y in zip(a, b)) / max(top, 1e-30)

    for it in range(iterations):
        batch = train_task.sample(meta_batch, g)
        if sync:
            with torch.no_grad():
                for x, y in zip(mine, ref):
                    y.copy_(x)
        opt1.zero_grad(set_to_none=True)
        opt2.zero_grad(set_to_none=True)
        l1, l2 = step1(*batch), plain.meta_step(*batch)
        gd = rel([p.grad for p in mine], [q.grad for q in ref])
        opt1.step()
        opt2.step()
        if it % 10 == 0 or it == iterations - 1:
            print(f"  it {it:4d}  meta-loss {l1:.4f} / {l2:.4f}  gradient rel. diff {gd:.1e}  "
                  f"parameter rel. diff {rel(mine, ref):.1e}", flush=True)


def _pairs(learner, plain):
    """``(plain parameter, metakern parameter)`` in the same order."""
    if plain.algo == "anil":
        ours = list(learner.body.parameters()) + list(learner.head.module.parameters())
        theirs = list(plain.body) + list(plain.theta)
    else:
        ours, theirs = list(learner.module.parameters()), list(plain.theta)
        if plain.algo == "metasgd":
            ours, theirs = ours + list(learner.lrs), theirs + list(plain.lrs)
    return list(zip(theirs, ours))


def parse_row_iterations(text, rows=ROWS, settings=SETTINGS):
    """``"maml-conv4=50,anil-conv4@20w1s=20"`` -> ``{("maml-conv4", None): 50, ("anil-conv4", "20w1s"): 20}``."""
    out = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        key, sep, n = item.partition("=")
        row, _, setting = key.partition("@")
        if not sep or row not in rows or (setting and setting not in settings) or not n.isdigit():
            raise ValueError(f"--row-iterations takes ROW=N or ROW@SETTING=N items (rows {list(rows)}, settings "
                             f"{list(settings)}), got {item!r}")
        out[(row, setting or None)] = int(n)
    return out


def _names(text, known, what):
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ValueError(f"--{what} takes a comma-separated list of {list(known)}, got {text!r}")
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("kanji", "wordnet"), default="kanji",
                   help="kanji (images, the default) or wordnet (sentence features of WordNet glosses)")
    p.add_argument("--labels", choices=("lexname", "domain"), default="lexname", help="--task wordnet: the classes")
    p.add_argument("--features", choices=("minilm", "glove", "tfidf"), default="minilm",
                   help="--task wordnet: the sentence features")
    p.add_argument("--data-root", default=None,
                   help="--task wordnet: the WordNet folder (default: metakern.tasks.wordnet's search)")
    p.add_argument("--settings", default=None,
                   help="comma-separated, of " + ", ".join(SETTINGS) + " (kanji) or " + ", ".join(WORDNET_SETTINGS)
                        + " (wordnet); all by default")
    p.add_argument("--rows", default=None,
                   help="comma-separated, of " + ", ".join(ROWS) + " (kanji) or " + ", ".join(WORDNET_ROWS)
                        + " (wordnet); all by default")
    p.add_argument("--impls", default=",".join(IMPLS), help="metakern, plain or both")
    p.add_argument("--iterations", type=int, default=1000, help="meta-iterations of every row")
    p.add_argument("--row-iterations", default="",
                   help="overrides, e.g. 'maml-conv4=40,anil-conv4@20w1s=100' (ROW or ROW@SETTING)")
    p.add_argument("--filters", type=int, default=64, help="Conv-4 filters per convolution (64 in the paper)")
    p.add_argument("--queries", type=int, default=15, help="query images per class")
    p.add_argument("--test-tasks", type=int, default=600)
    p.add_argument("--limit", type=int, default=None, help="use only this many kanji characters (all by default)")
    p.add_argument("--cache-dir", default=None, help="where the drawn characters are cached (see metakern.datasets)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (torch's default when not given)")
    p.add_argument("--machine", default="cpu-2core", help="the device column of the CSV")
    p.add_argument("--quick", action="store_true",
                   help="a tiny end-to-end run: 2 iterations, 80 characters, 4 filters, 3 queries, 5 test tasks")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default=None, help="append rows to this CSV (written after each row)")
    p.add_argument("--lockstep", type=int, default=0, metavar="N",
                   help="instead of the protocol: N iterations of metakern and the reference side by side, "
                        "synchronised and not, printing how far their gradients and parameters differ")
    p.add_argument("--table", default=None, metavar="CSV", help="print the README's table of this CSV and exit")
    a = p.parse_args(argv)
    if a.table:
        print(table(a.table))
        return
    if a.quick:
        a.iterations, a.limit, a.filters, a.test_tasks, a.queries = 2, a.limit or 80, 4, 5, 3
    wordnet = a.task == "wordnet"
    all_settings, all_rows = (WORDNET_SETTINGS, WORDNET_ROWS) if wordnet else (SETTINGS, ROWS)
    if not wordnet and (a.labels != "lexname" or a.features != "minilm" or a.data_root):
        raise ValueError("--labels, --features and --data-root are for --task wordnet")
    settings = _names(a.settings or ",".join(all_settings), all_settings, "settings")
    rows = _names(a.rows or ",".join(all_rows), all_rows, "rows")
    impls = _names(a.impls, IMPLS, "impls")
    overrides = parse_row_iterations(a.row_iterations, all_rows, all_settings)
    progress = not a.no_progress
    if a.threads:
        torch.set_num_threads(a.threads)
    for setting in settings:
        ways, shots, meta_batch, lr, steps, test_steps = all_settings[setting]
        kw = dict(ways=ways, shots=shots, queries=a.queries, cache_dir=a.cache_dir, progress=progress)
        if wordnet:
            kw.update(root=a.data_root, labels=a.labels, features=a.features)
            train_task, test_task = mk.tasks.wordnet(split="train", **kw), mk.tasks.wordnet(split="test", **kw)
        else:
            train_task, test_task = (mk.tasks.kanji(split=s, limit=a.limit, **kw) for s in ("train", "test"))

        def stamp(**row):
            """The CSV columns every row has (the wordnet ones last, so kanji's CSV keeps its header)."""
            out = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       device=a.machine, torch=torch.__version__, threads=torch.get_num_threads(), setting=setting,
                       ways=ways, shots=shots, queries=a.queries)
            out.update(row)
            if wordnet:
                out.update(task="wordnet", labels=a.labels, features=a.features)
            return out

        if wordnet and a.out and not a.lockstep:  # the nearest class mean on the same test tasks as meta_test's
            res = T.prototype_test(test_task, tasks=a.test_tasks, batch=100,
                                   generator=torch.Generator().manual_seed(a.seed + 2))
            print(f"{setting} nearest class mean: {res}", flush=True)
            append_rows(a.out, [stamp(
                algo="ncm", model="", filters="", impl="prototype", backend="", meta_batch="", inner_lr="",
                train_steps="", test_steps="", iterations=0, seed=a.seed, train_classes=len(train_task.classes),
                test_classes=len(test_task.classes), accuracy=f"{res.mean:.4f}", ci95=f"{res.ci95:.4f}",
                test_tasks=res.tasks, final_query_loss="", train_seconds="", ms_per_iteration="")])
        for row in rows:
            algo, model = all_rows[row]
            iters = overrides.get((row, setting), overrides.get((row, None), a.iterations))
            torch.manual_seed(a.seed)
            if model == "conv4":
                extra = dict(filters=a.filters)
            else:
                extra = dict(hidden=WORDNET_HIDDEN if wordnet else mk.OmniglotMLP.HIDDEN)
            learner = T.build_learner(algo, train_task, model=model, inner_lr=lr, steps=steps, backend=a.backend,
                                      **extra)
            plain = PlainLearner(algo, model, learner, lr, steps)
            if a.lockstep:
                for sync in (True, False):
                    print(f"{setting} {row}: lockstep, reference {'synchronised' if sync else 'free'}", flush=True)
                    torch.manual_seed(a.seed)
                    lrn = T.build_learner(algo, train_task, model=model, inner_lr=lr, steps=steps,
                                          backend=a.backend, **extra)
                    lockstep(lrn, PlainLearner(algo, model, lrn, lr, steps), train_task, iterations=a.lockstep,
                             meta_batch=meta_batch, seed=a.seed, sync=sync)
                continue
            untrained = T.untrained_copy(learner)
            results = [("untrained", untrained, None)]
            for impl in impls:
                results.append((impl, learner, _metakern_step(learner)) if impl == "metakern"
                               else (impl, plain, plain.meta_step))
            out = []
            for impl, lrn, step in results:
                label = f"{setting} {row} {impl}"
                n, secs, final = 0, 0.0, float("nan")
                if step is not None:
                    n = iters
                    secs, final = meta_train(lrn, step, train_task, iterations=n, meta_batch=meta_batch, seed=a.seed,
                                             label=label, progress=progress)
                for k in sorted({steps, test_steps}):  # the training steps, and the paper's test steps
                    t0 = time.perf_counter()
                    res = T.meta_test(lrn, test_task, tasks=a.test_tasks, batch=100, steps=k,
                                      generator=torch.Generator().manual_seed(a.seed + 2))
                    print(f"{label:28s} {k:2d} test steps: {res}   ({n} it, {secs:.1f} s, "
                          f"{1e3 * secs / max(n, 1):.0f} ms/it, final query loss {final:.3f}; "
                          f"meta-test {time.perf_counter() - t0:.1f} s)", flush=True)
                    out.append(stamp(
                        algo=algo, model=model,
                        filters=a.filters if model == "conv4" else "", impl=impl,
                        backend=a.backend if impl != "plain" else "autograd", meta_batch=meta_batch, inner_lr=lr,
                        train_steps=steps, test_steps=k, iterations=n, seed=a.seed,
                        train_classes=len(train_task.classes), test_classes=len(test_task.classes),
                        accuracy=f"{res.mean:.4f}", ci95=f"{res.ci95:.4f}", test_tasks=res.tasks,
                        final_query_loss="" if math.isnan(final) else f"{final:.4f}", train_seconds=f"{secs:.1f}",
                        ms_per_iteration=f"{1e3 * secs / n:.1f}" if n else ""))
            if a.out:
                append_rows(a.out, out)


def table(path):
    """The README's Markdown table of a results CSV: per setting and row, accuracy with its
    95% interval not meta-trained / metakern / plain, at the training and the test steps.
    A wordnet CSV gets a first column of its labels and features, and a nearest class
    mean column (the same test tasks, no training)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))

    def group(r):
        return f"{r['labels']}, {r['features']}" if r.get("task") == "wordnet" else ""

    cell = {(group(r), r["setting"], r["algo"], r["model"], r["impl"], r["test_steps"] and int(r["test_steps"])): r
            for r in rows}
    wordnet = any(r.get("task") == "wordnet" for r in rows)
    head = ["setting", "row", "iterations", "test steps", "not meta-trained", "metakern", "plain PyTorch",
            "ms/it metakern / plain"]
    if wordnet:
        head = ["classes, features"] + head[:5] + ["nearest class mean"] + head[5:]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    seen = []
    for r in rows:
        key = (group(r), r["setting"], r["algo"], r["model"], r["test_steps"] and int(r["test_steps"]))
        if r["impl"] != "prototype" and key not in seen:
            seen.append(key)
    order = {s: i for i, s in enumerate([*SETTINGS, *WORDNET_SETTINGS])}
    rank = {}
    for v in [*ROWS.values(), *WORDNET_ROWS.values()]:  # the two tasks share the MLP rows: kanji's order first
        rank.setdefault(v, len(rank))
    groups = {g: i for i, g in enumerate(dict.fromkeys(k[0] for k in seen))}
    for grp, setting, algo, model, k in sorted(seen, key=lambda t: (groups[t[0]], order[t[1]], rank[(t[2], t[3])],
                                                                      t[4])):
        got = {impl: cell.get((grp, setting, algo, model, impl, k)) for impl in ("untrained", *IMPLS)}
        if any(v is None for v in got.values()):
            continue

        def acc(r):
            return f"{100 * float(r['accuracy']):.1f} ± {100 * float(r['ci95']):.1f}" if r else ""

        name = {"maml": "MAML", "fomaml": "FOMAML", "metasgd": "Meta-SGD", "anil": "ANIL"}[algo]
        width = f" ({got['metakern']['filters']} filters)" if model == "conv4" else ""
        cells = [setting, f"{name}-{'MLP' if model == 'mlp' else 'Conv4'}{width}", got["metakern"]["iterations"],
                 str(k), acc(got["untrained"])]
        if wordnet:
            cells = [grp] + cells + [acc(cell.get((grp, setting, "ncm", "", "prototype", "")))]
        cells += [acc(got["metakern"]), acc(got["plain"]),
                  f"{float(got['metakern']['ms_per_iteration']):.0f} / {float(got['plain']['ms_per_iteration']):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
