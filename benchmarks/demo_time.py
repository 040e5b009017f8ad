"""Wall time of ``fbanet demo`` in float32 on a few CPU threads, against the old default.

The demo must finish within two minutes on a 2-core CPU without bfloat16 support. This runs
the whole demo (phantoms, training, validation, segmentation, files) with ``--precision
fp32``, ``torch.set_num_threads(threads)`` and no time budget (so the iterations, not the
budget, decide), ``--repeats`` times with today's defaults and
once with the reference setting (the 200 iterations the demo used to train), interleaved
in one process, and prints the medians, the ratio and each run's held-out Dice::

    python benchmarks/demo_time.py                   # 2 threads, 3 repeats
    python benchmarks/demo_time.py --threads 2 --repeats 5

On a shared machine the times vary with the other load; the ratio is the steadier figure.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fbanet.demo.run import DEFAULT_ITERATIONS, run_demo

REFERENCE_ITERATIONS = 200  # the demo's default before it was made to fit two minutes


def _run(iterations: int, seed: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = run_demo(
            Path(folder) / "demo", iterations=iterations, seed=seed, device="cpu",
            precision="fp32", progress=False, time_budget=None,
        )  # fmt: skip
        return time.perf_counter() - started, result.dice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    now: list[float] = []
    for seed in range(args.repeats):
        seconds, dice = _run(DEFAULT_ITERATIONS, seed)
        now.append(seconds)
        print(f"default ({DEFAULT_ITERATIONS} iterations), seed {seed}: {seconds:.1f} s, "
              f"Dice {dice:.3f}", flush=True)  # fmt: skip
        if seed == 0:
            reference, ref_dice = _run(REFERENCE_ITERATIONS, 0)
            print(f"reference ({REFERENCE_ITERATIONS} iterations): {reference:.1f} s, "
                  f"Dice {ref_dice:.3f}", flush=True)  # fmt: skip
    median = statistics.median(now)
    print(f"\n{args.threads} threads, float32: median {median:.1f} s for the demo "
          f"({DEFAULT_ITERATIONS} iterations), reference {reference:.1f} s "
          f"({REFERENCE_ITERATIONS}); ratio {reference / median:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
