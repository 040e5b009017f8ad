"""A self-contained demonstration: train FBA-Net on synthetic phantoms, then segment one.

No data is needed: a seeded cohort of phantoms (:mod:`fbanet.demo.phantoms`) gives a few labeled,
several unlabeled and two validation volumes; FBA-Net trains briefly on them (a small
network, a small patch, the semi-supervised loss with its ramp-up shortened to the run),
and a held-out phantom is written as NRRD and segmented through the same file path as
``fbanet segment`` (a ``.seg.nrrd`` for 3D Slicer, a PNG preview). The Dice against the
phantom's own label tells whether everything worked.

Output folder::

    out/
      run/                      the training run (model.safetensors, train.log, ...)
      curves.png                training curves (a copy of run/curves.png)
      test_phantom.nrrd         the held-out scan
      test_phantom-reference.seg.nrrd  its true label, to compare in Slicer
      test_phantom.seg.nrrd     FBA-Net's segmentation
      test_phantom.png          preview of the segmentation
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fbanet.config import (
    DeviceKind,
    ModelConfig,
    Precision,
    TrainConfig,
    check_int,
    parse_enum,
)
from fbanet.demo.phantoms import DEFAULT_SPACING, as_case, make_cohort
from fbanet.infer.config import InferenceConfig
from fbanet.infer.files import segment_file
from fbanet.infer.segmenter import Segmenter
from fbanet.io.preview import save_preview
from fbanet.io.segmentation import read_segmentation, write_segmentation
from fbanet.io.segments import segments_from_model
from fbanet.io.volumes import Volume, atomic_write, write_volume
from fbanet.metrics import compute_metrics
from fbanet.train.progress import StopRequest, TimeBudget
from fbanet.train.runlog import RunLog
from fbanet.train.trainer import Trainer, TrainingData

logger = logging.getLogger(__name__)

# Chosen so the default demo takes about half a minute on an idle 2-core CPU in float32 and
# segments the phantom well (Dice about 0.97 on seeds 0-3; 40 iterations give 0.80-0.92);
# benchmarks/demo_time.py measures it. --quick only shows that the pipeline runs end to end.
DEFAULT_ITERATIONS = 60
# Training stops at this many seconds whatever the CPU, so the whole demo stays within two
# minutes on a slow or busy machine; the Dice then shows how far the shorter training got.
DEFAULT_TIME_BUDGET = 90.0
QUICK_ITERATIONS = 40
DEFAULT_SHAPE = (64, 64, 48)
QUICK_SHAPE = (48, 48, 32)
LEARNING_RATE = 0.05  # above the paper's 0.01: a short run must converge quickly


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What the demo wrote and how well it segmented the held-out phantom.

    Attributes:
        out_dir: The output folder.
        run_dir: The training run folder.
        model_path: The model file used to segment (best validated state).
        image_path: The held-out phantom (NRRD).
        reference_path: Its true label (``.seg.nrrd``).
        segmentation_path: FBA-Net's segmentation (``.seg.nrrd``).
        preview_path: PNG preview of the segmentation.
        curves_path: PNG of the training curves.
        dice: Dice of the segmentation against the true label.
        hd95: 95th percentile Hausdorff distance (mm).
        validation_dice: Best validation Dice during training.
        iterations: Training iterations done.
        train_seconds: Wall time of the training loop.
        seconds: Wall time of the whole demo.
        planned_iterations: Iterations the training was set to; more than ``iterations``
            when the time budget stopped it.
    """

    out_dir: Path
    run_dir: Path
    model_path: Path
    image_path: Path
    reference_path: Path
    segmentation_path: Path
    preview_path: Path
    curves_path: Path | None
    dice: float
    hd95: float
    validation_dice: float | None
    iterations: int
    train_seconds: float
    seconds: float
    planned_iterations: int = 0

    @property
    def stopped_early(self) -> bool:
        """Whether the time budget ended training before its planned iterations."""
        return self.iterations < self.planned_iterations


def demo_configs(
    iterations: int,
    *,
    base_filters: int,
    patch_size: tuple[int, int, int],
    seed: int,
    device: DeviceKind | str,
    precision: Precision | str,
) -> tuple[ModelConfig, TrainConfig]:
    """The model and training settings of a demo run of ``iterations`` steps."""
    model = ModelConfig(base_filters=base_filters, patch_size=patch_size)
    train = TrainConfig(
        iterations=iterations,
        learning_rate=LEARNING_RATE,
        # The authors ramp the consistency weight up over 40 x 150 of 15,000 iterations;
        # keep the same 40 % share of a short run.
        rampup_interval=max(1, round(iterations * 0.4 / 40)),
        validate_every=max(1, iterations // 5),
        checkpoint_every=iterations,
        seed=seed,
        device=parse_enum(DeviceKind, device),
        precision=parse_enum(Precision, precision),
    )
    return model, train


def _write_test_phantom(
    out_dir: Path, volume: Volume, label: Volume, model: ModelConfig
) -> tuple[Path, Path]:
    image_path = write_volume(volume, out_dir / "test_phantom.nrrd")
    segments = segments_from_model(model.class_names, model.class_colors)
    reference = write_segmentation(label, out_dir / "test_phantom-reference.seg.nrrd", segments)
    return image_path, reference


def _demo_size(
    labeled: int, unlabeled: int, validation: int, iterations: int | None, quick: bool
) -> tuple[tuple[int, int, int], int, tuple[int, int, int]]:
    """Checked phantom counts (labeled, unlabeled, validation), iterations and phantom shape."""
    counts = {"labeled": (labeled, 1), "unlabeled": (unlabeled, 1), "validation": (validation, 0)}
    for name, (value, minimum) in counts.items():
        check_int(name, value, minimum)
    if iterations is not None:
        check_int("iterations", iterations, 1)
    if quick:  # a smoke run: the smallest cohort that still exercises every data path
        sizes = (min(labeled, 2), min(unlabeled, 2), min(validation, 1))
        return sizes, iterations or QUICK_ITERATIONS, QUICK_SHAPE
    return (labeled, unlabeled, validation), iterations or DEFAULT_ITERATIONS, DEFAULT_SHAPE


def _phantom_data(
    counts: tuple[int, int, int], seed: int, shape: tuple[int, int, int]
) -> tuple[TrainingData, tuple[Volume, np.ndarray]]:
    """Training data from a seeded cohort, and the held-out test phantom (the last one)."""
    labeled, unlabeled, validation = counts
    cohort = make_cohort(labeled + unlabeled + validation + 1, seed, shape, DEFAULT_SPACING)
    cases = [as_case(f"phantom{i:02d}", image, label) for i, (image, label) in enumerate(cohort)]
    data = TrainingData(
        labeled=cases[:labeled],
        # Unlabeled phantoms have labels too; the semi-supervised loss must not see them.
        unlabeled=[
            dataclasses.replace(c, label=None) for c in cases[labeled : labeled + unlabeled]
        ],
        validation=cases[labeled + unlabeled : -1],
        spacing=DEFAULT_SPACING,
    )
    return data, cohort[-1]


def _copy_curves(run_dir: Path, out: Path) -> Path | None:
    """The training run drew its curves; put a copy next to the other results."""
    source = run_dir / "curves.png"
    if not source.is_file():
        return None
    return atomic_write(out / "curves.png", lambda tmp: shutil.copyfile(source, tmp))


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    labeled: int = 4,
    unlabeled: int = 8,
    validation: int = 2,
    iterations: int | None = None,
    quick: bool = False,
    patch_size: tuple[int, int, int] = (32, 32, 32),
    base_filters: int = 8,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
    time_budget: float | None = DEFAULT_TIME_BUDGET,
    clock: Callable[[], float] = time.monotonic,
) -> DemoResult:
    """Train FBA-Net on synthetic phantoms and segment a held-out one.

    Args:
        out_dir: Output folder (created); must not hold a demo run already.
        labeled: Labeled training phantoms.
        unlabeled: Unlabeled training phantoms.
        validation: Validation phantoms (0: no validation, the last state is used).
        iterations: Training iterations; default :data:`DEFAULT_ITERATIONS`, or
            :data:`QUICK_ITERATIONS` with ``quick``.
        quick: A seconds-long smoke run (smaller phantoms and cohort, few iterations); its
            segmentation is not expected to be good.
        patch_size: Training patch, sides multiples of 16.
        base_filters: Width of the first V-Net stage.
        seed: Seed of the phantoms and of training.
        device: auto, cuda, mps or cpu.
        precision: auto, bf16 or fp32.
        progress: Show a progress bar while training.
        time_budget: Stop training after this many seconds (None: no limit); the demo
            then segments with the best state so far.
        clock: Time source of the budget, replaceable in tests.

    Returns:
        The files written, the Dice and the timings.

    Raises:
        FileExistsError: ``out_dir`` already holds a demo run.
        ValueError, TypeError: A bad count or setting (the message quotes it).
    """
    started = time.monotonic()
    out = Path(out_dir)
    counts, steps, shape = _demo_size(labeled, unlabeled, validation, iterations, quick)
    model_config, train_config = demo_configs(
        steps, base_filters=base_filters, patch_size=patch_size, seed=seed,
        device=device, precision=precision,
    )  # fmt: skip
    run_dir = out / "run"
    if run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(
            f"{str(out)!r} already holds a demo run; choose another output folder or delete it"
        )
    out.mkdir(parents=True, exist_ok=True)
    data, (test_volume, test_label) = _phantom_data(counts, seed, shape)
    label_volume = Volume(test_label, test_volume.geometry)
    image_path, reference_path = _write_test_phantom(out, test_volume, label_volume, model_config)
    logger.info(
        "demo: %d labeled, %d unlabeled, %d validation phantoms %s; training %d iterations",
        *counts, shape, steps,
    )  # fmt: skip
    with RunLog(run_dir) as run_log:
        trainer = Trainer(
            model_config, train_config, data, run_dir, show_progress=progress,
            stop=StopRequest() if time_budget is None else TimeBudget(time_budget, clock=clock),
        )  # fmt: skip
        run_log.start()
        trained = trainer.run()
    if trained.budget_spent:
        logger.warning(
            "demo: training stopped at its %.0f s budget after %d of %d iterations",
            time_budget, trained.iterations, steps,
        )  # fmt: skip
    curves = _copy_curves(run_dir, out)
    model_path = trained.best_model_path or trained.model_path
    segmenter = Segmenter.from_file(
        model_path,
        InferenceConfig(
            device=parse_enum(DeviceKind, device), precision=parse_enum(Precision, precision)
        ),
    )
    written = segment_file(segmenter, image_path, out / "test_phantom.seg.nrrd")
    # Score the file as written, so the check covers the whole path to Slicer.
    predicted, _ = read_segmentation(written.segmentation)
    # The picture shows the prediction and the true outline, with a legend.
    save_preview(
        test_volume, predicted, out / "test_phantom.png", reference=label_volume,
        colors={s.label_value: s.color for s in segmenter.segments}, title=image_path.name,
    )  # fmt: skip
    metrics = compute_metrics(predicted.array == 1, test_label == 1, test_volume.geometry.spacing)
    result = DemoResult(
        out_dir=out, run_dir=run_dir, model_path=model_path, image_path=image_path,
        reference_path=reference_path, segmentation_path=written.segmentation,
        preview_path=out / "test_phantom.png", curves_path=curves, dice=metrics.dice,
        hd95=metrics.hd95, validation_dice=trained.best_validation_dice,
        iterations=trained.iterations, train_seconds=trained.seconds,
        seconds=time.monotonic() - started, planned_iterations=steps,
    )  # fmt: skip
    logger.info(
        "demo: Dice %.3f on the held-out phantom after %d iterations (%.0f s in all)",
        result.dice, result.iterations, result.seconds,
    )  # fmt: skip
    return result
