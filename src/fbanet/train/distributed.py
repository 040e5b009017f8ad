"""Data-parallel training under ``torchrun``: the process group and what spans it.

``torchrun`` starts one process per device and tells each who it is through environment
variables; :func:`torchrun_environment` reads them, so ``fbanet train`` needs no flag of its
own to run on many GPUs or nodes. The pieces here are what every process shares:

- the process group (NCCL on CUDA, gloo on CPU);
- the global batch, split evenly: :func:`per_rank_batch`;
- one case order for the whole job, each process drawing its slice of every global batch:
  :class:`SharedOrderSampler` (augmentation has its own random streams per process);
- the batch-dependent loss parts, computed over the whole batch: :class:`RankBatch`;
- one stop decision for all: :class:`AgreedStop`.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from fbanet.config import DeviceKind, SyncBatchNorm, TrainConfig
from fbanet.data.sampling import TwoStreamSampler
from fbanet.train.collectives import gather_from_processes, sum_over_processes
from fbanet.train.progress import StopRequest

logger = logging.getLogger(__name__)

# What torchrun (torch.distributed.run) sets in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# Mixed into the seed of the job's shared case order (apart from the per-process streams).
SHARED_ORDER_STREAM = 0x5EED0DE5
# How long a process waits for the others in one collective before giving up (a dead or
# stuck peer); validation on rank 0 must fit in it.
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


@dataclasses.dataclass(frozen=True)
class DistributedEnv:
    """Where this process stands among the processes of one training job.

    Attributes:
        rank: This process's number, 0..world_size-1 (rank 0 writes the files).
        world_size: Processes in the job, over all nodes.
        local_rank: This process's number on its node: its GPU index.
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files."""
        return self.rank == 0


def torchrun_environment(environ: Mapping[str, str] | None = None) -> DistributedEnv | None:
    """The job this process belongs to, from torchrun's variables; None for a lone process.

    A job of one process (``torchrun --nproc-per-node 1``) is a lone process too: it trains
    exactly as without torchrun.

    Raises:
        ValueError: Some of torchrun's variables are set but not all, or not valid numbers.
    """
    environ = os.environ if environ is None else environ
    present = [name for name in TORCHRUN_VARIABLES if name in environ]
    if not present:
        return None
    missing = [name for name in TORCHRUN_VARIABLES if name not in environ]
    if missing:
        raise ValueError(
            f"the environment sets {present} but not {missing}: start data-parallel training "
            f"with torchrun (e.g. torchrun --nproc-per-node 2 -m fbanet train ...), or unset them"
        )
    try:
        rank, world, local = (int(environ[n]) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        values = {n: environ[n] for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        raise ValueError(f"torchrun variables must be integers, got {values}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} do not fit")
    return None if world == 1 else DistributedEnv(rank, world, local)


def init_process_group(
    env: DistributedEnv, device: DeviceKind, timeout: datetime.timedelta = DEFAULT_TIMEOUT
) -> str:
    """Join the job's process group (NCCL for CUDA, gloo otherwise); returns the backend.

    On CUDA this process's GPU becomes the current device (its ``local_rank``), so the
    trainer's ``cuda`` device is that GPU.
    """
    use_cuda = device is DeviceKind.CUDA or (
        device is DeviceKind.AUTO and torch.cuda.is_available()
    )
    if use_cuda:
        if env.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process {env.rank} has local rank {env.local_rank} but this node has "
                f"{torch.cuda.device_count()} GPU(s): start at most that many processes "
                f"per node (--nproc-per-node)"
            )
        torch.cuda.set_device(env.local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=env.rank, world_size=env.world_size, timeout=timeout)
    logger.info(
        "process %d of %d (local %d), backend %s", env.rank, env.world_size, env.local_rank,
        backend,
    )  # fmt: skip
    return backend


def close_process_group() -> None:
    """Leave the process group, if joined, once every process got here.

    Call it after success only: tearing a group down while another process is still in a
    collective (it failed, or it is behind) can hang; a failed process just exits, and
    torchrun ends the others.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@dataclasses.dataclass(frozen=True)
class RankBatchSize:
    """One process's share of the global batch.

    Attributes:
        labeled: Labeled patches per process and step.
        unlabeled: Unlabeled patches per process and step.
    """

    labeled: int
    unlabeled: int

    @property
    def total(self) -> int:
        """Patches per process and step."""
        return self.labeled + self.unlabeled


def per_rank_batch(config: TrainConfig, world_size: int) -> RankBatchSize:
    """Split the configured (global) batch evenly over ``world_size`` processes.

    Raises:
        ValueError: The labeled or the unlabeled part does not divide by the world size.
    """
    labeled, unlabeled = config.labeled_batch_size, config.unlabeled_batch_size
    if labeled % world_size or unlabeled % world_size:
        raise ValueError(
            f"the global batch of {labeled} labeled + {unlabeled} unlabeled patches does not "
            f"split over {world_size} processes: make --labeled-batch-size and the unlabeled "
            f"part (--batch-size minus it) multiples of {world_size}, e.g. --batch-size "
            f"{2 * world_size} --labeled-batch-size {world_size}, or start fewer processes"
        )
    return RankBatchSize(labeled // world_size, unlabeled // world_size)


class SharedOrderSampler(TwoStreamSampler):
    """This process's part of one case order shared by the whole job.

    Every process walks the same shuffled passes over all cases (the same seed on every
    process), drawing the indices of the global batch, and keeps the slice of its rank. So
    every case is drawn equally often whatever the number of processes; a fixed split of
    the cases into shards would draw the cases of a smaller shard more often (7 cases over
    2 processes: 4/3 as often).

    Args:
        num_labeled: All labeled cases of the job.
        num_unlabeled: All unlabeled cases of the job.
        batch: This process's share of the global batch.
        env: This process's place in the job.
        seed: The run's seed (not the rank's).
    """

    def __init__(
        self,
        num_labeled: int,
        num_unlabeled: int,
        batch: RankBatchSize,
        env: DistributedEnv,
        seed: int,
    ) -> None:
        world = env.world_size
        rng = np.random.default_rng(np.random.SeedSequence([seed, SHARED_ORDER_STREAM]))
        super().__init__(
            num_labeled, num_unlabeled, batch.labeled * world, batch.unlabeled * world, rng
        )
        self.batch = batch
        self.rank = env.rank

    def next_batch(self) -> tuple[list[int], list[int]]:
        """This process's (labeled indices, unlabeled indices) of the next global batch."""
        labeled, unlabeled = super().next_batch()
        lab, unl = self.batch.labeled, self.batch.unlabeled
        return (
            labeled[self.rank * lab : (self.rank + 1) * lab],
            unlabeled[self.rank * unl : (self.rank + 1) * unl],
        )


def wants_sync_batchnorm(mode: SyncBatchNorm, batch: RankBatchSize) -> bool:
    """Whether batch norm should span the processes (AUTO: small per-process batches)."""
    if mode is SyncBatchNorm.AUTO:
        return batch.total <= 4
    return mode is SyncBatchNorm.ON


class RankBatch:
    """The processes of the default group as one batch (:class:`fbanet.model.losses.BatchGroup`).

    The gathers carry gradients: each process's copy of a batch-wide loss sends its share
    of the gradient back to the process that computed the rows, so with data-parallel
    averaging every parameter gets the gradient of the one-process loss.
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size

    def rows(self, local: Tensor, labeled: int) -> Tensor:
        """All processes' rows, labeled rows of every process first (one-process order)."""
        parts = gather_from_processes(local)
        return torch.cat([p[:labeled] for p in parts] + [p[labeled:] for p in parts])

    def sum(self, local: Tensor) -> Tensor:
        """Sum over the processes, with gradients."""
        return sum_over_processes(local)

    def mean_value(self, local: Tensor) -> Tensor:
        """The mean over the processes as value, the local gradient (a constant shift)."""
        mean = local.detach().clone()
        dist.all_reduce(mean)
        return local + (mean / self.world_size - local.detach())


class AgreedStop(StopRequest):
    """A stop request that every process answers the same: stop when any one asks.

    Each process sees its own signals and stop file; :attr:`requested` combines them over
    the group, so all processes stop after the same iteration. It is read once per
    iteration by every process (a collective).
    """

    def __init__(self, local: StopRequest) -> None:
        super().__init__(None)
        self.local = local

    def request(self) -> None:
        self.local.request()

    @property
    def requested(self) -> bool:
        mine = 1 if self.local.requested else 0
        flag = torch.tensor([mine], dtype=torch.int64, device=_collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _collective_device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_objects(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order, on every process."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every process."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_agree(value: Any) -> bool:
    """Whether every process holds the same (picklable, comparable) ``value``."""
    values = gather_objects(value)
    return all(v == values[0] for v in values)
