"""What the processes spawned by tests/test_distributed.py run, and what they are compared with.

Each worker joins a gloo group of ``size`` processes through metakern.distributed.init
(the environment a launcher would set), runs, and writes its results with torch.save
to ``out/rank{r}.pt``. A module of its own, so that spawned children import it
without pytest collecting it.
"""
import os
import time

import torch
from torch import nn

import metakern as mk
from metakern import distributed, train

T_TASKS = 7          # odd: the two ranks get 3 and 4 tasks (the uneven split)
ADAM_STEPS = 4
TASK = mk.tasks.Sinusoid(shots=5, queries=6)
DTYPE = torch.float64


def make_learner(case: str) -> nn.Module:
    """The learners compared across process counts, each from a fixed seed (float64)."""
    torch.manual_seed(1234)
    if case == "maml":  # fused path, second order, two inner steps
        learner = mk.MAML(mk.MLP(1, [12, 12], 1), lr=0.05, steps=2)
    elif case == "metasgd":
        learner = mk.MetaSGD(mk.MLP(1, [12], 1), lr=0.05, steps=1)
    elif case == "anil":
        learner = mk.ANIL(nn.Sequential(mk.MLP(1, [12], 12), nn.Tanh()), nn.Linear(12, 1), lr=0.1, steps=2)
    elif case == "generic":  # LayerNorm: the generic torch.func path, second order
        learner = mk.MAML(nn.Sequential(nn.Linear(1, 10), nn.LayerNorm(10), nn.Tanh(), nn.Linear(10, 1)), lr=0.05)
    elif case == "reptile":
        learner = mk.Reptile(mk.MLP(1, [12], 1), lr=0.05, steps=3)
    else:
        raise ValueError(case)
    return learner.to(DTYPE)


CASES = ("maml", "metasgd", "anil", "generic", "reptile")


def batch_generator(case: str) -> torch.Generator:
    return torch.Generator().manual_seed(100 + CASES.index(case))


def run_case(case: str, world: distributed.World):
    """``(gradient of the first meta-step, parameters after ADAM_STEPS Adam steps, the loss
    history)``, for ``world`` (one process: ``distributed.World()``)."""
    learner = make_learner(case)
    objective = world.wrap(learner)
    batch = TASK.sample(T_TASKS, batch_generator(case), dtype=DTYPE)
    objective(*batch).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in learner.parameters()])
    del objective
    learner = make_learner(case)
    history = train.meta_train(learner, TASK, iterations=ADAM_STEPS, meta_batch=T_TASKS, log_every=2,
                               generator=batch_generator(case), progress=False, dtype=DTYPE, world=world)
    return grad, torch.cat([p.detach().reshape(-1) for p in learner.parameters()]), torch.tensor(history)


def _join(rank: int, size: int, port: int, timeout_s: float) -> distributed.World:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return distributed.init(timeout_s=timeout_s)


def equality_worker(rank: int, size: int, port: int, out: str):
    world = _join(rank, size, port, timeout_s=60)
    results = {case: run_case(case, world) for case in CASES}
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    world.close()


class FaultyTask:
    """Sinusoid batches, except that on rank ``bad_rank`` the ``fail_at``-th draw fails:
    it raises (``mode="raise"``, as a data error would) or never returns (``"hang"``)."""

    in_features, out_features, loss = 1, 1, "mse"

    def __init__(self, rank, bad_rank, fail_at, mode):
        self.rank, self.bad_rank, self.fail_at, self.mode, self.calls = rank, bad_rank, fail_at, mode, 0

    def sample(self, batch_size, generator=None, device=None, dtype=torch.float32):
        self.calls += 1
        if self.rank == self.bad_rank and self.calls == self.fail_at:
            if self.mode == "hang":
                time.sleep(600)
            raise OSError(f"rank {self.rank} could not read its data")
        return mk.tasks.Sinusoid().sample(batch_size, generator, device=device, dtype=dtype)


def fault_worker(rank: int, size: int, port: int, out: str, mode: str, timeout_s: float):
    """Rank 1's task fails at the third iteration; rank 0 records what it raised and when."""
    world = _join(rank, size, port, timeout_s=timeout_s)
    learner = mk.MAML(mk.MLP(1, [8], 1), lr=0.01)
    task = FaultyTask(rank, bad_rank=1, fail_at=3, mode=mode)
    t0 = time.monotonic()
    try:
        train.meta_train(learner, task, iterations=50, meta_batch=4, generator=torch.Generator().manual_seed(0),
                         progress=False, world=world)
        outcome = ("finished", "", time.monotonic() - t0)
    except Exception as e:
        outcome = (type(e).__name__, str(e), time.monotonic() - t0)
    torch.save(outcome, os.path.join(out, f"rank{rank}.pt"))
    os._exit(3 if outcome[0] != "finished" else 0)  # no teardown of a group whose peer is gone
