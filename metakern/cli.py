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


def cmd_train(args) -> int:
    from metakern import train as T

    torch.manual_seed(args.seed)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    device = torch.device(args.device)
    train_task, test_task = _task_pair(args)
    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else ()
    lr0, steps0 = T.inner_defaults(args.algo)
    args.inner_lr = lr0 if args.inner_lr is None else args.inner_lr
    args.steps = steps0 if args.steps is None else args.steps
    learner = T.build_learner(args.algo, train_task, hidden=hidden, inner_lr=args.inner_lr, steps=args.steps,
                              backend=args.backend).to(device=device, dtype=dtype)
    baseline = T.untrained_copy(learner)
    g_train = torch.Generator().manual_seed(args.seed)
    print(f"meta-training {args.algo} on {args.task}: {args.iterations} iterations, meta-batch {args.meta_batch}, "
          f"{args.steps} inner step(s) at lr {args.inner_lr}, Adam {args.meta_lr}, backend {args.backend}")
    timings = {}
    T.meta_train(learner, train_task, iterations=args.iterations, meta_batch=args.meta_batch, meta_lr=args.meta_lr,
                 generator=g_train, progress=not args.no_progress, device=device, dtype=dtype, timings=timings)
    print(f"meta-training took {timings['first_s'] + timings['rest_s']:.1f} s: {_per_iteration(timings, args.iterations)}")
    test_steps = args.test_steps if args.test_steps is not None else args.steps
    res = {}
    for name, model in (("meta-trained", learner), ("not meta-trained", baseline)):
        g_test = torch.Generator().manual_seed(args.seed + 1_000_003)  # same held-out tasks for both
        res[name] = T.meta_test(model, test_task, tasks=args.test_tasks, steps=test_steps, generator=g_test,
                                device=device, dtype=dtype)
    print(f"meta-test after {test_steps} inner step(s) on {args.test_tasks} held-out tasks:")
    for name, r in res.items():
        print(f"  {name:17s} {r}")
    if args.save:
        ckpt = {"state_dict": learner.state_dict(), "config": vars(args), "meta_test": {k: vars(v) for k, v in res.items()}}
        torch.save(ckpt, args.save)
        print(f"saved checkpoint to {args.save} (learner.load_state_dict(torch.load(path)['state_dict']))")
    return 0


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
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.add_parser("bench", help="microbenchmarks (see `metakern bench --help`)", add_help=False)
    return p


def _positive(args, parser):
    for name in ("steps", "iterations", "meta_batch", "shots", "queries", "ways", "test_tasks"):
        v = getattr(args, name)
        low = 0 if name == "steps" else 1
        if v is not None and v < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}, got {v}")
    if args.test_steps is not None and args.test_steps < 0:
        parser.error(f"--test-steps must be >= 0, got {args.test_steps}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but no CUDA device is available")
    if args.save:
        why = _unwritable(args.save)
        if why:
            parser.error(f"--save {args.save}: {why}")


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
    _positive(args, parser)
    try:
        return cmd_train(args)
    except (ValueError, TypeError, RuntimeError, ImportError) as e:
        print(f"metakern train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
