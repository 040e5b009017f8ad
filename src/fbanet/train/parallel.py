"""The data-parallel trainer: one :class:`Trainer` per process of a ``torchrun`` job.

Every process holds the whole network (wrapped in ``DistributedDataParallel``) and all the
cases; the processes walk one shared case order, each drawing its slice of every global
batch (:class:`~fbanet.train.distributed.SharedOrderSampler`: every case equally often),
and augment with random streams seeded from (seed, rank). The loss's batch-dependent parts span the
whole batch (:class:`~fbanet.train.distributed.RankBatch`), batch norm optionally too, so
one step of N processes with B/N patches each equals one step of one process with B.

Only rank 0 writes files (config, progress, checkpoints, model files, curves); a checkpoint
holds every process's random streams, so ``--resume`` with the same number of processes
continues exactly. All processes stop after the same iteration.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fbanet.config import ModelConfig, TrainConfig
from fbanet.data.sampling import PatchBatcher
from fbanet.model.losses import LossTerms, fba_loss
from fbanet.model.network import FBANetOutput
from fbanet.train.data import check_training_data, patch_batcher
from fbanet.train.distributed import (
    AgreedStop,
    DistributedEnv,
    RankBatch,
    RankBatchSize,
    SharedOrderSampler,
    all_agree,
    broadcast_object,
    gather_objects,
    init_process_group,
    per_rank_batch,
    torchrun_environment,
    wants_sync_batchnorm,
)
from fbanet.train.progress import ProgressReporter, StopRequest
from fbanet.train.sync_batchnorm import convert_batchnorm
from fbanet.train.trainer import Trainer, TrainingData, TrainResult

logger = logging.getLogger(__name__)


# How a checkpoint's processes drew their cases (absent: fixed shards, fbanet <= 0.2.0).
SHARED_ORDER = "shared-order"


class ProcessLostError(RuntimeError):
    """Another process of the job died or stopped answering."""


class DataParallelTrainer(Trainer):
    """A :class:`Trainer` for one process of a data-parallel job (process group joined).

    Args:
        env: This process's place in the job.
        Others: As :class:`Trainer`; ``train_config``'s batch sizes are the global batch.

    Raises:
        ValueError: The batch does not split over the processes, or a case group has fewer
            cases than there are processes.
    """

    def __init__(
        self,
        env: DistributedEnv,
        model_config: ModelConfig,
        train_config: TrainConfig,
        data: TrainingData,
        run_dir: str | Path,
        *,
        stop: StopRequest | None = None,
        json_stream: IO[str] | None = None,
        show_progress: bool = True,
        **kwargs: Any,
    ) -> None:
        if not dist.is_initialized() or dist.get_world_size() != env.world_size:
            raise RuntimeError("join the process group first (distributed.init_process_group)")
        self.env = env
        self.rank_batch = check_job(train_config, data, env)
        main = env.is_main
        super().__init__(
            model_config, train_config, data, run_dir,
            stop=AgreedStop(stop or StopRequest()),
            json_stream=json_stream if main else None,
            show_progress=show_progress and main,
            **kwargs,
        )  # fmt: skip
        self.sync_batchnorm = wants_sync_batchnorm(train_config.sync_batchnorm, self.rank_batch)
        if self.sync_batchnorm:
            convert_batchnorm(self.model, self.setup.device)
        cuda = self.setup.device.type == "cuda"
        self.network = DistributedDataParallel(
            self.model, device_ids=[env.local_rank] if cuda else None
        )
        # Dropout differs between processes, as it does between the samples of one batch.
        torch.manual_seed(_rank_seed(train_config.seed, env.rank))
        self._group = RankBatch(env.world_size)
        logger.info(
            "process %d of %d: its slice of one order over %d labeled + %d unlabeled cases, "
            "%d + %d patches a step, sync batch norm %s", env.rank, env.world_size,
            len(data.labeled), len(data.unlabeled),
            self.rank_batch.labeled, self.rank_batch.unlabeled,
            "on" if self.sync_batchnorm else "off",
        )  # fmt: skip

    @property
    def world_size(self) -> int:  # type: ignore[override]
        """Processes of the job."""
        return self.env.world_size

    @property
    def progress_path(self) -> Path | None:
        return super().progress_path if self.env.is_main else None

    def _make_batcher(self) -> PatchBatcher:
        """This process's share of each batch, its own augmentation stream, and the case
        order all processes share (called by Trainer.__init__, after env and rank_batch)."""
        c, env = self.config, self.env
        batcher = patch_batcher(
            self.data, self.model_config.patch_size, c,
            (self.rank_batch.labeled, self.rank_batch.unlabeled), seed=(c.seed, env.rank),
        )  # fmt: skip
        batcher.sampler = SharedOrderSampler(
            len(self.data.labeled), len(self.data.unlabeled), self.rank_batch, env, c.seed
        )
        return batcher

    def _loss(self, out: FBANetOutput, labels: torch.Tensor) -> LossTerms:
        # DDP reduces a gradient for every parameter: a run without a contrastive term builds
        # no heads (fbanet.train.checkpoints.uses_contrast), so every parameter has one.
        return fba_loss(
            out.logits, out.fg, out.bg, labels, self.iteration + 1, self.config, self._group
        )

    # -- state: every process's streams in rank 0's checkpoint ------------------------------
    def state(self) -> dict[str, Any]:
        """The run's state with every process's sampler and random streams (a collective)."""
        state = super().state()
        mine = {"batcher": state["batcher"], "rng": state["rng"]}
        state["world_size"] = self.env.world_size
        state["ranks"] = gather_objects(mine)
        state["sampling"] = SHARED_ORDER
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        ranks = state.get("ranks")
        same_world = int(state.get("world_size", 1)) == self.env.world_size
        if same_world and state.get("sampling") != SHARED_ORDER:
            raise ValueError(
                "the checkpoint was written by fbanet 0.2.0 or earlier, whose processes drew "
                "from fixed shards of the cases; the processes now share one case order, so "
                "the run cannot continue exactly: start a new run folder (--init-model with "
                "this run's model.safetensors keeps its weights)"
            )
        if same_world and ranks is not None:
            state = {**state, **ranks[self.env.rank]}
        super().load_state(state)

    # -- rank 0 writes -----------------------------------------------------------------------
    def _write_config(self) -> None:
        if self.env.is_main:
            super()._write_config()

    def _checkpoint(self) -> None:
        if self.env.is_main:
            super()._checkpoint()
        else:
            self.state()  # take part in gathering the processes' states
            # Every process records the checkpoint, so all take the same decisions after
            # it (run() skips the final checkpoint, a collective, on all or on none).
            self._saved_iteration = self.iteration

    def _maybe_validate(self, reporter: ProgressReporter, *, now: bool = False) -> None:
        # Decided on the iteration alone, the same in every process (a time budget, whose
        # clock would differ between them, is refused under torchrun).
        if not self.data.validation or (self.iteration % self.config.validate_every and not now):
            return
        if self.env.is_main:
            super()._maybe_validate(reporter, now=now)
        # The others wait here, then hold the same scores (they go into the checkpoint).
        scores = (self.last_dice, self.best_dice, self.best_iteration)
        self.last_dice, self.best_dice, self.best_iteration = broadcast_object(scores)

    def run(self) -> TrainResult:
        """Train (see :meth:`Trainer.run`); a lost process raises :class:`ProcessLostError`."""
        try:
            if not all_agree((self.resume, self.checkpoint_path.exists())):
                raise ValueError(
                    f"the processes disagree on whether {str(self.checkpoint_path)!r} exists "
                    f"or on --resume: put the run folder on a file system every node shares"
                )
            return super().run()
        except dist.DistError as error:
            raise self._lost(error) from error
        except RuntimeError as error:
            if not _is_communication_error(error):
                raise
            raise self._lost(error) from error

    def _lost(self, error: BaseException) -> ProcessLostError:
        return ProcessLostError(
            f"process {self.env.rank} of {self.env.world_size} lost contact with the others "
            f"at iteration {self.iteration} (another process died or was killed: see its "
            f"log); the last checkpoint is {str(self.checkpoint_path)!r}, continue with "
            f"--resume and the same number of processes ({type(error).__name__}: {error})"
        )


def check_job(train_config: TrainConfig, data: TrainingData, env: DistributedEnv) -> RankBatchSize:
    """This process's share of the global batch, once the job is known to fit.

    Raises:
        ValueError: The batch does not split over the processes, or the cases do not fit
            the batch (e.g. unlabeled patches but no unlabeled case).
    """
    check_training_data(data, train_config)
    return per_rank_batch(train_config, env.world_size)


def _rank_seed(seed: int, rank: int) -> int:
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


_COMMUNICATION_WORDS = ("gloo", "nccl", "connection", "peer", "socket", "timed out", "c10d")


def _is_communication_error(error: RuntimeError) -> bool:
    text = str(error).lower()
    return any(word in text for word in _COMMUNICATION_WORDS)


def join_torchrun_job(train_config: TrainConfig, data: TrainingData) -> DistributedEnv | None:
    """Join torchrun's process group if this process was started by torchrun (else None).

    The job is checked first (the batch splits, the cases fit it), so that bad
    settings fail in every process alike, before any of them waits for the others. Leave
    the group with :func:`~fbanet.train.distributed.close_process_group` at the end.
    """
    env = torchrun_environment()
    if env is not None:
        check_job(train_config, data, env)
        init_process_group(env, train_config.device)
    return env


def make_trainer(
    model_config: ModelConfig,
    train_config: TrainConfig,
    data: TrainingData,
    run_dir: str | Path,
    env: DistributedEnv | None = None,
    **kwargs: Any,
) -> Trainer:
    """A :class:`Trainer`, or under torchrun (``env`` or the environment) its data-parallel
    form; the process group must be joined first (``distributed.init_process_group``)."""
    env = env or torchrun_environment()
    if env is None:
        return Trainer(model_config, train_config, data, run_dir, **kwargs)
    return DataParallelTrainer(env, model_config, train_config, data, run_dir, **kwargs)
