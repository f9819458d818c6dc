"""DDP helpers ``configs/multi_gpu_train.yaml`` references: the per-rank batch, SyncBatchNorm, single-process runs.

The batch rule: ``batch_size`` is the global batch the recipe asks for (20 slices, lr 0.05 at 20). Each rank takes
``batch_size // world_size`` slices (the monai backend: whole volumes of ``slices_per_volume`` slices), at least one
unit, so the real global batch is that × ``world_size``: 20 on 2, 4 or 5 GPUs, 16 on 8, 24 on 24. The learning rate is
scaled from the real global batch (``scaled_lr``), and rank 0 logs the rule once, with a warning when the real
global batch differs from ``batch_size``.
"""

from __future__ import annotations

import logging
import os
from typing import Union

import torch

from bundle.errors import InputError

logger = logging.getLogger(__name__)


def rank_batch(batch_size: int, world_size: int = 1, unit: int = 1, rank: int = 0) -> int:
    """Slices per rank and iteration: ``batch_size // world_size`` in whole ``unit``s, at least one unit.

    Args:
        batch_size: the global batch asked for (``@batch_size``).
        world_size: DDP processes.
        unit: slices that travel together (1 for the batched backend; ``slices_per_volume`` for the monai one).
        rank: this process's rank; rank 0 logs the resulting global batch.
    """
    batch_size, world_size, unit = int(batch_size), int(world_size), int(unit)
    if batch_size < 1 or world_size < 1 or unit < 1:
        raise InputError(
            f"batch_size, world size and slices_per_volume must be ≥ 1, got {batch_size}, {world_size}, {unit}."
        )
    per_rank = max(1, batch_size // unit // world_size) * unit
    if int(rank) == 0:
        real = per_rank * world_size
        message = (
            f"DDP batch: {world_size} rank(s) x {per_rank} slices = global batch {real} (batch_size {batch_size}); "
            "the learning rate is scaled from the global batch"
        )
        if real != batch_size:
            logger.warning(message + f": pass a --batch_size that {world_size * unit} divides to keep {batch_size}")
        else:
            logger.info(message)
    return per_rank


def sync_batchnorm(network: torch.nn.Module, enabled: bool, device: Union[str, torch.device]) -> torch.nn.Module:
    """``network`` with every BatchNorm layer made a ``torch.nn.SyncBatchNorm`` when ``enabled``.

    SyncBatchNorm normalises each training batch with the statistics of the global batch (all ranks), as the
    single-GPU recipe does, instead of each rank's few slices (2 on 8 GPUs at batch 20); it costs a gather (forward)
    and a reduce (backward) per BatchNorm layer and step. torch trains it on GPUs only, so ``enabled`` on another
    device is refused.
    """
    if not isinstance(enabled, bool):
        raise InputError(f"sync_bn must be True or False, got {enabled!r}: write --sync_bn True or --sync_bn False.")
    if not enabled:
        return network
    if torch.device(device).type != "cuda":
        raise InputError(
            f"sync_bn True needs CUDA (torch's SyncBatchNorm trains on GPUs only), but the device is {device}: "
            "pass --sync_bn False for DDP on CPU (gloo)."
        )
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)


def single_process_only(what: str = "this run") -> None:
    """Refuses to run under torchrun / an initialised process group (first items of a single-process config's run).

    ``configs/evaluate.yaml`` keeps its handlers on one process while its report gathers from all of them: combined
    with ``configs/multi_gpu_train.yaml`` the ranks would wait for each other forever.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world > 1 or distributed:
        raise InputError(
            f"{what} is single-process: do not combine it with configs/multi_gpu_train.yaml or start it with "
            "torchrun; run it with `python -m monai.bundle run`, or split the test list across jobs "
            "(docs/operations.md)."
        )
