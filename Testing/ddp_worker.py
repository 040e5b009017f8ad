"""One process of a data-parallel test job (started by Testing/core/train/test_parallel.py).

Run as ``python ddp_worker.py SCENARIO OUT`` with torchrun's variables set (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); CPU, gloo, float32, one thread:

- ``step``: one step of a tiny network; every process saves the batch it drew.
- ``resume``: 4 iterations in one go; 2 (rank 1 alone asks to stop) and 2 more resumed.
- ``ends``: runs whose last iteration writes a checkpoint, and their resume.
- ``die``: rank 1 dies during the second iteration; rank 0 writes the error it gets.
- ``slow``: rank 0 sleeps, rank 1 waits for it (for the test of the job deadline).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import builders
import numpy as np
import torch
import torch.distributed as dist

from fbanet.config import ContrastModule, ModelConfig, TrainConfig
from fbanet.data.cases import Case
from fbanet.model.losses import balance_contrast, contrastive_gradient_norm, fba_loss
from fbanet.model.network import FBANet
from fbanet.train.checkpoints import load_checkpoint, save_checkpoint
from fbanet.train.distributed import (
    RankBatch,
    close_process_group,
    init_process_group,
    torchrun_environment,
)
from fbanet.train.parallel import DataParallelTrainer, ProcessLostError
from fbanet.train.progress import StopRequest
from fbanet.train.sync_batchnorm import convert_batchnorm
from fbanet.train.trainer import Trainer, TrainingData

# No dropout: its masks are drawn per process, so they could not match one process's.
TINY = ModelConfig(base_filters=4, patch_size=(16, 16, 16), projection_dim=8, dropout=0.0)
TINY_LEARNING = dataclasses.replace(TINY, contrast=ContrastModule.LEARNING)
MODULES = {"authors": TINY, "learning": TINY_LEARNING}


def settings(**changes: Any) -> TrainConfig:
    """The global configuration of the test job: 2 labeled + 2 unlabeled patches a step."""
    base = {
        "iterations": 1, "batch_size": 4, "labeled_batch_size": 2, "learning_rate": 0.01,
        "precision": "fp32", "seed": 7, "checkpoint_every": 100,
        "validate_every": 100, "rampup_length": 0.0, "sync_batchnorm": "on",
        # FBANET_TEST_DEVICE=cuda: the same jobs on GPUs with NCCL (Testing/core/test_cuda.py).
        "device": os.environ.get("FBANET_TEST_DEVICE", "cpu"),
        # Contiguous layout, as measured: this tiny network's float32 gradient is percents
        # off float64 in either layout (batch norm over 4 values at its 1x1x1 bottleneck,
        # the ranked loss), the two layouts differently, while single convolutions are exact
        # to rounding in both (benchmarks/channels_last_gradients.py).
        "channels_last": False,
    }  # fmt: skip
    import json

    debug = json.loads(os.environ.get("DEBUG_SETTINGS", "{}"))
    return TrainConfig(**{**base, **debug, **changes})


def blob_case(name: str, seed: int, labeled: bool) -> Case:
    """builders.blob_case at the smaller size these processes train on."""
    return builders.blob_case(name, seed, labeled, (20, 18, 18))


def data() -> TrainingData:
    """4 labeled and 4 unlabeled cases (2 of each per process)."""
    return TrainingData(
        labeled=[blob_case(f"lab{i}", i, True) for i in range(4)],
        unlabeled=[blob_case(f"unl{i}", 100 + i, False) for i in range(4)],
        spacing=(1.0, 1.0, 1.0),
    )


class _StopAfter(StopRequest):
    """Asks to stop once the trainer has done ``count`` iterations."""

    def __init__(self, trainer_ref: list[Any], count: int) -> None:
        super().__init__()
        self.trainer_ref, self.count = trainer_ref, count

    @property
    def requested(self) -> bool:
        return bool(self.trainer_ref) and self.trainer_ref[0].iteration >= self.count


def _trainer(env: Any, run_dir: Path, config: TrainConfig, **kwargs: Any) -> DataParallelTrainer:
    return DataParallelTrainer(env, TINY, config, data(), run_dir, show_progress=False, **kwargs)


def _step(env: Any, out: Path) -> None:
    trainer = _trainer(env, out / "run", settings())
    drawn = trainer.batcher.next

    def record() -> tuple[np.ndarray, np.ndarray]:
        images, labels = drawn()
        np.savez(out / f"batch{env.rank}.npz", images=images, labels=labels)
        return images, labels

    trainer.batcher.next = record  # type: ignore[method-assign]
    trainer.run()
    if dist.get_backend() == "gloo":  # CPU tensors
        _float64_gradients(env, out)


def _float64_gradients(env: Any, out: Path) -> None:
    """The distributed loss and batch norm in float64, without DDP: gradients (averaged as
    DDP does) against one process's on the whole batch, for both contrastive modules; rank 0
    writes the largest relative difference (float64 shows the arithmetic is exact; float32
    only rounds differently) and the contrastive gradient norms, one process's and the
    distributed one, of each module."""
    results = {kind: _float64_check(env, config) for kind, config in MODULES.items()}
    if env.rank == 0:
        (out / "float64.txt").write_text(repr(max(r["error"] for r in results.values())))
        (out / "grad_norms.json").write_text(json.dumps(results))


def _float64_check(env: Any, model_config: ModelConfig) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(4, 1, 16, 16, 16)))
    y = torch.from_numpy((rng.random((2, 16, 16, 16)) > 0.6).astype(np.int64))
    config = settings()

    def gradients(model: torch.nn.Module, rows: list[int], group: Any) -> Any:
        out = model(x[rows])
        labels = y[[r for r in rows if r < 2]]
        terms = fba_loss(out.logits, out.fg, out.bg, labels, 1, config, group)
        contrast = contrastive_gradient_norm(terms, out.contrast_inputs, 1.0, group)
        scale = 1.0
        if model_config.contrast is ContrastModule.LEARNING:  # the trainer's cap on its pull
            # (Its float32 losses would add ~1e-8 of rounding to the gradients compared
            # below, so those stay the loss's own.)
            _, scale, capped = balance_contrast(terms, out.contrast_inputs, config, group)
            assert math.isclose(capped, scale * contrast, rel_tol=1e-9)
        terms.total.backward()
        return {n: p.grad for n, p in model.named_parameters()}, (contrast, scale)

    torch.manual_seed(7)
    reference, (one, one_scale) = gradients(FBANet(model_config).double(), [0, 1, 2, 3], None)
    torch.manual_seed(7)
    model = convert_batchnorm(FBANet(model_config).double(), torch.device("cpu"))
    mine, (two, two_scale) = gradients(model, [env.rank, 2 + env.rank], RankBatch(env.world_size))
    error = norm = 0.0
    for name, grad in mine.items():
        dist.all_reduce(grad)
        grad /= env.world_size
        error += float(((grad - reference[name]) ** 2).sum())
        norm += float((reference[name] ** 2).sum())
    return {
        "error": (error / norm) ** 0.5,
        "one": one,
        "two": two,
        "scales": [one_scale, two_scale],
    }


def _resume(env: Any, out: Path) -> None:
    config = settings(iterations=4)
    _trainer(env, out / "whole", config).run()
    ref: list[Any] = []
    # Only rank 1 asks: both must stop after iteration 2.
    stop = _StopAfter(ref, 2) if env.rank == 1 else StopRequest()
    first = _trainer(env, out / "split", config, stop=stop)
    ref.append(first)
    result = first.run()
    (out / f"first{env.rank}.txt").write_text(f"{result.iterations} {result.stopped}")
    _trainer(env, out / "split", config, resume=True).run()


def _ends(env: Any, out: Path) -> None:
    """Runs whose last iteration is a checkpoint iteration: 4 by 2, resumed to 6, 2 by 2."""
    done = []
    for name, iterations, resume in (("run", 4, False), ("run", 6, True), ("short", 2, False)):
        config = settings(iterations=iterations, checkpoint_every=2)
        result = _trainer(env, out / name, config, resume=resume).run()
        done.append(result.iterations)
    (out / f"ends{env.rank}.txt").write_text(" ".join(map(str, done)))
    # A checkpoint of the fixed shards of fbanet 0.2.0 (no "sampling") does not resume.
    if env.rank == 0:
        state = load_checkpoint(out / "short" / "checkpoints" / "last.pt")
        del state["sampling"]
        save_checkpoint(out / "old" / "checkpoints" / "last.pt", state)
    dist.barrier()
    try:
        _trainer(env, out / "old", settings(iterations=4), resume=True).run()
    except ValueError as error:
        (out / f"old{env.rank}.txt").write_text(str(error))


def _slow(env: Any, out: Path) -> None:
    """Rank 0 takes its time (a loaded machine); the others wait for it."""
    if env.rank == 0:
        time.sleep(120)
    dist.barrier()


def _die(env: Any, out: Path) -> None:
    trainer = _trainer(env, out / "run", settings(iterations=6))
    step = trainer.step

    def dying_step(measure: bool = True) -> dict[str, float]:
        if env.rank == 1 and trainer.iteration == 1:
            os._exit(3)
        return step(measure)

    trainer.step = dying_step  # type: ignore[method-assign]
    try:
        trainer.run()
    except ProcessLostError as error:
        (out / "lost.txt").write_text(str(error), encoding="utf-8")
        raise


# -- for the tests (in the test process) -----------------------------------------------------
def _env(rank: int, world: int, port: int) -> dict[str, str]:
    return {
        **os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
    }  # fmt: skip


def launch(scenario: str, out: Path, world: int = 2, timeout: float = 240) -> list[Any]:
    """Run this script's ``scenario`` in ``world`` processes; their (exit code, output).

    This process hosts the job's rendezvous store, as torchrun's agent does, on a port the
    system gives it and holds until the job ends: a port chosen first and bound later by
    rank 0 could be taken in between (rank 0 then fails and the others wait on a stranger).
    The job has one deadline: past it every process is killed together and the test fails
    saying so (killing rank 0 alone at its own limit made the others fail as if they had
    lost it).
    """
    out.mkdir(parents=True, exist_ok=True)
    store = dist.TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False)
    command = [sys.executable, str(Path(__file__).resolve()), scenario, str(out)]
    logs = [out / f"{scenario}-rank{r}.log" for r in range(world)]
    procs = []
    for rank, log in enumerate(logs):
        env = {**_env(rank, world, store.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}
        with log.open("w", encoding="utf-8") as handle:
            procs.append(_start(command, env=env, stdout=handle))
    deadline = time.monotonic() + timeout
    try:
        codes = [proc.wait(timeout=max(deadline - time.monotonic(), 0.1)) for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
        tails = [f"rank {r}: {_read(log)[-1500:]}" for r, log in enumerate(logs)]
        raise AssertionError(
            f"the {scenario!r} job did not end within {timeout} s:\n" + "\n".join(tails)
        ) from None
    finally:
        for proc in procs:
            proc.wait()
    return [(code, _read(log)) for code, log in zip(codes, logs, strict=True)]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def run_job(command: list[str], timeout: float = 300, **options: Any) -> Any:
    """Run ``command`` (e.g. torchrun) in its own process group; on a timeout the whole group
    is killed, so no worker outlives the test. Returns (exit code, stdout, stderr)."""
    proc = _start(command, stderr=subprocess.PIPE, **options)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{command[:6]} timed out after {timeout} s:\n{stderr[-3000:]}"
        ) from None
    return proc.returncode, stdout, stderr


def _start(command: list[str], **options: Any) -> Any:
    settings = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "encoding": "utf-8",
                "errors": "replace", "start_new_session": True, **options}  # fmt: skip
    return subprocess.Popen(command, **settings)


def check_ok(results: list[Any]) -> None:
    for code, output in results:
        assert code == 0, output[-3000:]


class FixedBatcher:
    """A batcher that always gives the same batch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        return self.images, self.labels

    def state_dict(self) -> dict[str, Any]:
        return {}


def compare_step(tmp_path: Path) -> tuple[float, float]:
    """After the ``step`` job in ``tmp_path``: one process's step on the processes' batches.

    Checks the batch norm statistics and the logged losses; returns the distance between
    the two processes' weights and the one process's, and the one process's step size.
    """
    # The one-process batch: both processes' labeled patches first, then the unlabeled.
    parts = [np.load(tmp_path / f"batch{r}.npz") for r in (0, 1)]
    assert [p["images"].shape[0] for p in parts] == [2, 2]
    assert not np.array_equal(parts[0]["images"], parts[1]["images"])  # different shards
    images = np.concatenate([p["images"][i : i + 1] for i in (0, 1) for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    init = Trainer(TINY, settings(), data(), tmp_path / "unused", show_progress=False)
    start = {k: v.clone() for k, v in init.model.state_dict().items()}
    one = Trainer(TINY, settings(), data(), tmp_path / "one", show_progress=False)
    one.batcher = FixedBatcher(images, labels)  # type: ignore[assignment]
    one.run()

    two = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert two["world_size"] == 2 and len(two["ranks"]) == 2
    reference = one.model.state_dict()
    weights = [k for k, v in reference.items() if v.is_floating_point() and "running" not in k]
    error = sum(float(((two["model"][k] - reference[k]) ** 2).sum()) for k in weights) ** 0.5
    update = sum(float(((reference[k] - start[k]) ** 2).sum()) for k in weights) ** 0.5
    for key in reference:
        if "running" in key or "num_batches" in key:  # synchronized statistics
            torch.testing.assert_close(two["model"][key], reference[key], rtol=1e-5, atol=1e-6)
    # The logged losses are the global ones.
    logged = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").open()]
    expected = [json.loads(line) for line in (tmp_path / "one" / "progress.jsonl").open()]
    for key in ("loss", "dice_loss", "consistency_loss", "contrastive_loss"):
        assert math.isclose(logged[0][key], expected[0][key], rel_tol=1e-5), key
    # What the contrastive term sends into the network, over the whole batch.
    norms = logged[0]["contrastive_grad_norm"], expected[0]["contrastive_grad_norm"]
    assert norms[1] > 0 and math.isclose(*norms, rel_tol=1e-4), norms
    return error, update


SCENARIOS = {"step": _step, "resume": _resume, "ends": _ends, "die": _die, "slow": _slow}


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    env = torchrun_environment()
    assert env is not None, "start with torchrun's variables set"
    init_process_group(env, settings().device)
    SCENARIOS[scenario](env, out)
    close_process_group()


if __name__ == "__main__":
    main()
