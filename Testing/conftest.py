"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_cpu_thread() -> Iterator[None]:
    """Run the tiny networks of a test module on one thread.

    They gain little from a second thread, and on a busy 2-core machine the thread pool's
    busy-waiting makes them many times slower; one thread keeps the tests fast everywhere.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
