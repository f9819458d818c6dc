"""Small helpers the training configs reference through ``_target_`` (resume, sampling, learning rate)."""

from __future__ import annotations

import glob
import os
from typing import Optional

__all__ = ["latest_checkpoint", "scaled_lr", "poly_iterations"]


def latest_checkpoint(ckpt_dir: str, pattern: str = "checkpoint*.pt") -> Optional[str]:
    """Newest resume checkpoint (model, optimizer, scheduler, trainer) in ``ckpt_dir``, or None.

    ``CheckpointSaver`` writes ``checkpoint_epoch=N.pt`` every epoch and ``checkpoint_final_iteration=N.pt`` when the
    run ends or raises (Ctrl-C included); the newest by modification time wins.
    """
    files = glob.glob(os.path.join(ckpt_dir, pattern))
    return max(files, key=os.path.getmtime) if files else None


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 20) -> float:
    """Linear learning-rate scaling: ``base_lr`` is the rate at ``reference_batch`` (paper: 0.05 at 20)."""
    if batch_size < 1 or reference_batch < 1:
        raise ValueError(f"bundle/engine.py: batch sizes must be ≥ 1, got {batch_size} and {reference_batch}.")
    return float(base_lr) * batch_size / reference_batch


def poly_iterations(epochs: int, epoch_length: int) -> int:
    """Total iterations of the per-iteration poly schedule (at least 1)."""
    return max(1, int(epochs) * int(epoch_length))
