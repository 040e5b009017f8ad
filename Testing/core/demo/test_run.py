"""The demo end to end (quick mode): every file written, readable, and a valid Dice."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fbanet.cli.main import build_parser, main
from fbanet.demo.run import (
    DEFAULT_ITERATIONS,
    DEFAULT_TIME_BUDGET,
    QUICK_ITERATIONS,
    DemoResult,
    demo_configs,
    run_demo,
)
from fbanet.io.segmentation import read_segmentation
from fbanet.io.volumes import read_volume
from fbanet.metrics import dice
from fbanet.model.files import read_model_header


def test_demo_is_a_command() -> None:
    assert _demo_registered()


def _demo_registered() -> bool:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return "demo" in action.choices
    return False


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: on a shared, busy CPU, OpenMP threads waiting for each other
    make this small network many times slower (the suite often runs beside other jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    out = tmp_path_factory.mktemp("demo")
    package = logging.getLogger("fbanet")
    level = package.level
    package.setLevel(logging.INFO)  # as the command line logs
    try:
        with _one_thread():
            return run_demo(out, quick=True, device="cpu", progress=False)
    finally:
        package.setLevel(level)


def _assert_demo_files(out: Path) -> None:
    for name in (
        "run/model.safetensors",
        "run/progress.jsonl",
        "run/config.json",
        "curves.png",
        "test_phantom.nrrd",
        "test_phantom.seg.nrrd",
        "test_phantom-reference.seg.nrrd",
        "test_phantom.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name


def test_quick_demo_writes_every_file(quick: DemoResult) -> None:
    _assert_demo_files(quick.out_dir)
    assert quick.run_dir == quick.out_dir / "run"
    for path in (quick.image_path, quick.segmentation_path, quick.preview_path, quick.curves_path):
        assert path is not None and path.parent == quick.out_dir
    # The model used is the best validated state, and says how it was trained.
    assert quick.model_path == quick.run_dir / "best_model.safetensors"
    header = read_model_header(quick.model_path)
    assert header.spacing == (1.25, 1.25, 1.25) and header.num_unlabeled >= 1
    config = json.loads((quick.run_dir / "config.json").read_text())
    assert config["data"]["unlabeled"] and config["data"]["validation"]


def test_quick_demo_segmentation_lies_on_the_scan_grid(quick: DemoResult) -> None:
    scan = read_volume(quick.image_path)
    predicted, segments = read_segmentation(quick.segmentation_path)
    reference, _ = read_segmentation(quick.reference_path)
    for labelmap in (predicted, reference):
        assert labelmap.array.shape == scan.array.shape
        assert labelmap.geometry.matches(scan.geometry)
    assert [s.name for s in segments] == ["Left atrium"]
    assert reference.array.any()


def test_quick_demo_dice_is_a_valid_score_of_the_files(quick: DemoResult) -> None:
    assert math.isfinite(quick.dice) and 0.0 <= quick.dice <= 1.0
    # 40 iterations reach 0.5-0.8 on seeds 0-3 (bf16 and fp32); far below means it broke.
    assert quick.dice > 0.25
    predicted, _ = read_segmentation(quick.segmentation_path)
    reference, _ = read_segmentation(quick.reference_path)
    assert quick.dice == pytest.approx(dice(predicted.array == 1, reference.array == 1))
    assert quick.validation_dice is not None and 0.0 <= quick.validation_dice <= 1.0
    assert quick.iterations >= 1 and quick.seconds >= quick.train_seconds > 0


def test_quick_demo_run_has_a_log_and_draws_each_curve_once(quick: DemoResult) -> None:
    log = (quick.run_dir / "train.log").read_text(encoding="utf-8")
    assert "compute: cpu" in log and "finished at iteration" in log
    assert log.count("wrote training curves") == 1  # drawn once, at the end
    assert (quick.out_dir / "curves.png").read_bytes() == (
        quick.run_dir / "curves.png"
    ).read_bytes()


def test_quick_demo_preview_is_large_enough_to_inspect(quick: DemoResult) -> None:
    from PIL import Image

    with Image.open(quick.preview_path) as png:
        assert png.width >= 800


def test_quick_demo_preview_shows_the_true_outline_with_a_legend(quick: DemoResult) -> None:
    from PIL import Image

    from fbanet.io.preview import REFERENCE_COLOR

    with Image.open(quick.preview_path) as png:
        rgb = np.asarray(png.convert("RGB"))
    green = np.round(np.asarray(REFERENCE_COLOR) * 255).astype(np.uint8)
    reference = np.all(rgb == green, axis=-1)
    assert reference.sum() > 50 and reference[:14].any()  # outlines, and the legend's line


def test_quick_demo_summary_says_which_model_it_names(quick: DemoResult) -> None:
    from fbanet.cli.demo import _summary

    line = next(x for x in _summary(quick).splitlines() if x.strip().startswith("model:"))
    if quick.model_path.name == "best_model.safetensors":
        assert "best validation Dice" in line
        assert f"last state, named in the trainer's last line, is {quick.run_dir}" in line
    else:
        assert line.strip() == f"model:         {quick.model_path}"


def test_the_time_budget_bounds_training_on_any_cpu(tmp_path: Path) -> None:
    # A slow CPU, simulated: every look at the clock finds 10 s more gone.
    ticks = iter(range(0, 10_000, 10))
    with _one_thread():
        result = run_demo(
            tmp_path / "demo", quick=True, iterations=30, device="cpu", progress=False,
            time_budget=35.0, clock=lambda: float(next(ticks)),
        )  # fmt: skip
    assert result.planned_iterations == 30 and 1 <= result.iterations <= 4
    assert result.stopped_early and math.isfinite(result.dice)
    assert result.segmentation_path.is_file()
    # The default leaves room within two minutes for everything around training.
    assert DEFAULT_TIME_BUDGET <= 90.0
    from fbanet.cli.demo import _summary

    assert "the time budget stopped training; of 30 planned" in _summary(result)


def test_a_folder_holding_a_demo_run_is_refused(quick: DemoResult) -> None:
    before = sorted(p.name for p in quick.out_dir.iterdir())
    with pytest.raises(FileExistsError, match="already holds a demo run"):
        run_demo(quick.out_dir, quick=True, progress=False)
    assert sorted(p.name for p in quick.out_dir.iterdir()) == before


@pytest.mark.parametrize(
    ("kwargs", "error", "quoted"),
    [
        ({"labeled": 0}, ValueError, "labeled must be >= 1, got 0"),
        ({"unlabeled": 2.5}, TypeError, "unlabeled must be an int, got 2.5"),
        ({"validation": -1}, ValueError, "validation must be >= 0, got -1"),
        ({"iterations": 0}, ValueError, "iterations must be >= 1, got 0"),
        ({"patch_size": (30, 32, 32)}, ValueError, r"\(30, 32, 32\)"),
        ({"device": "tpu"}, ValueError, "'tpu'"),
    ],
)
def test_bad_settings_are_refused_before_writing(
    tmp_path: Path, kwargs: dict, error: type, quoted: str
) -> None:
    out = tmp_path / "demo"
    with pytest.raises(error, match=quoted):
        run_demo(out, progress=False, **kwargs)
    assert not out.exists()


def test_the_rampup_is_scaled_to_the_run() -> None:
    settings = {"base_filters": 8, "patch_size": (32, 32, 32), "seed": 0}
    for iterations, interval in ((10, 1), (150, 2), (300, 3), (15000, 150)):
        _, train = demo_configs(iterations, **settings, device="cpu", precision="fp32")
        assert train.rampup_interval == interval
        assert train.iterations == iterations and 1 <= train.validate_every <= iterations


def test_cli_quick_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    # A few iterations suffice to check the command's wiring; the fixture checks the rest.
    with _one_thread():
        assert main(["demo", "-o", str(out), "--quick", "--iterations", "4", "--no-progress"]) == 0
    _assert_demo_files(out)
    summary = capsys.readouterr().out
    assert "Dice" in summary and str(out / "test_phantom.seg.nrrd") in summary
    score = float(summary.split("held-out phantom: ")[1].split()[0])
    predicted, _ = read_segmentation(out / "test_phantom.seg.nrrd")
    reference, _ = read_segmentation(out / "test_phantom-reference.seg.nrrd")
    assert score == pytest.approx(dice(predicted.array == 1, reference.array == 1), abs=1e-3)
    assert np.isfinite(score)


def test_cli_help_states_the_iteration_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"({DEFAULT_ITERATIONS}; {QUICK_ITERATIONS} with --quick)" in text
