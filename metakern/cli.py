"""The ``metakern`` command line: ``info``, ``train``, ``bench``."""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import sys

import torch


def cmd_info(args) -> int:
    import metakern
    from metakern import backends

    print(f"metakern {metakern.__version__}")
    print(f"python   {platform.python_version()} ({platform.machine()})")
    print(f"torch    {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}; "
          f"CUDA devices: {torch.cuda.device_count() if torch.cuda.is_available() else 0})")
    try:
        import triton

        print(f"triton   {triton.__version__}")
    except ImportError:
        print("triton   not installed")
    ext, err = backends.load_extension()
    if ext is not None and hasattr(ext, "build_info"):
        print(f"_C       {ext.build_info()}")
    print("backends:")
    for name, reasons in backends.available().items():
        status = "available" if not reasons else "unavailable: " + "; ".join(reasons)
        print(f"  {name:7s} {status}")
    return 0


IMAGE_TASKS = ("kanji", "omniglot")
# few-shot tasks with train / val / test class splits; wordnet's points are sentence features
SPLIT_TASKS = IMAGE_TASKS + ("wordnet",)
WORDNET_HIDDEN = "256"  # one hidden layer: 384-256-5 on MiniLM features
# The MAML paper's 5-way Omniglot settings (Finn et al., 2017, section 5.2): the defaults
# for the image tasks, except Reptile's inner loop, which keeps its own. The meta-test
# keeps --steps by default: an MLP meta-trained for one step at lr 0.4 can sit where a
# second step at that rate raises the support loss (README, Command line), so the
# paper's 3 test steps, or its reference code's 10, are asked for with --test-steps.
PAPER_5WAY = {"meta_batch": 32, "inner_lr": 0.4, "steps": 1}


def _resolve_defaults(args):
    """Fill the options left at ``None`` with the defaults of the task, model and algorithm."""
    from metakern.nn import OmniglotMLP
    from metakern.train import inner_defaults

    image = args.task in SPLIT_TASKS  # the 5-way settings of the MAML paper
    paper = image and args.algo not in ("reptile", "mamlpp")  # MAML++ keeps its own 5 steps at lr 0.1
    lr0, steps0 = inner_defaults(args.algo)
    if args.shots is None:
        args.shots = 1 if image else 10
    if args.queries is None:
        args.queries = 15 if image else 10
    if args.meta_batch is None:
        args.meta_batch = PAPER_5WAY["meta_batch"] if image else 25
    if args.inner_lr is None:
        args.inner_lr = PAPER_5WAY["inner_lr"] if paper else lr0
    if args.steps is None:
        args.steps = PAPER_5WAY["steps"] if paper else steps0
    if args.test_steps is None:
        args.test_steps = args.steps
    if args.hidden is None and args.model == "mlp":
        args.hidden = (WORDNET_HIDDEN if args.task == "wordnet" else ",".join(map(str, OmniglotMLP.HIDDEN)) if image
                       else "40,40")
    if args.filters is None and args.model == "conv4":
        args.filters = 64


def _make_tasks(args, world):
    """The (train, validation or None, test) samplers of ``args.task``. Image data sets
    are loaded (drawn or decoded, then cached) by rank 0 first; the other ranks then read
    its cache."""
    from metakern import tasks

    if args.task == "digits":
        kw = dict(ways=args.ways, shots=args.shots, queries=args.queries)
        return tasks.digits(split="train", **kw), None, tasks.digits(split="test", **kw)
    if args.task not in SPLIT_TASKS:
        t = tasks.make_task(args.task, shots=args.shots, queries=args.queries)
        return t, None, t  # regression tasks: fresh draws from the same distribution, separate generators

    def load():
        kw = dict(ways=args.ways, shots=args.shots, queries=args.queries, progress=world.is_main and
                  not args.no_progress)
        if args.task == "kanji":
            kw.update(drawings=args.drawings, limit=args.characters)
            make, where = tasks.kanji, f"--characters {args.characters}" if args.characters else "all characters"
        elif args.task == "wordnet":
            kw.update(root=args.data_root, labels=args.labels, features=args.features)
            make, where = tasks.wordnet, f"--labels {args.labels} --features {args.features}"
        else:
            kw.update(root=args.data_root)
            make, where = tasks.omniglot, f"--data-root {args.data_root}"
        out = []
        for split in ("train", "val" if args.val_every else None, "test"):
            try:
                out.append(make(split=split, **kw) if split else None)
            except ValueError as e:  # e.g. a split with fewer classes than --ways
                raise ValueError(f"--task {args.task}, {split} split ({where}): {e}") from None
        return out

    if not world.distributed:
        return load()
    problem, out = "", None
    if world.is_main:
        try:
            out = load()
        except Exception as e:  # every rank raises it: the others must not wait for a cache that never comes
            problem = str(e)
    problem = world.broadcast(problem)  # the others wait here for rank 0's cache
    if problem:
        raise ValueError(problem)
    return out if world.is_main else load()


# what a resumed run must share with the run that wrote the checkpoint
RESUME_SAME = ("task", "algo", "model", "hidden", "filters", "steps", "inner_lr", "shots", "queries", "ways",
               "meta_batch", "meta_lr", "dtype", "seed", "characters", "drawings", "labels", "features",
               "epoch_length", "msl_epochs", "first_order_epochs")


def cmd_train(args) -> int:
    from metakern import distributed as D

    world = D.init(device=args.device, timeout_s=args.dist_timeout)
    rc = _train(args, world)
    world.close()
    return rc


def _train(args, world) -> int:
    import warnings

    from metakern import train as T

    main = world.is_main
    say = print if main else (lambda *a, **k: None)  # rank 0 alone prints
    if not main:
        warnings.simplefilter("ignore")  # rank 0 shows them once
    if args.threads:
        torch.set_num_threads(args.threads)
    elif world.distributed and world.device.type == "cpu":
        torch.set_num_threads(world.default_threads())
    if world.distributed:
        world.shard(args.meta_batch)  # every rank needs a task
        problem = world.broadcast(_file_problems(args) if main else None)  # files are rank 0's
        if problem:
            raise ValueError(problem)
    torch.manual_seed(args.seed)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    device = world.device if world.distributed else torch.device(args.device)
    train_task, val_task, test_task = _make_tasks(args, world)
    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else ()
    schedule = {"msl_epochs": args.msl_epochs, "first_order_epochs": args.first_order_epochs}
    learner = T.build_learner(args.algo, train_task, model=args.model, inner_lr=args.inner_lr, steps=args.steps,
                              backend=args.backend, **({"hidden": hidden} if args.model == "mlp" else
                                                       {"filters": args.filters}), **schedule)
    learner = learner.to(device=device, dtype=dtype)
    baseline = T.untrained_copy(learner)
    g_train = torch.Generator().manual_seed(args.seed)
    opt = T.make_optimizer(learner, args.meta_lr)
    start = 0
    curve = {"loss": [], "val": []}  # [(iteration, training meta-loss)], [(iteration, accuracy, ci95)]
    if args.resume:
        ckpt = world.broadcast(_read_checkpoint(args.resume) if main else None)  # rank 0 reads it
        if isinstance(ckpt, str):
            raise ValueError(ckpt)
        _check_resumable(ckpt, args)
        start = T.load_checkpoint(ckpt, learner, opt, g_train)
        for key in curve:  # the learning curve so far (empty for a checkpoint without one)
            curve[key] = [tuple(p) for p in ckpt.get("curve", {}).get(key, []) if p[0] <= start]
        say(f"resumed from {args.resume} after {start} iterations (written by {ckpt.get('world_size', 1)} "
            f"process(es))")
    where = (f", {world.size} processes ({world.backend}), {torch.get_num_threads()} torch thread(s) each"
             if world.distributed else "")
    shape = "x".join(map(str, T.input_shape(train_task)))
    what = (f"{args.ways}-way {args.shots}-shot ({args.queries} queries), {args.model} on [{shape}], "
            if args.task in SPLIT_TASKS + ("digits",) else "")
    say(f"meta-training {args.algo} on {args.task}: {what}{args.iterations} iterations, meta-batch "
        f"{args.meta_batch}, {args.steps} inner step(s) at lr {args.inner_lr}, Adam {args.meta_lr}, "
        f"backend {args.backend}{where}")
    config = vars(args)
    test_steps = args.test_steps
    objective = getattr(learner, "objective", "meta-loss")

    def checkpoint(iteration, optimizer, **extra):
        T.save_checkpoint(args.save, learner, optimizer, iteration, g_train, config=config,
                          world_size=world.size, curve=curve, **extra)

    def record(iteration, loss):  # every rank: the validation is split over them
        curve["loss"].append((iteration, loss))
        if args.val_every and iteration % args.val_every == 0:
            g_val = torch.Generator().manual_seed(args.seed + 2_000_003)  # the same validation tasks each time
            r = T.meta_test(learner, val_task, tasks=args.val_tasks, steps=test_steps, generator=g_val,
                            device=device, dtype=dtype, world=world)
            curve["val"].append((iteration, r.mean, r.ci95))
            if main:
                _note(f"iteration {iteration}: validation {r}; training {objective} {loss:.4f}",
                      progress=not args.no_progress)

    timings = {}
    T.meta_train(learner, train_task, iterations=args.iterations, meta_batch=args.meta_batch, meta_lr=args.meta_lr,
                 generator=g_train, progress=not args.no_progress, device=device, dtype=dtype, timings=timings,
                 optimizer=opt, start=start, checkpoint_every=args.save_every if args.save else 0,
                 on_checkpoint=checkpoint, world=world, callback=record, epoch_length=args.epoch_length,
                 callback_every=_curve_every(args.iterations, args.val_every))
    done = args.iterations - start
    if done:
        took = timings['first_s'] + timings['rest_s']
        spent = f" (and {timings['callback_s']:.1f} s validating)" if args.val_every and curve["val"] else ""
        say(f"meta-training took {took:.1f} s{spent}: {_per_iteration(timings, done)}")
    res = {}
    for name, model in (("meta-trained", learner), ("not meta-trained", baseline)):
        g_test = torch.Generator().manual_seed(args.seed + 1_000_003)  # same held-out tasks for both
        res[name] = T.meta_test(model, test_task, tasks=args.test_tasks, steps=test_steps, generator=g_test,
                                device=device, dtype=dtype, world=world)
    if test_task.loss == "cross_entropy" and len(T.input_shape(test_task)) == 1:  # feature vectors
        g_test = torch.Generator().manual_seed(args.seed + 1_000_003)  # the same held-out tasks again
        res["nearest class mean"] = T.prototype_test(test_task, tasks=args.test_tasks, generator=g_test,
                                                     device=device, dtype=dtype)
    shared = f", split over {world.size} processes" if world.distributed else ""
    say(f"meta-test after {test_steps} inner step(s) on {args.test_tasks} held-out tasks{shared}:")
    for name, r in res.items():
        say(f"  {name:17s} {r}" + (" (prototypes, no training)" if name == "nearest class mean" else ""))
    if args.save and main:
        checkpoint(args.iterations, opt, meta_test={k: vars(v) for k, v in res.items()})
        say(f"saved checkpoint to {args.save} (learner.load_state_dict(torch.load(path)['state_dict']); "
            f"--resume {args.save} continues it)")
    if args.plot and main:
        title = (f"{args.algo} {args.model} on {args.task}, {args.ways}-way {args.shots}-shot: meta-test accuracy "
                 f"after {test_steps} step(s) "
                 f"{res['meta-trained'].mean:.3f} ± {res['meta-trained'].ci95:.3f}"
                 if args.task in SPLIT_TASKS + ("digits",) else f"{args.algo} on {args.task}")
        T.plot_learning_curve(args.plot, curve["loss"], curve["val"], loss_label=objective, title=title)
        say(f"wrote the learning curve to {args.plot}")
    return 0


def _curve_every(iterations: int, val_every: int) -> int:
    """How often the learning curve gets a point: about 100 points over the run, and
    every validation iteration among them."""
    every = max(1, iterations // 100)
    return math.gcd(every, val_every) if val_every else every


def _note(line: str, progress: bool):
    """Print a line; above the progress bar while there is one."""
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(line)
    else:
        print(line, flush=True)


def _read_checkpoint(path):
    """The checkpoint at ``path``, or why it cannot be read."""
    try:
        return torch.load(path, map_location="cpu")
    except Exception as e:  # unpickling raises many kinds
        return f"--resume {path}: cannot read it as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})"


def _check_resumable(ckpt, args):
    """The checkpoint can be resumed by this run: same configuration, not past --iterations."""
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise ValueError(f"--resume {args.resume}: not a checkpoint of metakern train (it has no config)")
    old = ckpt["config"]
    for key in RESUME_SAME:
        if key in old and old[key] != getattr(args, key):
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"--resume {args.resume}: the checkpoint was trained with {flag} {old[key]}, this run "
                             f"has {flag} {getattr(args, key)}; pass the same {flag}, or start afresh without --resume")
    if ckpt.get("iteration", 0) > args.iterations:  # load_checkpoint names what an old checkpoint lacks
        raise ValueError(f"--resume {args.resume}: the checkpoint has done {ckpt['iteration']} iterations, more "
                         f"than --iterations {args.iterations}; --iterations is the total, give at least "
                         f"{ckpt['iteration']}")


def _per_iteration(timings, iterations) -> str:
    """The steady-state rate, and the first iteration (start-up) separately."""
    first = f"first iteration {1e3 * timings['first_s']:.1f} ms (start-up)"
    if iterations < 2:
        return first
    return f"{1e3 * timings['rest_s'] / (iterations - 1):.2f} ms/iteration after the {first}"


def cmd_bench(args, rest) -> int:
    from metakern import benchmark

    return benchmark.main(rest) or 0


def build_parser() -> argparse.ArgumentParser:
    from metakern.backends import BACKENDS
    from metakern.train import ALGORITHMS, MODELS, inner_defaults

    p = argparse.ArgumentParser(prog="metakern", description="Fused kernels for gradient-based meta-learning.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and which backends are available (and why not)")
    t = sub.add_parser("train", help="meta-train on a built-in task and report the meta-test metric")
    own = ", ".join(f"{a} {lr:g} x {k}" for a, (lr, k) in ((a, inner_defaults(a)) for a in ALGORITHMS))
    paper = "for kanji/omniglot/wordnet (not reptile): the MAML paper's 5-way Omniglot"
    t.add_argument("--task", choices=["sine", "linear", "digits", *SPLIT_TASKS], default="sine",
                   help="sine and linear regression; few-shot classification of digits (scikit-learn's 8x8 digits, "
                        "a demo), kanji (KanjiVG characters drawn by simulated writers: pip install "
                        "\"metakern[data]\"; drawn once, then cached in $METAKERN_CACHE_DIR or ~/.cache/metakern) or "
                        "omniglot (from --data-root); wordnet (WordNet 3.0 glosses as sentence features: "
                        "pip install \"metakern[text]\", apt-get install wordnet-base) (default: %(default)s)")
    t.add_argument("--data-root", default=None, metavar="DIR",
                   help="--task omniglot: the folder the archives images_background.zip and images_evaluation.zip "
                        "(github.com/brendenlake/omniglot, python/) unpack into, or one of those folders "
                        "(required for omniglot); --task wordnet: the folder of data.noun, data.verb, data.adj, "
                        "data.adv (default: $WORDNET_DIR, /usr/share/wordnet, NLTK's corpora/wordnet)")
    t.add_argument("--labels", choices=("lexname", "domain"), default=None,
                   help="--task wordnet: classes are lexicographer files (45: noun.animal, verb.motion, ...) or "
                        "topic domains (71: law, military, ...) (default: lexname)")
    t.add_argument("--features", choices=("minilm", "glove", "tfidf"), default=None,
                   help="--task wordnet: all-MiniLM-L6-v2 (384-d), mean GloVe 6B (50-d) or TF-IDF (1024-d) "
                        "features, encoded once and cached (default: minilm)")
    t.add_argument("--characters", type=int, default=None, metavar="N",
                   help="--task kanji: draw only N characters, evenly spaced by code point (at least 3; for quick "
                        "runs; the splits keep the proportions 4543/413/1747 of the full 6703) (default: all)")
    t.add_argument("--drawings", type=int, default=20, metavar="N",
                   help="--task kanji: drawings (writers) per character (default: %(default)s)")
    t.add_argument("--model", choices=MODELS, default="mlp",
                   help="mlp (fused kernels for every algorithm) or conv4 (MAML's Omniglot network: 4 x conv3x3 "
                        "-> batch norm (each task's own batch statistics) -> ReLU -> maxpool 2, then a linear head; "
                        "the generic path, or the fused head for anil); conv4 needs an image task, kanji or "
                        "omniglot (default: %(default)s)")
    t.add_argument("--algo", choices=ALGORITHMS, default="maml",
                   help="mamlpp is MAML++: per-step learned inner rates, the multi-step loss and derivative-order "
                        "annealing, scheduled by epoch (default: %(default)s)")
    t.add_argument("--epoch-length", type=int, default=500, metavar="N",
                   help="--algo mamlpp: meta-iterations per epoch of its schedule (default: %(default)s, the MAML++ "
                        "code's)")
    t.add_argument("--msl-epochs", type=int, default=None, metavar="E",
                   help="--algo mamlpp: epochs over which the multi-step loss anneals to the last step (default: 10)")
    t.add_argument("--first-order-epochs", type=int, default=None, metavar="E",
                   help="--algo mamlpp: epochs of first-order meta-gradients before second order (default: 50; 0: "
                        "second order throughout)")
    t.add_argument("--steps", type=int, default=None,
                   help=f"inner SGD steps (default: the algorithm's own, lr x steps: {own}; {paper} 0.4 x 1)")
    t.add_argument("--test-steps", type=int, default=None,
                   help="inner steps at meta-test and validation (default: --steps; the MAML paper's Omniglot "
                        "evaluation takes 3, its reference code 10, which can diverge at --inner-lr 0.4 after a short "
                        "run)")
    t.add_argument("--inner-lr", type=float, default=None,
                   help=f"inner learning rate (default: the algorithm's own; {paper} 0.4)")
    t.add_argument("--meta-lr", type=float, default=1e-3, help="Adam's learning rate (default: %(default)s)")
    t.add_argument("--meta-batch", type=int, default=None,
                   help="tasks per meta-iteration (default: 25; 32 for kanji/omniglot/wordnet, the MAML paper's 5-way; "
                        "its 20-way settings are --meta-batch 16 --inner-lr 0.1 --steps 5 --test-steps 5)")
    t.add_argument("--iterations", type=int, default=2000, help="meta-iterations (default: %(default)s)")
    t.add_argument("--hidden", default=None,
                   help="--model mlp: hidden widths, comma separated; ANIL's body (default: 40,40; 256,128,64,64 "
                        "for kanji/omniglot, the MAML paper's Omniglot MLP without its batch norm; 256 for wordnet)")
    t.add_argument("--filters", type=int, default=None,
                   help="--model conv4: filters per convolution (default: 64)")
    t.add_argument("--shots", type=int, default=None,
                   help="support points (per class for classification) (default: 10; 1 for kanji/omniglot/wordnet)")
    t.add_argument("--queries", type=int, default=None,
                   help="query points (per class for classification) (default: 10; 15 for kanji/omniglot/wordnet)")
    t.add_argument("--ways", type=int, default=5, help="classes per task (classification) (default: %(default)s)")
    t.add_argument("--val-every", type=int, default=0, metavar="N",
                   help="kanji/omniglot/wordnet: the accuracy on --val-tasks tasks of the val split (classes apart from "
                        "train and test) every N iterations, printed and kept for --plot (default: never)")
    t.add_argument("--val-tasks", type=int, default=100, metavar="N",
                   help="tasks per validation, the same ones each time (default: %(default)s)")
    t.add_argument("--plot", default=None, metavar="PNG",
                   help="write a learning curve there: the training meta-loss and, with --val-every, the "
                        "validation accuracy against iterations (needs matplotlib; checked before training)")
    t.add_argument("--backend", choices=("auto",) + BACKENDS, default="auto", help="(default: %(default)s)")
    t.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="(default: %(default)s)")
    t.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    t.add_argument("--test-tasks", type=int, default=600, help="held-out tasks at meta-test (default: %(default)s)")
    t.add_argument("--save", default=None, help="write a checkpoint to this file (checked before training)")
    t.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="also write the --save checkpoint every N iterations (default: at the end only)")
    t.add_argument("--resume", default=None, metavar="PATH",
                   help="continue from a --save checkpoint (same configuration; any number of processes); "
                        "--iterations is the total")
    t.add_argument("--threads", type=int, default=None,
                   help="torch threads per process (default: torch's in one process; under torchrun on the CPU, "
                        "the cores over the processes on this machine)")
    t.add_argument("--dist-timeout", type=float, default=300.0, metavar="S",
                   help="under torchrun: the longest any collective waits for the other processes, seconds "
                        "(default: %(default)s)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.add_parser("bench", help="microbenchmarks (see `metakern bench --help`)", add_help=False)
    return p


def _check_options(args, parser):
    """Options that do not go with the task or the model (before the defaults fill them in)."""
    image = args.task in IMAGE_TASKS
    if args.task == "omniglot" and not args.data_root:
        parser.error("--task omniglot needs --data-root DIR: the folder the Omniglot archives images_background.zip "
                     "and images_evaluation.zip unpack into (get them from github.com/brendenlake/omniglot, "
                     "folder python/); metakern downloads nothing")
    if args.data_root and args.task not in ("omniglot", "wordnet"):
        parser.error(f"--data-root is the Omniglot folder, for --task omniglot only, or the WordNet folder, for "
                     f"--task wordnet (this run has --task {args.task})")
    for flag, value in (("--labels", args.labels), ("--features", args.features)):
        if value is not None and args.task != "wordnet":
            parser.error(f"{flag} is for --task wordnet only (this run has --task {args.task})")
    if args.task == "wordnet":
        args.labels = args.labels or "lexname"
        args.features = args.features or "minilm"
    for flag, value, default, low in (("--characters", args.characters, None, 3), ("--drawings", args.drawings, 20, 1)):
        if value != default and args.task != "kanji":
            parser.error(f"{flag} is for --task kanji only (this run has --task {args.task})")
        if value is not None and value < low:
            parser.error(f"{flag} must be >= {low}, got {value}" +
                         (" (the train, val and test splits need a character each)" if low == 3 else ""))
    if args.model == "conv4" and not image:
        parser.error(f"--model conv4 needs images: --task kanji or omniglot; --task {args.task} has feature vectors, "
                     "use --model mlp")
    if args.model == "conv4" and args.hidden is not None:
        parser.error("--hidden sets the widths of --model mlp; --model conv4 takes --filters N instead")
    if args.model == "mlp" and args.filters is not None:
        parser.error("--filters sets the convolutions of --model conv4; --model mlp takes --hidden instead")
    if args.val_every and args.task not in SPLIT_TASKS:
        parser.error(f"--val-every needs a validation split of classes: --task kanji, omniglot or wordnet; --task {args.task} "
                     "has none")
    for name in ("val_every", "filters"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "val_every" else 1):
            parser.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'val_every' else 1}, got {v}")
    if args.val_tasks < 1:
        parser.error(f"--val-tasks must be >= 1, got {args.val_tasks}")


def _positive(args, parser, files: bool = True):
    for name in ("steps", "iterations", "meta_batch", "shots", "queries", "ways", "test_tasks"):
        v = getattr(args, name)
        low = 0 if name == "steps" else 1
        if v is not None and v < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {v}")
    if args.test_steps is not None and args.test_steps < 0:
        parser.error(f"--test-steps must be >= 0, got {args.test_steps}")
    if args.epoch_length < 1:
        parser.error(f"--epoch-length must be >= 1, got {args.epoch_length}")
    for name in ("msl_epochs", "first_order_epochs"):
        flag = "--" + name.replace("_", "-")
        v = getattr(args, name)
        if v is not None and v < 0:
            parser.error(f"{flag} must be >= 0, got {v}")
        if v is not None and args.algo != "mamlpp":
            parser.error(f"{flag} sets MAML++'s schedule: it needs --algo mamlpp")
    if args.algo == "mamlpp" and args.test_steps is not None and args.steps is not None \
            and args.test_steps != args.steps:
        parser.error(f"--algo mamlpp learns one inner rate per step for its --steps {args.steps}; --test-steps "
                     f"{args.test_steps} would need rates it does not have: leave --test-steps out")
    if args.save_every < 0:
        parser.error(f"--save-every must be >= 0, got {args.save_every}")
    if args.save_every and not args.save:
        parser.error("--save-every needs --save PATH: the file the checkpoints go to")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if not args.dist_timeout > 0:
        parser.error(f"--dist-timeout must be > 0 seconds, got {args.dist_timeout}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but no CUDA device is available")
    if files:
        why = _file_problems(args)
        if why:
            parser.error(why)


def _file_problems(args) -> str:
    """What is wrong with --save, --plot and --resume (rank 0 checks them), or ``""``."""
    for flag, path in (("--save", args.save), ("--plot", args.plot)):
        why = _unwritable(path, "run.pt" if flag == "--save" else "curve.png") if path else ""
        if why:
            return f"{flag} {path}: {why}"
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        return f"--plot {args.plot} needs matplotlib, which is not installed: pip install matplotlib"
    if args.resume and not os.path.isfile(args.resume):
        return f"--resume {args.resume}: no such file; give a checkpoint written by --save"
    return ""


def _unwritable(path: str, example: str = "run.pt") -> str:
    """Why a file cannot be written to ``path`` (its folder is created), or ``""``."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return f"is a directory; give a file name, e.g. {example}"
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        return f"cannot create its folder ({e.strerror})"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return "is not writable"
    return ""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        return cmd_bench(None, argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return cmd_info(args)
    from metakern._validate import check_launch_env

    try:
        place = check_launch_env(os.environ)  # under torchrun: this process's rank
    except ValueError as e:
        parser.error(str(e))
    _check_options(args, parser)
    _resolve_defaults(args)
    _positive(args, parser, files=place is None)  # across processes rank 0 checks the files
    try:
        return cmd_train(args)
    except (ValueError, TypeError, RuntimeError, ImportError, OSError) as e:  # OSError: e.g. no data folder
        msg = str(e)
        if place is not None and not msg.startswith("rank "):
            msg = f"rank {place['rank']} of {place['size']}: {msg}"
        print(f"metakern train: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
