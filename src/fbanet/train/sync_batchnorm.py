"""Batch norm whose statistics span all processes of data-parallel training.

On CUDA this is PyTorch's own ``torch.nn.SyncBatchNorm``. That module refuses CPU tensors,
so for CPU processes (gloo) :class:`GroupBatchNorm3d` computes the same statistics with
differentiable collectives: the mean, then the variance about it (two passes, as precise as
one process's batch norm), over the whole batch of every process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fbanet.train.collectives import sum_over_processes


class GroupBatchNorm3d(nn.BatchNorm3d):
    """``BatchNorm3d`` with training statistics over the default process group (CPU, gloo).

    Same parameters, buffers and state-dict keys as ``BatchNorm3d``, so model files and
    checkpoints do not change. Evaluation, or a single process, is plain batch norm.
    Input and output are (B, C, X, Y, Z); the statistics are computed in float32.
    """

    def forward(self, input: Tensor) -> Tensor:
        grouped = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and grouped and self.track_running_stats):
            return super().forward(input)
        self._check_input_dim(input)
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float32)
        dist.all_reduce(count)
        total = float(count.item())
        if total <= 1:
            raise ValueError(f"batch norm needs more than 1 value per channel, got {total:.0f}")
        mean = sum_over_processes(x.sum(dims)) / total
        centered = x - mean.view(shape)
        var = sum_over_processes((centered * centered).sum(dims)) / total
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        self._update_running_stats(mean.detach(), var.detach() * total / (total - 1))
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        # As torch's batch norm: count the batch, then an exponential (or, without a
        # momentum, cumulative) average of the statistics.
        assert self.num_batches_tracked is not None
        assert self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        factor = (
            1.0 / float(self.num_batches_tracked.item()) if self.momentum is None else self.momentum
        )
        self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
        self.running_var.mul_(1 - factor).add_(factor * unbiased_var.to(self.running_var.dtype))


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every 3-D batch norm synchronized over the process group.

    The new layers share the old ones' parameters and buffers (an optimizer built before
    keeps working); CUDA gets ``torch.nn.SyncBatchNorm``, CPU :class:`GroupBatchNorm3d`.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_group_batchnorm(module)


def _to_group_batchnorm(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm3d) and not isinstance(module, GroupBatchNorm3d):
        layer = GroupBatchNorm3d(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        if module.affine:
            layer.weight, layer.bias = module.weight, module.bias
        layer.running_mean = module.running_mean
        layer.running_var = module.running_var
        layer.num_batches_tracked = module.num_batches_tracked
        layer.train(module.training)
        return layer
    for name, child in module.named_children():
        module.add_module(name, _to_group_batchnorm(child))
    return module
