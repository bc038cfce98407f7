"""Meta-training across processes (metakern.distributed): gloo, two processes, against one.

Two processes are spawned from the test (torch.multiprocessing, spawn) or started by
torchrun (``python -m torch.distributed.run``), on free ports chosen at run time; every
wait is bounded (the process-group timeout inside, a deadline outside). Each process
uses one torch thread.
"""
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

import dist_workers as W
import metakern as mk
import reference as R
from helpers import assert_close
from metakern import cli, distributed, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 240  # for one launch of two processes on a busy 2-core machine (each imports torch: seconds)

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="this torch has no torch.distributed with gloo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, args, size=2, deadline_s=DEADLINE_S, wait_for=None):
    """Start ``size`` processes ``fn(rank, size, *args)``; wait for them (or for the ranks
    in ``wait_for``) until the deadline, then stop any still running. Returns the exit codes."""
    ctx = mp.start_processes(fn, args=(size, *args), nprocs=size, join=False, start_method="spawn")
    end = time.monotonic() + deadline_s
    ranks = range(size) if wait_for is None else wait_for
    try:
        for r in ranks:
            ctx.processes[r].join(max(0.0, end - time.monotonic()))
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(10)
    return [ctx.processes[r].exitcode for r in range(size)]


def _env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")


# ----------------------------------------------------------------------------- learners under DDP

@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("equality")
    codes = spawn(W.equality_worker, (free_port(), str(out)))
    assert codes == [0, 0], f"worker exit codes {codes}"
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


# float64 throughout: two processes sum the same per-task terms as one, in another order
# (per shard, then DDP's average), so they differ by rounding only: ~1e-16 relative per
# operation; Adam's normalised steps (lr 1e-3, eps 1e-8) keep that at that level.
RTOL64 = 1e-12


@pytest.mark.parametrize("case", W.CASES)
def test_two_processes_equal_one(two_process_results, case):
    one_grad, one_params, one_history = W.run_case(case, distributed.World())
    for rank, results in enumerate(two_process_results):
        grad, params, history = results[case]
        assert_close(grad, one_grad, RTOL64, f"{case}: meta-gradient of one step, rank {rank}")
        assert_close(params, one_params, RTOL64, f"{case}: parameters after {W.ADAM_STEPS} Adam steps, rank {rank}")
        if case != "reptile":  # the logged loss is the mean over ranks: the global one (Reptile: its gradient only)
            assert_close(history, one_history, RTOL64, f"{case}: loss history, rank {rank}")
    # the meta-step moved the parameters: the comparison is not of untouched copies
    start = torch.cat([p.detach().reshape(-1) for p in W.make_learner(case).parameters()])
    assert (one_params - start).abs().max() > 1e-4


def test_the_cases_cover_fused_second_order_and_generic():
    maml, generic = W.make_learner("maml"), W.make_learner("generic")
    assert maml.fused and not maml.first_order and maml.steps == 2
    assert not generic.fused and not generic.first_order


def test_fused_maml_gradient_is_autograd_ground_truth(two_process_results):
    """The two-process meta-gradient of the fused MAML case against plain autograd through the
    unrolled inner loop (float64), over the global batch."""
    learner = W.make_learner("maml")
    xs, ys, xq, yq = W.TASK.sample(W.T_TASKS, W.batch_generator("maml"), dtype=W.DTYPE)
    params = [p.detach().clone().requires_grad_() for p in learner.parameters()]
    fast = R.adapt(params, xs, ys, learner.lr.item(), learner.steps)
    loss = R.task_losses(fast, xq, yq, "mse", "relu") / W.T_TASKS
    truth = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    assert_close(two_process_results[0]["maml"][0], truth, 1e-9, "two-process meta-gradient vs autograd")


# ----------------------------------------------------------------------------- sharding

def test_shards_are_contiguous_and_cover_the_batch():
    for T, size in [(7, 2), (25, 2), (8, 4), (5, 5), (1000, 3)]:
        bounds = [distributed.shard_bounds(T, r, size) for r in range(size)]
        assert bounds[0][0] == 0 and bounds[-1][1] == T
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_shard_weights_give_the_global_mean():
    """Each rank's weighted share averages to the global mean loss, for an uneven split (in one process)."""
    g = torch.Generator().manual_seed(7)
    learner = mk.MAML(mk.MLP(1, [8], 1), lr=0.02).double()
    batch = mk.tasks.Sinusoid().sample(5, g, dtype=torch.float64)
    shares = [distributed.MetaObjective(learner, rank=r, size=3)(*batch) for r in range(3)]
    assert_close(sum(shares) / 3, learner.meta_loss(*batch), 1e-14, "mean of the weighted shares")


def test_fewer_tasks_than_processes_is_refused():
    with pytest.raises(ValueError, match="cannot be split over 2 processes.*at least 2 tasks"):
        distributed.shard_bounds(1, 0, 2)
    learner = mk.MAML(mk.MLP(1, [4], 1))
    batch = mk.tasks.Sinusoid().sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="cannot be split over 3 processes"):
        distributed.MetaObjective(learner, rank=0, size=3)(*batch)
    with pytest.raises(ValueError, match="yq has 1 tasks but xs has 2"):
        distributed.MetaObjective(learner, rank=0, size=2)(*batch[:3], batch[3][:1])


# ----------------------------------------------------------------------------- the environment

@pytest.mark.parametrize("env, match", [
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"RANK": "0"}, "WORLD_SIZE is not set"),
    ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "RANK=2 must be < WORLD"),
    ({"RANK": "0", "WORLD_SIZE": "two", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, "WORLD_SIZE='two'"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "29500"}, "MASTER_ADDR is not set"),
])
def test_bad_environment_is_a_clear_error(monkeypatch, capsys, env, match):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        distributed.init()
    with pytest.raises(SystemExit):  # the command line says it before doing anything
        cli.main(["train", "--iterations", "1"])
    err = capsys.readouterr().err
    assert "torchrun" in err and match.split()[0] in err


def test_no_environment_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    world = distributed.init()
    assert (world.rank, world.size, world.distributed, world.is_main) == (0, 1, False, True)
    assert isinstance(world.wrap(mk.MAML(mk.MLP(1, [4], 1))), distributed.MetaObjective)
    assert world.mean(2.5) == 2.5 and world.gather("x") == ["x"] and world.broadcast(3) == 3
    world.close()


def test_cuda_rank_without_its_gpu_is_refused(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "64")
    monkeypatch.setenv("LOCAL_RANK", "63")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n > 63:
        pytest.skip("this machine has 64 GPUs")
    with pytest.raises(ValueError, match=f"LOCAL_RANK=63 needs GPU 63, but this machine has {n} CUDA"):
        distributed.init(device="cuda")


def test_meta_train_across_processes_needs_a_generator():
    world = distributed.World(rank=0, size=2, backend="gloo")  # checked before anything communicates
    with pytest.raises(ValueError, match="needs generator="):
        train.meta_train(mk.MAML(mk.MLP(1, [4], 1)), mk.tasks.Sinusoid(), iterations=1, meta_batch=4, world=world)
    with pytest.raises(ValueError, match="cannot be split over 2 processes"):
        train.meta_train(mk.MAML(mk.MLP(1, [4], 1)), mk.tasks.Sinusoid(), iterations=1, meta_batch=1, world=world,
                         generator=torch.Generator())


# ----------------------------------------------------------------------------- faults

@pytest.mark.parametrize("mode, timeout_s", [("raise", 60.0), ("hang", 4.0)])
def test_a_failing_rank_stops_the_others(tmp_path, mode, timeout_s):
    """Rank 1 fails at its third iteration: it raises (and exits) or hangs. Rank 0 stops with a
    message naming itself, the iteration and the cause: at once when rank 1 is gone, after the
    process-group timeout when it hangs (no launcher here kills it)."""
    codes = spawn(W.fault_worker, (free_port(), str(tmp_path), mode, timeout_s), wait_for=[0])
    assert codes[0] == 3, f"rank 0 exit code {codes[0]}"
    kind, message, elapsed = torch.load(tmp_path / "rank0.pt")
    assert kind == "RuntimeError"
    assert message.startswith("rank 0 of 2: meta-iteration 3 failed: another process has stopped"), message
    assert f"process-group timeout of {timeout_s:g} s" in message
    if mode == "raise":
        assert torch.load(tmp_path / "rank1.pt")[0] == "OSError"
        assert elapsed < timeout_s / 2, f"rank 0 took {elapsed:.1f} s to notice that rank 1 had exited"
    else:
        assert timeout_s - 1 <= elapsed < timeout_s + 30, f"rank 0 stopped after {elapsed:.1f} s"


# ----------------------------------------------------------------------------- the command line

ARGS = ["train", "--task", "sine", "--algo", "maml", "--seed", "0", "--test-tasks", "40", "--no-progress",
        "--dist-timeout", "60"]
N = 20  # iterations: enough for Adam to move every parameter, small enough to be quick


def torchrun(args, port):
    """``torchrun --nproc_per_node 2 -m metakern ...`` as a user runs it (the rendezvous of a
    multi-node run, on one node), started in the background."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"test{port}",
           "-m", "metakern", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    try:
        out, err = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"torchrun did not finish in {DEADLINE_S} s:\n{out}\n{err}")
    assert proc.returncode == 0, f"torchrun exit code {proc.returncode}:\n{out}\n{err[-3000:]}"
    return out


# fp32: the two runs differ by the rounding of the gradient's sums (~1e-7 relative),
# carried through N Adam steps of lr 1e-3; 1e-5 of the largest entry leaves room for it
# and is a thousand times smaller than one Adam step.
RTOL32 = 1e-5


def test_cli_under_torchrun_equals_one_process(tmp_path):
    """The command line on two processes: the same state_dict and meta-test as one process,
    and after --resume from a one-process checkpoint too (a change of world size)."""
    two, resumed = tmp_path / "two.pt", tmp_path / "resumed.pt"
    one, half = tmp_path / "one.pt", tmp_path / "half.pt"
    assert cli.main([*ARGS, "--iterations", str(N // 2), "--save", str(half)]) == 0
    runs = [torchrun([*ARGS, "--iterations", str(N), "--save", str(two)], free_port()),
            torchrun([*ARGS, "--iterations", str(N), "--resume", str(half), "--save", str(resumed)], free_port())]
    assert cli.main([*ARGS, "--iterations", str(N), "--save", str(one)]) == 0
    outs = [finish(p) for p in runs]
    ref = torch.load(one)
    for path in (two, resumed):
        got = torch.load(path)
        assert got["iteration"] == N and got["world_size"] == 2
        for k, v in ref["state_dict"].items():
            assert_close(got["state_dict"][k], v, RTOL32, f"{path.name}: {k}")
        for name, r in ref["meta_test"].items():
            assert got["meta_test"][name]["tasks"] == r["tasks"]
            assert got["meta_test"][name]["mean"] == pytest.approx(r["mean"], rel=1e-5)
            assert got["meta_test"][name]["ci95"] == pytest.approx(r["ci95"], rel=1e-4)
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for out in outs:  # rank 0 alone prints
        assert out.count("meta-training maml on sine") == 1, out
        assert f"2 processes (gloo), {threads} torch thread(s) each" in out
        assert out.count("split over 2 processes") == 1 and out.count("saved checkpoint") == 1
    assert "resumed from" in outs[1] and "after 10 iterations (written by 1 process(es))" in outs[1]


def test_cli_resume_checks_the_configuration(tmp_path, capsys):
    ckpt = tmp_path / "c.pt"
    assert cli.main([*ARGS, "--iterations", "2", "--save", str(ckpt), "--test-tasks", "4"]) == 0
    assert cli.main([*ARGS, "--iterations", "4", "--resume", str(ckpt), "--algo", "fomaml"]) == 2
    assert "trained with --algo maml, this run has --algo fomaml" in capsys.readouterr().err
    assert cli.main([*ARGS, "--iterations", "1", "--resume", str(ckpt)]) == 2
    assert "done 2 iterations, more than --iterations 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*ARGS, "--iterations", "4", "--resume", str(tmp_path / "missing.pt")])
    assert "no such file" in capsys.readouterr().err


def test_resume_in_one_process_is_exact(tmp_path):
    """Stopping and resuming changes nothing: the same bits as one uninterrupted run."""
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    assert cli.main([*ARGS, "--iterations", "6", "--save", str(a), "--save-every", "3", "--test-tasks", "4"]) == 0
    assert cli.main([*ARGS, "--iterations", "3", "--save", str(b), "--test-tasks", "4"]) == 0
    assert cli.main([*ARGS, "--iterations", "6", "--resume", str(b), "--save", str(b), "--test-tasks", "4"]) == 0
    sa, sb = torch.load(a), torch.load(b)
    for k in sa["state_dict"]:
        assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), k
    assert torch.equal(sa["generator"], sb["generator"])


# ----------------------------------------------------------------------------- the scaling benchmark

def test_scaling_benchmark_runs(tmp_path):
    import csv

    from metakern.benchmark import scaling

    out = tmp_path / "scaling.csv"
    assert scaling.main(["--workloads", "sine", "--T", "4", "--K", "1", "--rounds", "1", "--steps", "2",
                         "--min-time", "0", "--warmup", "1", "--csv", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == scaling.COLUMNS
    assert [r["processes"] for r in rows] == ["1", "2"] and all(r["note"] == "" for r in rows)
    assert rows[1]["dist_backend"] == "gloo" and float(rows[1]["allreduce_ms"]) > 0
    assert float(rows[1]["allreduce_kb"]) == 4 * sum(a * b + b for a, b in [(1, 40), (40, 40), (40, 1)]) / 1e3
