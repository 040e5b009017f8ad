"""Semi-supervised FBA-Net training: the loop, checkpoints, resume, validation.

A run lives in one folder::

    run/
      config.json          resolved model and training configuration, data summary
      train.log            log
      progress.jsonl       one JSON object per iteration / validation / end event
      checkpoints/last.pt  full training state (atomic), for resuming
      model.safetensors    inference model file of the latest state
      best_model.safetensors  the state with the best validation Dice (when validating)
      curves.png           losses and validation Dice, redrawn at every checkpoint
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import IO, Any, cast

import torch

from fbanet._version import __version__
from fbanet.config import (
    ContrastModule,
    ModelConfig,
    TrainConfig,
    TrainingMode,
    level_sizes,
    to_dict,
)
from fbanet.data.sampling import PatchBatcher
from fbanet.device import ComputeSetup, compute_setup
from fbanet.model.files import ModelMetadata, initialize_from_model_file, save_model_file
from fbanet.model.losses import (
    BatchGroup,
    LossTerms,
    balance_contrast,
    contrastive_gradient_norm,
    fba_loss,
)
from fbanet.model.network import FBANet, FBANetOutput
from fbanet.protocol import Event, make_event
from fbanet.train.averaging import WeightAverage
from fbanet.train.checkpoints import (
    check_resumable,
    diverged_error,
    drop_contrast_state,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    state_dict_to_cpu,
    uses_contrast,
    write_run_config,
)
from fbanet.train.curves import plot_training_curves
from fbanet.train.data import TrainingData, check_training_data, patch_batcher
from fbanet.train.progress import ProgressReporter, StopRequest, truncate_progress
from fbanet.train.schedule import learning_rate_at
from fbanet.train.scoring import validation_dice

logger = logging.getLogger(__name__)

# What a supervised (Dice-only) step reports: it has no consistency or contrastive term.
SUPERVISED_TERMS = ("loss", "dice_loss")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """How a run ended."""

    run_dir: Path
    iterations: int
    stopped: bool
    model_path: Path
    best_model_path: Path | None
    best_validation_dice: float | None
    seconds: float
    budget_spent: bool = False  # ended on its time budget (a finished run, not a stopped one)


class Trainer:
    """Trains FBA-Net on labeled and unlabeled cases.

    Args:
        model_config: Architecture.
        train_config: Training settings.
        data: The cases.
        run_dir: Folder of the run (created).
        resume: Continue from ``run_dir/checkpoints/last.pt`` if it exists.
        stop: Stop request checked after every iteration.
        json_stream: Also write progress JSON lines here (e.g. stdout).
        show_progress: Show a terminal progress bar.
        init_model: Start from the weights of this model file (fine-tuning); the
            contrastive heads, which model files do not hold, start fresh.
    """

    # Processes training together; a data-parallel subclass (train.distributed) sets more.
    world_size = 1

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        data: TrainingData,
        run_dir: str | Path,
        *,
        resume: bool = False,
        stop: StopRequest | None = None,
        json_stream: IO[str] | None = None,
        show_progress: bool = True,
        init_model: str | Path | None = None,
    ) -> None:
        check_training_data(data, train_config)
        self.model_config = model_config
        self.config = train_config
        self.data = data
        self.run_dir = Path(run_dir)
        self.stop = stop or StopRequest()
        self.json_stream = json_stream
        self.show_progress = show_progress
        self.resume = resume
        self.setup: ComputeSetup = compute_setup(
            train_config.device,
            train_config.precision,
            train_config.channels_last,
            training_sizes=level_sizes(model_config.patch_size),
        )
        torch.manual_seed(train_config.seed)
        self.model = FBANet(model_config)
        if not uses_contrast(train_config.mode, train_config.contrastive_weight):
            # Built, then dropped: their initialisation draws from the run's random stream,
            # which then stays the same as in runs that keep them (dropout masks, patches).
            self.model.contrast = None
        self.init_model = init_model
        if init_model is not None:
            initialize_from_model_file(self.model, init_model)
        # torch's stubs leave out Module.to's memory_format keyword.
        self.model.to(self.setup.device, memory_format=self.setup.memory_format)  # type: ignore[call-overload]
        # What the training step calls: the model itself, or its data-parallel wrapper.
        self.network: torch.nn.Module = self.model
        # The weights validated and exported: an average of the last steps', or the last's.
        self.average = (
            WeightAverage(self.model, train_config.ema_decay) if train_config.ema_decay else None
        )
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=train_config.learning_rate,
            momentum=train_config.momentum,
            weight_decay=train_config.weight_decay,
        )
        self.batcher = self._make_batcher()
        # The processes sharing each batch (data-parallel training), or None.
        self._group: BatchGroup | None = None
        self.iteration = 0
        self._saved_iteration: int | None = None  # of the checkpoint on disk
        self.best_dice: float | None = None
        self.best_iteration: int | None = None
        self._validated_at: int | None = None  # iteration of the last validation
        self.last_dice: float | None = None

    def _make_batcher(self) -> PatchBatcher:
        """The run's patch batches (the data-parallel trainer draws its own share)."""
        c = self.config
        return patch_batcher(
            self.data, self.model_config.patch_size, c,
            (c.labeled_batch_size, c.unlabeled_batch_size), seed=c.seed,
        )  # fmt: skip

    # -- paths -------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        """The resumable state of the run."""
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def model_path(self) -> Path:
        """Model file of the latest state."""
        return self.run_dir / "model.safetensors"

    @property
    def best_model_path(self) -> Path:
        """Model file of the best validated state."""
        return self.run_dir / "best_model.safetensors"

    @property
    def progress_path(self) -> Path | None:
        """The JSON lines of the run (None: this process writes none)."""
        return self.run_dir / "progress.jsonl"

    @property
    def exported(self) -> FBANet:
        """The network that is validated and written to the model files: the weight average
        where the run keeps one, else the model being trained."""
        return self.model if self.average is None else cast(FBANet, self.average.module)

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly."""
        rng = {"torch": torch.get_rng_state()}
        if self.setup.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.setup.device)
        state = {
            "iteration": self.iteration,
            "model": state_dict_to_cpu(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "batcher": json.dumps(self.batcher.state_dict()),
            "best_dice": self.best_dice,
            "best_iteration": self.best_iteration,
            "last_dice": self.last_dice,
            "model_config": json.dumps(to_dict(self.model_config)),
            "train_config": json.dumps(to_dict(self.config)),
        }
        if self.average is not None:
            state["average"] = state_dict_to_cpu(self.average.state_dict())
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` saved."""
        check_resumable(state, self.world_size, self.model_config, self.config, self.run_dir)
        if self.model.contrast is None and any(k.startswith("contrast.") for k in state["model"]):
            state = drop_contrast_state(state, len(list(self.model.parameters())))
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.average is not None and "average" in state:
            self.average.load_state_dict(state["average"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.setup.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.setup.device)
        self.batcher.load_state_dict(json.loads(state["batcher"]))
        self.iteration = int(state["iteration"])
        self.best_dice = state.get("best_dice")
        self.best_iteration = state.get("best_iteration")
        self.last_dice = state.get("last_dice")

    def metadata(self) -> ModelMetadata:
        """Model file metadata of the current state."""
        return ModelMetadata(
            model=self.model_config,
            spacing=self.data.spacing,
            normalization=self.data.normalization,
            iterations=self.iteration,
            validation_dice=self.last_dice,
            num_labeled=len(self.data.labeled),
            num_unlabeled=len(self.data.unlabeled),
            training=to_dict(self.config),
            fbanet_version=__version__,
        )

    # -- the loop ----------------------------------------------------------------------------
    def step(self, measure: bool = True) -> dict[str, float]:
        """One optimizer step on a fresh batch; returns the loss terms.

        Args:
            measure: Also log ``contrastive_grad_norm`` (an extra partial backward pass,
                and a collective under torchrun: the same on every process). The learning
                module measures it every step anyway: its cap needs it.
        """
        images, labels = self.batcher.next()
        device, fmt = self.setup.device, self.setup.memory_format
        x = torch.from_numpy(images).to(device).contiguous(memory_format=fmt)
        y = torch.from_numpy(labels).to(device)
        self.model.train()
        with self.setup.autocast():
            out = self.network(x)
        terms = self._loss(out, y)
        if not torch.isfinite(terms.total):
            raise diverged_error(
                float(terms.total.detach()), self.iteration + 1, self._saved_iteration
            )
        self.optimizer.zero_grad(set_to_none=True)
        supervised = self.config.mode is TrainingMode.SUPERVISED
        # A supervised step has no contrastive term (and reports none).
        weight, scale, contrast_grad = self.config.contrastive_weight, None, 0.0
        if not supervised and self.model_config.contrast is ContrastModule.LEARNING:
            # Its pull is capped at the segmentation terms' (stable from step 1).
            terms, scale, contrast_grad = balance_contrast(
                terms, out.contrast_inputs, self.config, self._group
            )
        elif not supervised and measure:
            contrast_grad = contrastive_gradient_norm(
                terms, out.contrast_inputs, weight, self._group
            )
        terms.total.backward()
        lr = learning_rate_at(
            self.config.learning_rate,
            self.iteration,
            self.config.iterations,
            self.config.lr_schedule,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if self.average is not None:
            self.average.update(self.model)
        self.iteration += 1
        values = terms.as_floats()
        if supervised:  # Dice only: no consistency or contrastive term to report
            values = {k: v for k, v in values.items() if k in SUPERVISED_TERMS}
        elif measure:
            values["contrastive_grad_norm"] = contrast_grad
        if scale is not None:
            values["contrastive_scale"] = scale
        values["lr"] = lr
        return values

    def _logs(self, iteration: int) -> bool:
        """Whether ``iteration`` (counted from 1) writes a progress line."""
        return iteration % self.config.log_every == 0 or iteration == 1

    def _loss(self, out: FBANetOutput, labels: torch.Tensor) -> LossTerms:
        return fba_loss(out.logits, out.fg, out.bg, labels, self.iteration + 1, self.config)

    def validate(self) -> float:
        """Mean Dice of decoder 1 over the validation cases (sliding window, argmax)."""
        return validation_dice(
            self.exported, self.data.validation, self.model_config.patch_size, self.setup
        )

    def _write_config(self) -> None:
        write_run_config(
            self.run_dir, self.model_config, self.config, self.data.summary(), self.setup.describe()
        )

    def _checkpoint(self) -> None:
        save_checkpoint(self.checkpoint_path, self.state())
        self._saved_iteration = self.iteration
        save_model_file(self.model_path, self.exported, self.metadata())
        try:
            plot_training_curves(self.run_dir / "progress.jsonl", self.run_dir / "curves.png")
        except (OSError, ValueError) as error:  # a picture must never stop training
            logger.warning("could not draw the training curves: %s", error)

    def _maybe_validate(self, reporter: ProgressReporter, *, now: bool = False) -> None:
        if not self.data.validation or self._validated_at == self.iteration:
            return
        due = self.iteration % self.config.validate_every == 0 or self.stop.validation_due()
        if not (due or now):
            return
        self._validated_at = self.iteration
        self.stop.validated()
        started = time.monotonic()
        self.last_dice = self.validate()
        improved = self.best_dice is None or self.last_dice > self.best_dice
        if improved:
            self.best_dice, self.best_iteration = self.last_dice, self.iteration
            save_model_file(self.best_model_path, self.exported, self.metadata())
        logger.info(
            "iteration %d: validation Dice %.4f (best %.4f, %.1f s)",
            self.iteration, self.last_dice, self.best_dice, time.monotonic() - started,
        )  # fmt: skip
        reporter.emit(
            make_event(Event.VALIDATION, iteration=self.iteration, dice=self.last_dice,
                       best_dice=self.best_dice)
        )  # fmt: skip

    def _open(self) -> ProgressReporter:
        """Start the run folder, or resume the run in it; the run's progress reporter."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        writes = self.progress_path is not None  # under torchrun, rank 0 alone
        if writes:
            remove_stale_temporaries(self.run_dir)
        if self.resume and self.checkpoint_path.exists():
            self.load_state(load_checkpoint(self.checkpoint_path))
            self._saved_iteration = self.iteration
            if writes:
                truncate_progress(self.run_dir / "progress.jsonl", self.iteration)
            logger.info("resuming %s at iteration %d", self.run_dir, self.iteration)
        elif self.checkpoint_path.exists():
            raise FileExistsError(
                f"{str(self.run_dir)!r} already holds a run; resume it (--resume) or choose "
                f"another output folder"
            )
        self._write_config()
        return ProgressReporter(
            self.config.iterations, start=self.iteration, jsonl_path=self.progress_path,
            json_stream=self.json_stream, show_bar=self.show_progress,
        )  # fmt: skip

    def _train(self, reporter: ProgressReporter) -> tuple[bool, bool]:
        """Steps until the last iteration or a stop: (stopped on request, on the budget)."""
        self.stop.start()
        if self.iteration == 0 and self.init_model is not None:
            # A fine-tune's curve and best model start from the model it starts from.
            self._maybe_validate(reporter)
        while self.iteration < self.config.iterations:
            if self.stop.requested:
                spent = self.stop.spent
                return not spent, spent
            logged = self._logs(self.iteration + 1)
            values = self.step(measure=logged)
            lr = values.pop("lr")  # the contract carries it as a field of its own
            if logged:
                reporter.iteration(self.iteration, values, lr)
            self._maybe_validate(reporter)
            if self.iteration % self.config.checkpoint_every == 0:
                self._checkpoint()
        return False, False

    def run(self) -> TrainResult:
        """Train until the configured iterations or a stop request; always checkpoint."""
        reporter = self._open()
        started = time.monotonic()
        try:
            stopped, budget_spent = self._train(reporter)
            if budget_spent:  # the best model is validated up to the last step
                self._maybe_validate(reporter, now=True)
            if self._saved_iteration != self.iteration:  # not twice for the same state
                self._checkpoint()
            seconds = time.monotonic() - started
            reporter.emit(
                make_event(Event.STOPPED if stopped else Event.FINISHED, iteration=self.iteration,
                           best_dice=self.best_dice, seconds=round(seconds, 1),
                           model=str(self.model_path))
            )  # fmt: skip
        finally:
            reporter.close()
        ending = "stopped on its time budget" if budget_spent else "stopped" if stopped else None
        logger.info(
            "%s at iteration %d after %.0f s; model: %s",
            ending or "finished", self.iteration, seconds, self.model_path,
        )  # fmt: skip
        if self.best_iteration == 0 and self.iteration > 0:
            logger.warning(
                "no validation beat the starting model (Dice %.4f): best_model.safetensors is "
                "the model this run started from", self.best_dice or 0.0,
            )  # fmt: skip
        best = self.best_model_path if self.best_model_path.exists() else None
        return TrainResult(
            self.run_dir, self.iteration, stopped, self.model_path, best, self.best_dice, seconds,
            budget_spent,
        )  # fmt: skip
