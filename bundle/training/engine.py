"""Small helpers the training configs reference through ``_target_`` (sampling, learning rate, checkpoints).

The newest checkpoint of a run (for resume) is :func:`bundle.io.checkpoint.latest_checkpoint`.

Resume is exact on CPU: :class:`AtomicCheckpointSaver` never leaves a truncated checkpoint under its final name, and
:class:`EpochSeed` makes every epoch's random stream (sampling, augmentation, dropout) a function of the seed, the
epoch number and the DDP rank only, so a run resumed after epoch N draws what the uninterrupted run drew in epoch
N + 1. On CUDA the draws are the same but the arithmetic is not bit-exact (autotuned cuDNN algorithms, atomic adds in
backward kernels): docs/operations.md §4.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.data.utils import set_rnd
from monai.handlers import CheckpointSaver
from monai.utils import set_determinism

from bundle.errors import InputError


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 20) -> float:
    """Linear learning-rate scaling: ``base_lr`` is the rate at ``reference_batch`` (paper: 0.05 at 20)."""
    if batch_size < 1 or reference_batch < 1:
        raise InputError(f"batch sizes must be ≥ 1, got {batch_size} and {reference_batch}.")
    return float(base_lr) * batch_size / reference_batch


def poly_iterations(epochs: int, epoch_length: int) -> int:
    """Total iterations of the per-iteration poly schedule (at least 1)."""
    return max(1, int(epochs) * int(epoch_length))


class EpochSeed:
    """Reseeds everything at each ``EPOCH_STARTED`` with a function of (seed, epoch, rank): torch/numpy/random and
    the transforms.

    Without it the random stream runs on from the start of the process, so a resumed run repeats epoch 1's draws.
    The DataLoader iterator (sampler order, worker seeds) is created after ``EPOCH_STARTED``, so it follows too.
    Attach on every rank (the DDP overlay keeps it in ``train#handlers[:3]``); each rank gets its own stream, so
    under DDP the monai backend's ranks draw different slices and augmentations (rank 0's stream is the
    single-process one). MONAI's ``set_determinism`` also switches cuDNN to deterministic, non-autotuned
    algorithms; the cuDNN flags in force before the call (``cudnn_benchmark`` in train.yaml) are put back.

    Args:
        seed: the run's seed (``@seed``).
        rank: this process's DDP rank (``@rank``).
    """

    def __init__(self, seed: int = 0, rank: int = 0) -> None:
        self.seed, self.rank = int(seed), int(rank)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def epoch_seed(self, epoch: int) -> int:
        """The seed of ``epoch`` on this rank (1000003 is prime: no (epoch, rank) pair repeats another's)."""
        return (self.seed + 1000003 * int(epoch) + 1009 * self.rank) % (2**32)

    def __call__(self, engine: Any) -> None:
        seed = self.epoch_seed(engine.state.epoch)
        cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
        set_determinism(seed=seed)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        loader = getattr(engine, "data_loader", None)
        if hasattr(
            loader, "set_epoch"
        ):  # bundle.training.slice_table.SliceBatches: the epoch's slices and augmentation
            loader.set_epoch(int(engine.state.epoch))
        elif loader is not None and getattr(loader, "num_workers", 0) == 0:
            set_rnd(loader.dataset, seed)  # with workers, MONAI's worker_init_fn seeds them from torch's RNG


def _keep(filename: str) -> None:
    """``DiskSaver.remove`` replacement for fixed file names (see :class:`AtomicCheckpointSaver`)."""


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` whose files are written to a temporary name in ``save_dir`` and renamed.

    MONAI 1.6.1 builds Ignite's ``DiskSaver`` with ``atomic=False`` (for group-read permissions, which Ignite's
    atomic path also sets), so a kill during ``torch.save`` leaves a truncated ``checkpoint_*.pt``; this turns the
    atomic path back on. Ignite deletes the oldest file *before* writing the next one: for fixed names (best model,
    final checkpoint) that deletion is skipped (the rename replaces the file), and interval checkpoints need
    ``n_saved ≥ 2`` so that one complete file always exists. Same arguments as ``CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler._atomic = True
                if getattr(ckpt.save_handler, "filename", None) is not None:
                    # fixed name (best model, final): the atomic replace is the removal; deleting first would
                    # leave no file if the process died during the save
                    ckpt.save_handler.remove = _keep
