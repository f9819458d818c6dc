"""Small helpers the training configs reference through ``_target_`` (sampling, learning rate, checkpoints).

The newest checkpoint of a run (for resume) is :func:`bundle.io.checkpoint.latest_checkpoint`.

Resume is exact on CPU: :class:`AtomicCheckpointSaver` never leaves a truncated checkpoint under its final name, and
:class:`EpochSeed` makes every epoch's random stream (sampling, augmentation, dropout) a function of the seed, the
epoch number and the DDP rank only, so a run resumed after epoch N draws what the uninterrupted run drew in epoch
N + 1. On CUDA the draws are the same but the arithmetic is not bit-exact (autotuned cuDNN algorithms, atomic adds in
backward kernels): docs/operations.md §4.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from monai.data.utils import set_rnd
from monai.handlers import CheckpointSaver
from monai.utils import set_determinism
from torch.optim.lr_scheduler import PolynomialLR

from bundle.errors import InputError


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 20) -> float:
    """Linear learning-rate scaling: ``base_lr`` is the rate at ``reference_batch`` (paper: 0.05 at 20)."""
    if batch_size < 1 or reference_batch < 1:
        raise InputError(f"batch sizes must be ≥ 1, got {batch_size} and {reference_batch}.")
    return float(base_lr) * batch_size / reference_batch


def poly_iterations(epochs: int, epoch_length: int) -> int:
    """Total iterations of the per-iteration poly schedule (at least 1)."""
    return max(1, int(epochs) * int(epoch_length))


class RunLengthPolynomialLR(PolynomialLR):
    """``torch.optim.lr_scheduler.PolynomialLR`` whose length is always the current run's ``total_iters``.

    A resumed run restores the scheduler's state, and torch's ``load_state_dict`` would also restore the first run's
    ``total_iters``: a finished run extended with a larger ``--epochs`` then trains at lr 0. Here the restored
    position (``last_epoch``) is kept and the length is this run's, so extending *stretches* the schedule: from the
    resumed iteration on, the lr is the one a run planned for the new length from the start would have
    (``base_lr · (1 − iteration / total_iters) ** power``). A plain resume (same ``--epochs``) changes nothing.

    Same arguments as ``PolynomialLR``. Load the optimizer before the scheduler (``load_dict`` order in the configs):
    the stretched lr is written into the optimizer's param groups.
    """

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        total_iters = self.total_iters
        super().load_state_dict(dict(state_dict))
        if self.total_iters == total_iters:
            return
        self.total_iters = total_iters
        done = min(self.last_epoch, total_iters)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * (1.0 - done / total_iters) ** self.power
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


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
    """MONAI ``CheckpointSaver`` whose files are written to a temporary name in ``save_dir`` and renamed, and whose
    interval checkpoints are removed once a completed run has written its final one.

    MONAI 1.6.1 builds Ignite's ``DiskSaver`` with ``atomic=False`` (for group-read permissions, which Ignite's
    atomic path also sets), so a kill during ``torch.save`` leaves a truncated ``checkpoint_*.pt``; this turns the
    atomic path back on. Ignite deletes the oldest file *before* writing the next one: for fixed names (best model,
    final checkpoint) that deletion is skipped (the rename replaces the file), and interval checkpoints need
    ``n_saved ≥ 2`` so that one complete file always exists.

    Disk: a training checkpoint holds the weights and the optimizer state (MSA²Net ``paper`` with SGD momentum:
    614 MB), so a run holds at most ``n_saved`` interval files plus the final one while it trains; when it completes,
    the final checkpoint holds everything the interval files held (resume reads the newest), so they are deleted
    (``keep_interval_after_final=False``): a finished run keeps one training checkpoint, not three. A run that
    ends by an exception keeps them.

    Args:
        args: as ``CheckpointSaver``.
        keep_interval_after_final: keep the interval checkpoints after the final one of a completed run.
        kwargs: as ``CheckpointSaver``.
    """

    def __init__(self, *args: Any, keep_interval_after_final: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_interval_after_final = bool(keep_interval_after_final)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                ckpt.save_handler._atomic = True
                if getattr(ckpt.save_handler, "filename", None) is not None:
                    # fixed name (best model, final): the atomic replace is the removal; deleting first would
                    # leave no file if the process died during the save
                    ckpt.save_handler.remove = _keep

    def completed(self, engine: Any) -> None:
        super().completed(engine)  # the final checkpoint, written atomically
        interval = self._interval_checkpoint
        if interval is None or self.keep_interval_after_final:
            return
        for item in list(interval._saved):
            interval.save_handler.remove(item.filename)
        interval._saved.clear()
