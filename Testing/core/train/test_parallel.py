"""Data-parallel training: 2 CPU processes (gloo) against one, resume, stop, a lost process.

The jobs run as real separate processes (Testing/ddp_worker.py, or the ``fbanet`` command
under ``torchrun``), one thread each, float32, with torchrun's environment variables.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ddp_worker import TINY, check_ok, compare_step, data, launch, run_job, settings

from fbanet.config import SyncBatchNorm
from fbanet.train.checkpoints import load_checkpoint, save_checkpoint
from fbanet.train.distributed import (
    DistributedEnv,
    RankBatchSize,
    SharedOrderSampler,
    per_rank_batch,
    torchrun_environment,
    wants_sync_batchnorm,
)
from fbanet.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def test_two_processes_take_the_step_of_one_process_on_their_batch(tmp_path: Path) -> None:
    check_ok(launch("step", tmp_path))
    error, update = compare_step(tmp_path)
    # float32 rounds the two computations differently (the sums run in another order); the
    # step itself is large (the ranked contrastive loss's gradients are). Without synchronized
    # batch norm the difference is ~3x the step (measured 3.3), without the gathered losses
    # larger still.
    assert update > 0.1
    assert error / update < 1e-2, (error, update)
    # In float64 the distributed loss and batch norm give one process's gradients exactly.
    assert float((tmp_path / "float64.txt").read_text()) < 1e-8
    # And the contrastive gradient norm, for both modules (2 processes logged ~2x).
    for kind, result in json.loads((tmp_path / "grad_norms.json").read_text()).items():
        assert result["one"] > 0, kind
        assert result["two"] == pytest.approx(result["one"], rel=1e-6), (kind, result)
    # The learning term's cap (balance_contrast) is the same over 2 processes as in one.
    scales = json.loads((tmp_path / "grad_norms.json").read_text())["learning"]["scales"]
    assert scales[0] < 1 and scales[1] == pytest.approx(scales[0], rel=1e-6)


def test_resume_after_a_stop_continues_exactly(tmp_path: Path) -> None:
    check_ok(launch("resume", tmp_path))
    # Rank 1 alone asked to stop after iteration 2; both stopped there.
    assert [(tmp_path / f"first{r}.txt").read_text() for r in (0, 1)] == ["2 True"] * 2
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert whole["iteration"] == split["iteration"] == 4
    for key, value in whole["model"].items():
        torch.testing.assert_close(split["model"][key], value, rtol=0, atol=0, msg=key)
    assert split["ranks"][1]["batcher"] == whole["ranks"][1]["batcher"]
    assert split["ranks"][0]["batcher"] != split["ranks"][1]["batcher"]
    # Rank 0 alone wrote the progress: each iteration once.
    events = [json.loads(line) for line in (tmp_path / "split" / "progress.jsonl").open()]
    assert [e["iteration"] for e in events if e["event"] == "iteration"] == [1, 2, 3, 4]


def test_a_run_ending_on_a_checkpoint_iteration_ends_in_every_process(tmp_path: Path) -> None:
    # Every process must know that the last iteration was just checkpointed: the final
    # checkpoint is a collective, taken by all processes or by none.
    check_ok(launch("ends", tmp_path))
    assert [(tmp_path / f"ends{r}.txt").read_text() for r in (0, 1)] == ["4 6 2"] * 2
    for name, iterations in (("run", 6), ("short", 2)):
        state = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")
        assert state["iteration"] == iterations and len(state["ranks"]) == 2
    for rank in (0, 1):
        assert "fbanet 0.2.0 or earlier" in (tmp_path / f"old{rank}.txt").read_text()


def test_a_dead_process_ends_the_job_with_a_clear_message(tmp_path: Path) -> None:
    (code0, output0), (code1, output1) = launch("die", tmp_path)
    assert code1 == 3, output1[-2000:]
    assert code0 != 0, output0[-2000:]
    assert (tmp_path / "lost.txt").is_file(), output0[-3000:]
    message = (tmp_path / "lost.txt").read_text(encoding="utf-8")
    assert "process 0 of 2 lost contact with the others at iteration 1" in message
    assert "--resume" in message


def test_a_job_past_its_deadline_fails_as_a_timeout_with_every_process_ended(
    tmp_path: Path,
) -> None:
    # The flaky failure of the test above: under load, the harness killed rank 0 at its own
    # limit while rank 1 was still running, which then failed losing rank 0 (exit 1, not 3).
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"'slow' job did not end within 5 s"):
        launch("slow", tmp_path, timeout=5)
    assert time.monotonic() - started < 60  # rank 1 was not left waiting for rank 0


def test_a_checkpoint_of_two_processes_does_not_resume_in_one(tmp_path: Path) -> None:
    trainer = Trainer(TINY, settings(), data(), tmp_path / "run", show_progress=False)
    save_checkpoint(trainer.checkpoint_path, {**trainer.state(), "world_size": 2})
    again = Trainer(TINY, settings(), data(), tmp_path / "run", resume=True, show_progress=False)
    with pytest.raises(ValueError, match=r"written by 2 training process\(es\), this run has 1"):
        again.run()


@pytest.mark.slow
def test_fbanet_train_under_torchrun(tmp_path: Path) -> None:
    import SimpleITK as sitk

    cases = data()
    entries: dict[str, list[Any]] = {"labeled": [], "unlabeled": []}
    for case in (*cases.labeled, *cases.unlabeled):
        sitk.WriteImage(sitk.GetImageFromArray(case.image), str(tmp_path / f"{case.name}.nrrd"))
        if case.label is None:
            entries["unlabeled"].append(f"{case.name}.nrrd")
            continue
        label = sitk.GetImageFromArray(case.label)
        sitk.WriteImage(label, str(tmp_path / f"{case.name}-label.nrrd"))
        entries["labeled"].append(
            {"image": f"{case.name}.nrrd", "label": f"{case.name}-label.nrrd"}
        )
    entries["validation"] = [entries["labeled"].pop()]  # validated by rank 0 alone
    (tmp_path / "manifest.json").write_text(json.dumps(entries))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--standalone", "-m", "fbanet", "train"]  # fmt: skip
    flags = ["--manifest", str(tmp_path / "manifest.json"), "-o", str(tmp_path / "run"),
             "--patch-size", "16", "16", "16", "--base-filters", "4", "--iterations", "2",
             "--device", "cpu", "--fp32", "--json", "--validate-every", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code, _, stderr = run_job(torchrun + flags, env=env)
    assert code == 0, stderr[-3000:]
    assert "FutureWarning" not in stderr  # the current collectives API
    # One process's log: rank 0 logs, tagged; rank 1 only warnings (none here).
    compute = [line for line in stderr.splitlines() if "compute:" in line]
    assert len(compute) == 1 and compute[0].startswith("[rank 0] INFO"), compute
    events = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").open()]
    assert [e["iteration"] for e in events if e["event"] == "iteration"] == [1, 2]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["world_size"] == 2
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert [e["iteration"] for e in events if e["event"] == "validation"] == [1, 2]
    assert (tmp_path / "run" / "best_model.safetensors").is_file()
    assert (tmp_path / "run" / "train.log").read_text().count("validation Dice") == 2
    # Three processes cannot split 2 + 2 patches: a clear error, exit 2.
    shutil.rmtree(tmp_path / "run")
    torchrun[4] = "3"
    code, _, stderr = run_job(torchrun + flags, env=env)
    assert code != 0
    assert "does not split over 3 processes" in stderr
    assert "exitcode  : 2" in stderr  # bad input, found before the processes meet


# -- the pieces, in one process ----------------------------------------------------------------
def test_torchrun_environment() -> None:
    assert torchrun_environment({}) is None
    full = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
            "MASTER_PORT": "1"}  # fmt: skip
    assert torchrun_environment(full) == DistributedEnv(1, 4, 1)
    assert torchrun_environment({**full, "RANK": "0", "WORLD_SIZE": "1"}) is None  # lone
    with pytest.raises(ValueError, match="but not"):
        torchrun_environment({"RANK": "0"})
    with pytest.raises(ValueError, match="do not fit"):
        torchrun_environment({**full, "RANK": "4"})


def test_the_global_batch_splits_evenly_or_says_how() -> None:
    assert per_rank_batch(settings(), 2) == RankBatchSize(1, 1)
    assert per_rank_batch(settings(batch_size=8, labeled_batch_size=4), 4) == RankBatchSize(1, 1)
    with pytest.raises(ValueError, match=r"2 labeled \+ 2 unlabeled .* over 4 processes"):
        per_rank_batch(settings(), 4)


@pytest.mark.parametrize("world", [2, 3])
def test_every_case_is_drawn_equally_often_whatever_the_world_size(world: int) -> None:
    # 7 labeled + 5 unlabeled cases, 1 + 2 patches per process and step. Fixed shards
    # (4 + 3 cases over 2 processes) drew the smaller shard's cases 4/3 as often (measured
    # 2334 against 1750 draws in 7000 steps).
    batch = RankBatchSize(1, 2)
    samplers = [
        SharedOrderSampler(7, 5, batch, DistributedEnv(r, world, r), seed=7) for r in range(world)
    ]
    labeled, unlabeled = np.zeros(7, int), np.zeros(5, int)
    steps = 35 * 5  # whole passes over both kinds for 2 and 3 processes
    for _ in range(steps):
        for sampler in samplers:
            lab, unl = sampler.next_batch()
            assert (len(lab), len(unl)) == (1, 2)
            np.add.at(labeled, lab, 1)
            np.add.at(unlabeled, unl, 1)
    assert labeled.tolist() == [steps * world // 7] * 7
    assert unlabeled.tolist() == [steps * world * 2 // 5] * 5
    # Within a step, the processes draw different cases (one pass is a permutation).
    again = [SharedOrderSampler(7, 5, batch, DistributedEnv(r, world, r), 7) for r in range(world)]
    first = [s.next_batch()[0][0] for s in again]
    assert len(set(first)) == world


def test_more_processes_than_cases_share_the_cases() -> None:
    batch = RankBatchSize(1, 0)
    samplers = [SharedOrderSampler(1, 0, batch, DistributedEnv(r, 3, r), 7) for r in range(3)]
    assert [s.next_batch() for s in samplers] == [([0], [])] * 3


def test_sync_batchnorm_default() -> None:
    assert wants_sync_batchnorm(SyncBatchNorm.AUTO, RankBatchSize(1, 1))
    assert not wants_sync_batchnorm(SyncBatchNorm.AUTO, RankBatchSize(4, 4))
    assert wants_sync_batchnorm(SyncBatchNorm.ON, RankBatchSize(4, 4))
    assert not wants_sync_batchnorm(SyncBatchNorm.OFF, RankBatchSize(1, 1))
