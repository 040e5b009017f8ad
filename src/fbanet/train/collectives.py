"""Differentiable collectives over the default process group, on PyTorch's current API.

``torch.distributed.nn.functional`` (``all_reduce``, ``all_gather``) is deprecated and warns
on every call; its successor is ``torch.distributed._functional_collectives``, whose
``all_reduce`` and ``all_gather_single`` carry gradients the same way: the backward of a sum
is the sum of the gradients, the backward of a gather sends each process the gradient of
its own rows.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor
from torch.distributed import _functional_collectives as funcol


def _world() -> dist.ProcessGroup:
    group = dist.group.WORLD
    assert group is not None, "join the process group first (distributed.init_process_group)"
    return group


def sum_over_processes(local: Tensor) -> Tensor:
    """``local`` summed over every process, with gradients."""
    return funcol.all_reduce(local, "sum", _world())


def gather_from_processes(local: Tensor) -> list[Tensor]:
    """Every process's ``local`` (same shape everywhere), in rank order, with gradients."""
    gathered = funcol.all_gather_single(local.contiguous(), 0, _world())
    return list(gathered.chunk(dist.get_world_size(), dim=0))
