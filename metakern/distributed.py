"""Meta-training across processes: the task batch split over ranks, the meta-gradient
all-reduced by ``torch.nn.parallel.DistributedDataParallel``.

One process per device (a share of the CPU cores, or one GPU), started by ``torchrun``,
which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
Every process draws the same *global* batch of ``T`` tasks from a generator seeded the
same everywhere, and takes its contiguous shard: rank ``r`` of ``W`` gets tasks
``[r*T//W, (r+1)*T//W)`` (sizes differ by at most one when ``W`` does not divide ``T``;
``T < W`` is a ``ValueError``). :class:`MetaObjective` is the module DDP wraps: its
``forward(xs, ys, xq, yq)`` takes the global batch and returns this rank's meta-loss
(the mean over its ``T_r`` tasks) times ``T_r * W / T``, so that DDP's average of the
ranks' gradients is the one-process gradient of the mean over all ``T`` tasks, whatever
``W`` is (for an even split the factor is 1). DDP all-reduces that gradient in buckets
during the backward, as it does for any model.

The value a rank's objective returns is its own share; the mean over ranks
(:meth:`World.mean`) is the global meta-loss. For Reptile only the gradient has this
property: the reported surrogate is the mean of the shards' surrogates.

Example (one process runs it as is; ``torchrun --nproc_per_node 2 script.py`` runs it on
two, with the same result up to rounding)::

    import torch, metakern as mk
    from metakern import distributed

    world = distributed.init()                       # from torchrun's variables, or one process
    maml = mk.MAML(mk.MLP(1, [40, 40], 1), lr=0.01)
    objective = world.wrap(maml)                     # DistributedDataParallel(MetaObjective(maml))
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)             # the same seed on every rank
    for it in range(100):
        batch = mk.tasks.Sinusoid().sample(32, g)    # the global batch, the same on every rank
        loss = objective(*batch)                     # this rank's shard
        opt.zero_grad(); loss.backward(); opt.step() # DDP averages the meta-gradient
    world.close()

Every collective waits at most the process group's timeout (``timeout_s``); a failed
or timed-out collective inside :meth:`World.guard` becomes a ``RuntimeError`` that says
which rank saw it and what to look for.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from . import _validate as V

__all__ = ["DEFAULT_TIMEOUT_S", "MetaObjective", "World", "init", "shard_bounds"]

DEFAULT_TIMEOUT_S = 300.0  # process-group timeout: the longest any collective waits


def shard_bounds(tasks: int, rank: int, size: int, *, allow_empty: bool = False) -> Tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[lo, hi)`` of ``tasks`` tasks over ``size`` processes.

    >>> [shard_bounds(25, r, 2) for r in range(2)]
    [(0, 12), (12, 25)]
    """
    size = V.check_int("size", size, 1)
    rank = V.check_int("rank", rank, 0)
    if rank >= size:
        raise ValueError(f"rank must be < size = {size}, got {rank}")
    tasks = V.check_shard(tasks, size, allow_empty=allow_empty)
    return rank * tasks // size, (rank + 1) * tasks // size


class MetaObjective(nn.Module):
    """A learner's meta-loss on this rank's shard of a global task batch, as a module.

    ``forward(xs, ys, xq=None, yq=None)`` takes the global batch (``[T, ...]`` each),
    computes ``learner.meta_loss`` on tasks :func:`shard_bounds` ``(T, rank, size)`` and
    weights it by ``T_r * size / T``, so that the mean of the ranks' values and of their
    gradients are those of the mean over all ``T`` tasks. Wrap it in
    ``DistributedDataParallel`` (:meth:`World.wrap` does); its parameters are the
    learner's. With ``size=1`` it is ``learner.meta_loss``.

    >>> import torch, metakern as mk
    >>> maml = mk.MAML(mk.MLP(1, [8], 1), lr=0.01)
    >>> batch = mk.tasks.Sinusoid().sample(6, torch.Generator().manual_seed(0))
    >>> halves = [MetaObjective(maml, rank=r, size=2)(*batch) for r in range(2)]
    >>> torch.allclose((halves[0] + halves[1]) / 2, maml.meta_loss(*batch))
    True
    """

    def __init__(self, learner: nn.Module, rank: int = 0, size: int = 1):
        super().__init__()
        if not isinstance(learner, nn.Module) or not callable(getattr(learner, "meta_loss", None)):
            raise TypeError(f"learner must be a metakern learner (an nn.Module with meta_loss), got "
                            f"{type(learner).__name__}")
        shard_bounds(size, rank, size)  # checks rank and size
        self.learner, self.rank, self.size = learner, rank, size

    def forward(self, xs, ys, xq=None, yq=None):
        T = V.check_task_batch((xs, ys, xq, yq), ("xs", "ys", "xq", "yq"))
        lo, hi = shard_bounds(T, self.rank, self.size)
        loss = self.learner.meta_loss(*(None if t is None else t[lo:hi] for t in (xs, ys, xq, yq)))
        weight = (hi - lo) * self.size / T
        return loss if weight == 1.0 else loss * weight

    def extra_repr(self) -> str:
        return f"rank={self.rank}, size={self.size}"


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:limit]


_BACKEND_MARKERS = ("gloo", "nccl", "NCCL", "ProcessGroup", "Connection closed", "Connection reset", "Timed out")


def _collective_failure(e: BaseException) -> bool:
    """Whether ``e`` comes from a collective (gloo and NCCL raise plain ``RuntimeError``s too)."""
    if isinstance(e, dist.DistError):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e) for m in _BACKEND_MARKERS)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run (one process: the defaults).

    ``backend`` is ``None`` when there is no process group (one process); then every
    method works and communicates nothing. Made by :func:`init`.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: Optional[str] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout_s: float = DEFAULT_TIMEOUT_S
    owner: bool = False  # init() created the process group: close() destroys it

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints and writes files."""
        return self.rank == 0

    def shard(self, tasks: int, *, allow_empty: bool = False) -> Tuple[int, int]:
        """This rank's ``[lo, hi)`` of a batch of ``tasks`` tasks (:func:`shard_bounds`)."""
        return shard_bounds(tasks, self.rank, self.size, allow_empty=allow_empty)

    def wrap(self, learner: nn.Module, **ddp_kwargs) -> nn.Module:
        """``DistributedDataParallel(MetaObjective(learner))`` (``ddp_kwargs`` go to DDP; on
        CUDA ``device_ids`` defaults to this rank's device), or the bare
        :class:`MetaObjective` without a process group. The learner's parameters must
        already be on :attr:`device`."""
        objective = MetaObjective(learner, rank=self.rank, size=self.size)
        if not self.distributed:
            return objective
        if self.device.type == "cuda":
            ddp_kwargs.setdefault("device_ids", [self.device.index])
        with self.guard("wrapping the learner in DistributedDataParallel (it checks and broadcasts the parameters)"):
            return nn.parallel.DistributedDataParallel(objective, **ddp_kwargs)

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (every rank calls it; float64 sum)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device())
        with self.guard("averaging a value over the ranks"):
            dist.all_reduce(t)
        return float(t.item()) / self.size

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank (picklable objects)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size
        with self.guard("gathering results from every rank"):
            dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any = None, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (the others pass anything)."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        with self.guard(f"receiving an object from rank {src}"):
            dist.broadcast_object_list(box, src=src)
        return box[0]

    def same(self, name: str, value: Any):
        """Check that every rank holds the same ``value`` (compared with ``==``);
        ``ValueError`` on every rank otherwise."""
        values = self.gather(value)
        differ = [r for r, v in enumerate(values) if v != values[0]]
        if differ:
            raise ValueError(f"{name} differs between ranks (rank 0: {values[0]!r}; rank {differ[0]}: "
                             f"{values[differ[0]]!r}): start every process with the same arguments and seed")

    @contextlib.contextmanager
    def guard(self, what: str):
        """Run a block that communicates; a failed or timed-out collective in it becomes a
        ``RuntimeError`` naming this rank, ``what`` it was doing and the likely cause."""
        try:
            yield
        except Exception as e:
            if self.distributed and _collective_failure(e):
                raise RuntimeError(
                    f"rank {self.rank} of {self.size}: {what} failed: another process has stopped (it raised an "
                    f"error or exited: its own output says why) or did not get there within the process-group "
                    f"timeout of {self.timeout_s:g} s. {self.backend}: {_first_line(e)}") from e
            raise

    def default_threads(self) -> int:
        """Torch threads per process by default: this machine's cores over the processes on it."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.local_size)

    def close(self):
        """Destroy the process group if :func:`init` created it (call it on every rank)."""
        if self.owner and dist.is_initialized():
            dist.destroy_process_group()


def init(device="cpu", backend: Optional[str] = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the run this process belongs to and return its :class:`World`.

    Reads torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); with none set it returns the
    one-process world and starts nothing. ``device``: ``"cpu"`` or ``"cuda"`` (each rank
    then takes GPU ``LOCAL_RANK``); ``backend`` defaults to ``"gloo"`` on the CPU and
    ``"nccl"`` on CUDA; ``timeout_s`` bounds joining and every collective. A process
    group that already exists is used as it is (and :meth:`World.close` leaves it).
    """
    timeout_s = V.check_timeout("timeout_s", timeout_s)
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda' to train across processes, got {device!r}")
    if dist.is_available() and dist.is_initialized():
        place = V.check_launch_env(os.environ) or {}
        rank, size = dist.get_rank(), dist.get_world_size()
        local_rank, local_size = place.get("local_rank", rank), place.get("local_size", size)
        if dev.type == "cuda":
            dev = torch.device("cuda", torch.cuda.current_device())
        return World(rank, size, local_rank, local_size, dist.get_backend(), dev, timeout_s, owner=False)
    place = V.check_launch_env(os.environ)
    if place is None:
        return World(device=dev, timeout_s=timeout_s)
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed: install a build with it (the pip wheels "
                           "have it) or run in one process (unset WORLD_SIZE and RANK)")
    rank, size, local_rank = place["rank"], place["size"], place["local_rank"]
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if local_rank >= n:
            raise ValueError(f"LOCAL_RANK={local_rank} needs GPU {local_rank}, but this machine has {n} CUDA "
                             f"device(s): start at most {max(n, 1)} process(es) per machine "
                             f"(torchrun --nproc_per_node {max(n, 1)}), or train on the CPU")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    available = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available(), "mpi": dist.is_mpi_available()}
    if backend not in available:
        raise ValueError(f"backend must be one of {tuple(available)}, got {backend!r}")
    if not available[backend]:
        raise RuntimeError(f"backend {backend!r} is not built into this torch; use "
                           f"{'gloo' if backend != 'gloo' else 'nccl'} or another torch build")
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("backend 'nccl' needs device='cuda'; use backend 'gloo' on the CPU")
    try:
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:
        addr = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise RuntimeError(f"rank {rank} of {size}: could not join the process group at {addr} ({backend}, "
                           f"timeout {timeout_s:g} s): {_first_line(e)}; check that all {size} processes were "
                           f"started and can reach that address") from e
    return World(rank, size, local_rank, place["local_size"], backend, dev, timeout_s, owner=True)
