"""The ``metakern`` command line: ``info``, ``train``, ``bench``."""
from __future__ import annotations

import argparse
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


def _task_pair(args):
    from metakern import tasks

    if args.task == "digits":
        kw = dict(ways=args.ways, shots=args.shots, queries=args.queries)
        return tasks.digits(split="train", **kw), tasks.digits(split="test", **kw)
    kw = {"shots": args.shots, "queries": args.queries}
    t = tasks.make_task(args.task, **kw)
    return t, t  # regression tasks: fresh draws from the same distribution, separate generators


# what a resumed run must share with the run that wrote the checkpoint
RESUME_SAME = ("task", "algo", "hidden", "steps", "inner_lr", "shots", "queries", "ways", "meta_batch", "meta_lr",
               "dtype", "seed")


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
    train_task, test_task = _task_pair(args)
    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else ()
    lr0, steps0 = T.inner_defaults(args.algo)
    args.inner_lr = lr0 if args.inner_lr is None else args.inner_lr
    args.steps = steps0 if args.steps is None else args.steps
    learner = T.build_learner(args.algo, train_task, hidden=hidden, inner_lr=args.inner_lr, steps=args.steps,
                              backend=args.backend).to(device=device, dtype=dtype)
    baseline = T.untrained_copy(learner)
    g_train = torch.Generator().manual_seed(args.seed)
    opt = T.make_optimizer(learner, args.meta_lr)
    start = 0
    if args.resume:
        ckpt = world.broadcast(_read_checkpoint(args.resume) if main else None)  # rank 0 reads it
        if isinstance(ckpt, str):
            raise ValueError(ckpt)
        _check_resumable(ckpt, args)
        start = T.load_checkpoint(ckpt, learner, opt, g_train)
        say(f"resumed from {args.resume} after {start} iterations (written by {ckpt.get('world_size', 1)} "
            f"process(es))")
    where = (f", {world.size} processes ({world.backend}), {torch.get_num_threads()} torch thread(s) each"
             if world.distributed else "")
    say(f"meta-training {args.algo} on {args.task}: {args.iterations} iterations, meta-batch {args.meta_batch}, "
        f"{args.steps} inner step(s) at lr {args.inner_lr}, Adam {args.meta_lr}, backend {args.backend}{where}")
    config = vars(args)

    def checkpoint(iteration, optimizer, **extra):
        T.save_checkpoint(args.save, learner, optimizer, iteration, g_train, config=config,
                          world_size=world.size, **extra)

    timings = {}
    T.meta_train(learner, train_task, iterations=args.iterations, meta_batch=args.meta_batch, meta_lr=args.meta_lr,
                 generator=g_train, progress=not args.no_progress, device=device, dtype=dtype, timings=timings,
                 optimizer=opt, start=start, checkpoint_every=args.save_every if args.save else 0,
                 on_checkpoint=checkpoint, world=world)
    done = args.iterations - start
    if done:
        say(f"meta-training took {timings['first_s'] + timings['rest_s']:.1f} s: {_per_iteration(timings, done)}")
    test_steps = args.test_steps if args.test_steps is not None else args.steps
    res = {}
    for name, model in (("meta-trained", learner), ("not meta-trained", baseline)):
        g_test = torch.Generator().manual_seed(args.seed + 1_000_003)  # same held-out tasks for both
        res[name] = T.meta_test(model, test_task, tasks=args.test_tasks, steps=test_steps, generator=g_test,
                                device=device, dtype=dtype, world=world)
    shared = f", split over {world.size} processes" if world.distributed else ""
    say(f"meta-test after {test_steps} inner step(s) on {args.test_tasks} held-out tasks{shared}:")
    for name, r in res.items():
        say(f"  {name:17s} {r}")
    if args.save and main:
        checkpoint(args.iterations, opt, meta_test={k: vars(v) for k, v in res.items()})
        say(f"saved checkpoint to {args.save} (learner.load_state_dict(torch.load(path)['state_dict']); "
            f"--resume {args.save} continues it)")
    return 0


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
    from metakern.train import ALGORITHMS, inner_defaults

    p = argparse.ArgumentParser(prog="metakern", description="Fused kernels for gradient-based meta-learning.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions and which backends are available (and why not)")
    t = sub.add_parser("train", help="meta-train on a built-in task and report the meta-test metric")
    own = ", ".join(f"{a} {lr:g} x {k}" for a, (lr, k) in ((a, inner_defaults(a)) for a in ALGORITHMS))
    t.add_argument("--task", choices=["sine", "linear", "digits"], default="sine", help="(default: %(default)s)")
    t.add_argument("--algo", choices=ALGORITHMS, default="maml", help="(default: %(default)s)")
    t.add_argument("--steps", type=int, default=None,
                   help=f"inner SGD steps (default: the algorithm's own; lr x steps: {own})")
    t.add_argument("--test-steps", type=int, default=None, help="inner steps at meta-test (default: --steps)")
    t.add_argument("--inner-lr", type=float, default=None, help="inner learning rate (default: the algorithm's own)")
    t.add_argument("--meta-lr", type=float, default=1e-3, help="Adam's learning rate (default: %(default)s)")
    t.add_argument("--meta-batch", type=int, default=25, help="tasks per meta-iteration (default: %(default)s)")
    t.add_argument("--iterations", type=int, default=2000, help="meta-iterations (default: %(default)s)")
    t.add_argument("--hidden", default="40,40",
                   help="hidden widths, comma separated; ANIL's body (default: %(default)s)")
    t.add_argument("--shots", type=int, default=10, help="support points (per class for digits) (default: %(default)s)")
    t.add_argument("--queries", type=int, default=10,
                   help="query points (per class for digits) (default: %(default)s)")
    t.add_argument("--ways", type=int, default=5, help="classes per task (digits) (default: %(default)s)")
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


def _positive(args, parser, files: bool = True):
    for name in ("steps", "iterations", "meta_batch", "shots", "queries", "ways", "test_tasks"):
        v = getattr(args, name)
        low = 0 if name == "steps" else 1
        if v is not None and v < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {v}")
    if args.test_steps is not None and args.test_steps < 0:
        parser.error(f"--test-steps must be >= 0, got {args.test_steps}")
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
    """What is wrong with --save and --resume (rank 0 checks them), or ``""``."""
    if args.save:
        why = _unwritable(args.save)
        if why:
            return f"--save {args.save}: {why}"
    if args.resume and not os.path.isfile(args.resume):
        return f"--resume {args.resume}: no such file; give a checkpoint written by --save"
    return ""


def _unwritable(path: str) -> str:
    """Why a checkpoint cannot be written to ``path`` (its folder is created), or ``""``."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return "is a directory; give a file name, e.g. run.pt"
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
    _positive(args, parser, files=place is None)  # across processes rank 0 checks the files
    try:
        return cmd_train(args)
    except (ValueError, TypeError, RuntimeError, ImportError) as e:
        msg = str(e)
        if place is not None and not msg.startswith("rank "):
            msg = f"rank {place['rank']} of {place['size']}: {msg}"
        print(f"metakern train: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
