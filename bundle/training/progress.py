"""nnU-Net-style ``progress.png``: training loss, validation Dice and learning rate per epoch, redrawn every validation.

:class:`ProgressPlot` is an Ignite handler for the trainer (``train#handlers`` of ``configs/train.yaml`` and
``configs/microscopy/train.yaml``). Per epoch it keeps the mean of the iteration losses (the values the
``StatsHandler`` / TensorBoard ``train_loss`` series log), the optimizer's learning rate after the epoch's last
step, and, when the validator ran, its metrics (``val_mean_dice``). After every validation (and when training ends)
it writes ``<output_dir>/progress.json`` (the numbers) and ``<output_dir>/progress.png`` (drawn by
:func:`bundle.evaluation.plots.plot_training_curves`), both atomically (temporary file + ``os.replace``), on rank 0 only.
A resumed run (``--resume True``) starts from the epochs that ``progress.json`` holds before the resumed epoch.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch.distributed as dist
from ignite.engine import Events

from bundle.evaluation.plots import plot_training_curves
from bundle.io.atomic import atomic_write_text

__all__ = ["ProgressPlot", "default_loss_transform"]


def default_loss_transform(output: Any) -> float:
    """The loss of a trainer output: the batch dict (``decollate: false``) or the first item of a decollated list."""
    item = output if isinstance(output, dict) else output[0]
    loss = item["loss"]
    return float(loss.item() if hasattr(loss, "item") else loss)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class ProgressPlot:
    """Writes ``progress.png`` / ``progress.json`` to ``output_dir`` after every validation and at the end of training.

    Args:
        output_dir: the training ``output_dir`` (created if needed).
        validator: the validation engine (``@validate#evaluator``) whose metrics are plotted; ``None``: loss and
            learning rate only.
        metric_names: validator metrics to plot (missing ones are skipped).
        loss_transform: trainer ``state.output`` → loss value (default: :func:`default_loss_transform`).
        filename: PNG name; the numbers go to the same name with ``.json``.
        width_px: PNG width.
        height_px: PNG height.
    """

    def __init__(
        self,
        output_dir: str,
        validator: Any = None,
        metric_names: Sequence[str] = ("val_mean_dice",),
        loss_transform: Callable[[Any], float] = default_loss_transform,
        filename: str = "progress.png",
        width_px: int = 1200,
        height_px: int = 400,
    ) -> None:
        self.output_dir = str(output_dir)
        self.validator = validator
        self.metric_names = list(metric_names)
        self.loss_transform = loss_transform
        self.png = os.path.join(self.output_dir, filename)
        self.json = os.path.splitext(self.png)[0] + ".json"
        self.size = (int(width_px), int(height_px))
        self.trainer: Any = None
        self.epochs: List[Dict[str, float]] = []  # {"epoch", "train_loss", "lr", <metric>: value, ...}
        self._losses: List[float] = []
        self._resumed = False

    def attach(self, engine: Any) -> None:
        """Registers on the trainer (``engine``) and, if given, on the validator's ``EPOCH_COMPLETED``."""

        self.trainer = engine
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        if self.validator is not None:
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._validated)

    # ------------------------------------------------------------------------------------------------ events
    def _epoch_started(self, engine: Any) -> None:
        if not self._resumed:  # first epoch of this process: after a resume the checkpoint has set state.epoch
            self._resumed = True
            self.epochs = [e for e in self._load() if e["epoch"] < engine.state.epoch]
        self._losses = []

    def _iteration(self, engine: Any) -> None:
        self._losses.append(self.loss_transform(engine.state.output))

    def _close_epoch(self) -> Dict[str, float]:
        """The current epoch's record (created once: validation runs inside the trainer's ``EPOCH_COMPLETED``)."""
        epoch = int(self.trainer.state.epoch)
        if not self.epochs or self.epochs[-1]["epoch"] != epoch:
            loss = sum(self._losses) / len(self._losses) if self._losses else math.nan
            lr = float(self.trainer.optimizer.param_groups[0]["lr"]) if hasattr(self.trainer, "optimizer") else None
            self.epochs.append({"epoch": epoch, "train_loss": loss, **({"lr": lr} if lr is not None else {})})
        return self.epochs[-1]

    def _epoch_completed(self, engine: Any) -> None:
        self._close_epoch()

    def _validated(self, validator: Any) -> None:
        record = self._close_epoch()
        for name in self.metric_names:
            value = validator.state.metrics.get(name)
            if value is not None:
                record[name] = float(value)
        self.write()

    def _completed(self, engine: Any) -> None:
        if self.epochs:
            self.write()

    # ------------------------------------------------------------------------------------------------ files
    def _load(self) -> List[Dict[str, float]]:
        try:
            with open(self.json) as f:
                data = json.load(f)
            return [{k: (math.nan if v is None else v) for k, v in e.items()} for e in data["epochs"] if "epoch" in e]
        except (OSError, ValueError, KeyError, TypeError):  # no earlier run, or an unreadable file: start afresh
            return []

    def history(self) -> Dict[str, Dict[str, Any]]:
        """The series in :func:`bundle.evaluation.plots.read_training_history`'s format (x = epoch)."""
        series: Dict[str, Dict[str, Any]] = {}
        for name in ["train_loss", *self.metric_names, "lr"]:
            points = [(e["epoch"], e[name]) for e in self.epochs if name in e]
            if points:
                series[name] = {"x": [p[0] for p in points], "y": [p[1] for p in points], "unit": "epoch"}
        return series

    def write(self) -> Optional[str]:
        """Writes ``progress.json`` and ``progress.png`` (rank 0 only); returns the PNG path (``None`` elsewhere)."""
        if _rank() != 0 or not self.epochs:
            return None

        clean = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in e.items()} for e in self.epochs
        ]
        atomic_write_text(self.json, json.dumps({"epochs": clean}, indent=1) + "\n")
        plot_training_curves(self.history(), self.png, width_px=self.size[0], height_px=self.size[1])
        return self.png
