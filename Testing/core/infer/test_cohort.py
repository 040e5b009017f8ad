"""Cohort inference: many scans over several workers, order kept, failures reported."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from fbanet.infer.cohort import CaseJob, failure_summary, parse_devices, segment_cohort
from fbanet.infer.files import SegmentOutputs


def _jobs(names: list[str]) -> list[CaseJob]:
    return [CaseJob(i, Path(f"{n}.nrrd"), Path(f"out/{n}.seg.nrrd")) for i, n in enumerate(names)]


def _fake_segment(segmenter: str, job: CaseJob, device: str) -> SegmentOutputs:
    assert segmenter == f"segmenter on {device}"  # each worker uses its own segmenter
    time.sleep(0.02 * (1 + job.index % 3))  # uneven times: the queue balances the workers
    if job.image.stem.startswith("bad"):
        raise ValueError(f"{job.image} is corrupt")
    return SegmentOutputs(job.output, seconds=float(job.index))


def test_scans_spread_over_workers_in_input_order_with_failures_reported() -> None:
    names = [f"case{i}" for i in range(9)]
    names[4] = "bad4"
    jobs = _jobs(names)
    loaded: list[tuple[str, str]] = []
    seen: list[int] = []

    def load(device: str) -> str:
        loaded.append((device, threading.current_thread().name))
        return f"segmenter on {device}"

    outcomes = segment_cohort(
        jobs, ["dev0", "dev1", "dev2"], load, _fake_segment, lambda o: seen.append(o.job.index)
    )
    assert sorted(d for d, _ in loaded) == ["dev0", "dev1", "dev2"]  # one segmenter each
    assert len({t for _, t in loaded}) == 3  # in three workers
    assert [o.job for o in outcomes] == jobs  # input order
    assert sorted(seen) == list(range(9))
    assert {o.device for o in outcomes} == {"dev0", "dev1", "dev2"}  # all took scans
    failed = [o for o in outcomes if not o.ok]
    assert [o.job.index for o in failed] == [4]
    assert failed[0].bad_input and "bad4.nrrd is corrupt" in (failed[0].error or "")
    assert all(o.outputs is not None and o.outputs.seconds == o.job.index
               for o in outcomes if o.ok)  # fmt: skip
    summary = failure_summary(outcomes)
    assert summary is not None and summary.startswith("1 of 9 scan(s) failed:")
    assert "bad4.nrrd: bad4.nrrd is corrupt" in summary
    assert failure_summary([o for o in outcomes if o.ok]) is None


def test_a_model_that_cannot_load_fails_the_run() -> None:
    def load(device: str) -> Any:
        raise FileNotFoundError("model.safetensors does not exist")

    with pytest.raises(FileNotFoundError, match="does not exist"):
        segment_cohort(_jobs(["a", "b"]), ["dev0", "dev1"], load, _fake_segment)


def test_a_bug_is_not_taken_for_a_failed_scan() -> None:
    def segment(segmenter: Any, job: CaseJob, device: str) -> SegmentOutputs:
        raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        segment_cohort(_jobs(["a", "b", "c"]), ["dev0"], lambda d: d, segment)


def test_parse_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert parse_devices(None) == ["cpu"]
    assert parse_devices(None, fallback="auto") == ["auto"]
    assert parse_devices("cpu") == ["cpu"]
    with pytest.raises(ValueError, match=r"has 0 CUDA GPU\(s\)"):
        parse_devices("0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert parse_devices(None) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert parse_devices("0,2") == ["cuda:0", "cuda:2"]
    with pytest.raises(ValueError, match="twice"):
        parse_devices("1,1")
    with pytest.raises(ValueError, match="not \\[4\\]"):
        parse_devices("3,4")
    with pytest.raises(ValueError, match="separated by commas"):
        parse_devices("gpu0")


def test_ctrl_c_stops_every_worker_before_it_is_raised_again() -> None:
    import _thread

    from fbanet.infer.cohort import check_cancelled

    cancel = threading.Event()
    started: list[int] = []
    workers: list[threading.Thread] = []

    def segment(segmenter: str, job: CaseJob, device: str) -> SegmentOutputs:
        started.append(job.index)
        workers.append(threading.current_thread())
        if job.index == 0:
            _thread.interrupt_main()  # Ctrl-C reaches the main thread while workers run
        for _ in range(500):  # a long scan, checking between its windows
            check_cancelled(cancel)
            time.sleep(0.01)
        raise AssertionError("the worker was never told to stop")

    with pytest.raises(KeyboardInterrupt):
        segment_cohort(_jobs([f"c{i}" for i in range(6)]), ["dev0", "dev1"],
                       lambda d: f"segmenter on {d}", segment, cancel=cancel)  # fmt: skip
    assert cancel.is_set()
    assert not any(worker.is_alive() for worker in workers)  # joined before the re-raise
    assert set(started) <= {0, 1}  # no further scan was taken
