"""The training data path at GPU speed: every training slice on the network grid once, in one table on the device.

:class:`SliceTable` runs the deterministic volume stage (load, checks, canonical orientation, HU window) once per
case, maps **every** axial slice to the network grid once (whole-slice bicubic resize for the image and nearest
for the label, as the per-sample path does every iteration; or the fixed physical pixel size) and keeps them as one
flat table: image float16 (N, 1, S, S), label uint8 (N, S, S), case index (N,). It lives on the training device
(CUDA) or in (pinned, when CUDA exists) host memory. Synapse's 2,211 slices at 224² take 2211 · 224² · 3 B =
333 MB.

With ``slice_window="sliding"`` each slice is kept whole on its ``pixel_size`` grid instead
(:func:`bundle.transforms.geometry.native_grid_size`: the slice's whole field of view, at least the network size; the
rows are padded to the largest grid and ``extent`` records each one's), and every batch row is a network-sized patch
of it (:class:`bundle.training.patches.PatchSampler`, with foreground oversampling).

:class:`SliceBatches` is what the trainer iterates: each epoch is ``slices_per_epoch`` slices taken from a running
stream of shuffled passes over the table (a new permutation per pass, seeded by the run's seed and the pass number),
so with ``slices_per_epoch`` = the table size every slice is seen once per epoch -- the official epoch -- and the
draw of any epoch depends only on the seed and the epoch number: a resumed run draws what the uninterrupted one
drew (:class:`bundle.training.engine.EpochSeed` calls :meth:`SliceBatches.set_epoch`). Under DDP each rank takes its own
share (positions ``rank::world_size``) of the epoch's slices. Batches are gathered, augmented
(:class:`bundle.transforms.augment.BatchedAugment`) and normalised on the training device, with no worker process and no
host round trip on CUDA.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Dict, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from monai.data import Dataset

from bundle.errors import InputError
from bundle.training.patches import PatchSampler, check_foreground_fraction
from bundle.transforms.augment import BatchedAugment
from bundle.transforms.geometry import (
    check_pixel_size,
    check_slice_window,
    inplane_spacing,
    native_grid_size,
    to_network_grid,
)

logger = logging.getLogger(__name__)


AUGMENT_BACKENDS = ("batched", "monai")


class SliceTable:
    """All axial slices of the training volumes on the network grid, as one flat table.

    Args:
        data: datalist items ``{"image": path, "label": path}``.
        transform: the deterministic volume stage (:func:`bundle.transforms.ct.ct_volume_transforms`), producing
            (1, H, W, D) image in [0, 1] and label.
        size: network grid S (224).
        pixel_size: network pixel size in mm, or ``None`` for the official whole-slice resize.
        slice_window: ``"whole"`` (each slice on the S × S network grid) or ``"sliding"`` (each slice whole at
            ``pixel_size``; batches are patches of it).
        device: where the table lives (the training device); on CPU the tensors are pinned when CUDA exists.
        dtype: image dtype in the table (``float16`` halves the memory; the network gets float32 batches).
        chunk: slices resized per call (bounds the transient memory of one volume).
        progress: show a progress bar over the volumes.
    """

    def __init__(
        self,
        data: Sequence[Dict[str, Any]],
        transform: Any,
        size: int = 224,
        pixel_size: Optional[float] = None,
        slice_window: str = "whole",
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float16,
        chunk: int = 64,
        progress: bool = False,
    ) -> None:
        self.size, self.pixel_size = int(size), check_pixel_size(pixel_size)
        self.slice_window = check_slice_window(slice_window, self.pixel_size)
        self.device = torch.device(device)
        started = time.perf_counter()
        images, labels, cases, extents = [], [], [], []
        volumes = Dataset(list(data), transform)
        order = range(len(volumes))
        if progress:
            from tqdm import tqdm

            order = tqdm(order, desc="slice table", unit="volume")
        for case in order:
            item = volumes[case]
            img, lab = item["image"], item["label"]
            spacing = inplane_spacing(img.affine) if self.pixel_size is not None else None
            img, lab = (_plain(x)[0].permute(2, 0, 1)[:, None] for x in (img, lab))  # (D, 1, H, W) float32
            grid = self._grid_size(img.shape[-2:], spacing)
            for z0 in range(0, img.shape[0], chunk):
                images.append(self._grid(img[z0 : z0 + chunk], "bicubic", spacing, grid).to(dtype))
                labels.append(self._grid(lab[z0 : z0 + chunk], "nearest", spacing, grid)[:, 0].to(torch.uint8))
            cases.append(torch.full((img.shape[0],), case, dtype=torch.int32))
            extents.append(torch.tensor([grid], dtype=torch.int32).expand(img.shape[0], 2))
        if not images:
            raise InputError(
                "the training datalist holds no slice: give --datalist a 'training' section that lists volumes."
            )
        self.image, self.label, self.case = (self._place(_stack_padded(t)) for t in (images, labels, cases))
        # sliding: each row's grid size (its slice fills [:rows, :columns] of the padded row); whole: None
        self.extent = self._place(torch.cat(extents)) if self.slice_window == "sliding" else None
        self.seconds = time.perf_counter() - started
        logger.info(
            "slice table: %d slices of %d volumes, %.0f MB on %s, built in %.1f s",
            len(self),
            len(volumes),
            self.nbytes / 2**20,
            self.device,
            self.seconds,
        )

    def _grid_size(self, size, spacing) -> tuple:
        """A volume's slice grid: S × S, or (sliding) its whole field of view at ``pixel_size``."""
        if self.slice_window == "sliding":
            return native_grid_size(tuple(size), spacing, self.pixel_size, (self.size, self.size))
        return self.size, self.size

    def _grid(self, x: torch.Tensor, mode: str, spacing, grid: tuple) -> torch.Tensor:
        if self.pixel_size is None:  # the official whole-slice resize, as bundle.transforms.ct.NetworkGridd
            return F.interpolate(x, size=grid, mode=mode, align_corners=None if mode == "nearest" else False)
        sp = torch.tensor([spacing], dtype=torch.float64).expand(x.shape[0], 2)
        return to_network_grid(x, sp, self.pixel_size, grid, mode)[0]

    def _place(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return t.pin_memory() if torch.cuda.is_available() else t
        return t.to(self.device)

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def nbytes(self) -> int:
        parts = (self.image, self.label, self.case) + (() if self.extent is None else (self.extent,))
        return sum(t.numel() * t.element_size() for t in parts)


class SliceBatches:
    """Epochs of augmented batches from a :class:`SliceTable`, for ``SupervisedTrainer(train_data_loader=...)``.

    Args:
        table: the slice table.
        batch_size: slices per iteration (per rank under DDP).
        slices_per_epoch: slices per epoch over all ranks; ``None`` or ≤ 0: the table size (every slice once).
        augment: apply :class:`bundle.transforms.augment.BatchedAugment` (the official list).
        seed: the run's seed; epoch ``e`` is a function of (seed, e) only.
        device: where batches are built (the training device).
        rank: this process's rank under DDP.
        world_size: number of DDP processes.
        augment_members: draw only these members of the official list (default: all ten;
            :data:`bundle.transforms.augment.MEMBERS`).
        augmenter: a custom augmenter (default: ``BatchedAugment(table.size, augment_members)``).
        foreground_fraction: sliding tables: the share of patches centred on a labelled pixel
            (:class:`bundle.training.patches.PatchSampler`; nnU-Net's ⅓).
        drop_last: leave out the epoch's short last batch (as ``DataLoader(drop_last=True)``), so every batch has
            one shape and ``torch.compile`` compiles one graph (train.yaml sets it with ``compile``); the left-out
            slices differ from epoch to epoch. A rank's share smaller than one batch stays one short batch.
    """

    def __init__(
        self,
        table: SliceTable,
        batch_size: int = 20,
        slices_per_epoch: Optional[int] = None,
        augment: bool = True,
        seed: int = 0,
        device: Union[str, torch.device, None] = None,
        rank: int = 0,
        world_size: int = 1,
        augment_members: Optional[Sequence[str]] = None,
        augmenter: Optional[Any] = None,
        drop_last: bool = False,
        foreground_fraction: float = 1.0 / 3.0,
    ) -> None:
        if batch_size < 1:  # also batch_size // world_size under torchrun
            raise InputError(
                f"--batch_size gives each process {batch_size} slices: pass at least 1 (with torchrun, at least the "
                f"number of processes, {world_size})."
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"SliceBatches: need 0 ≤ rank < world_size, got {rank}, {world_size}.")
        self.table, self.batch_size, self.seed = table, int(batch_size), int(seed)
        self.slices_per_epoch = int(slices_per_epoch) if slices_per_epoch and int(slices_per_epoch) > 0 else len(table)
        self.device = torch.device(device) if device is not None else table.image.device
        self.rank, self.world_size = int(rank), int(world_size)
        self.augmenter = (augmenter or BatchedAugment(table.size, augment_members)) if augment else None
        self.drop_last = bool(drop_last)
        check_foreground_fraction(foreground_fraction)  # refused in whole-slice mode too, where it is unused
        self.patches = PatchSampler(table.size, foreground_fraction) if table.extent is not None else None
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        """Called at each epoch start (``EpochSeed``): the epoch's slices and augmentation follow from it."""
        self.epoch = int(epoch)

    def _per_rank(self) -> int:
        return math.ceil(self.slices_per_epoch / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return max(1, self._per_rank() // self.batch_size)
        return math.ceil(self._per_rank() / self.batch_size)

    def epoch_indices(self, epoch: Optional[int] = None) -> torch.Tensor:
        """Table rows of this rank for ``epoch``: its share of the stream of per-pass permutations."""
        epoch = self.epoch if epoch is None else int(epoch)
        n, per_epoch = len(self.table), self.slices_per_epoch
        need = self._per_rank() * self.world_size  # even shares: the epoch's tail wraps into the stream
        start = (epoch - 1) * per_epoch
        first, last = start // n, (start + need - 1) // n
        stream = torch.cat(
            [
                torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000003 + p))
                for p in range(first, last + 1)
            ]
        )
        offset = start - first * n
        return stream[offset : offset + need][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        rows = self.epoch_indices()
        g = torch.Generator(device=self.device).manual_seed(
            (self.seed * 7919 + self.epoch * 104729 + self.rank) % 2**63
        )
        table = self.table
        # sliding: patch positions from their own stream on the table's device (the augmentation's stays as it was)
        positions = None
        if self.patches is not None:
            positions = torch.Generator(device=table.image.device).manual_seed(
                (self.seed * 7919 + self.epoch * 104729 + self.rank + 1) % 2**63
            )
        for chunk in rows.split(self.batch_size)[: len(self)]:
            index = chunk.to(table.image.device)
            if self.patches is not None:
                image, label = self.patches(table.image, table.label, table.extent, index, positions)
            else:
                image, label = table.image.index_select(0, index), table.label.index_select(0, index)
            image = image.to(self.device, non_blocking=True).float()
            label = label.to(self.device, non_blocking=True)[:, None]
            if self.augmenter is not None:
                image, label = self.augmenter(image, label, g)
            yield {"image": (image - 0.5) / 0.5, "label": label.float()}


def _stack_padded(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` along rows; rows of different (H, W) (sliding grids) are zero-padded at the end to the largest."""
    if len({tuple(p.shape[1:]) for p in parts}) == 1:
        return torch.cat(parts)
    shape = [max(p.shape[i] for p in parts) for i in range(1, parts[0].ndim)]
    out = parts[0].new_zeros((sum(p.shape[0] for p in parts), *shape))
    start = 0
    for p in parts:
        out[(slice(start, start + p.shape[0]), *(slice(0, n) for n in p.shape[1:]))] = p
        start += p.shape[0]
    return out


def _plain(x: Any) -> torch.Tensor:
    """A float32 torch tensor without MONAI metadata (the table holds pixels only)."""
    x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    return x.to(torch.float32)


def check_augment_backend(backend: str, slice_window: str = "whole") -> str:
    """Refuses an unknown ``augment_backend`` with the options (first items of a training config's ``run``), and the
    per-sample MONAI list with sliding windows (patches are drawn from the slice table only)."""
    if backend not in AUGMENT_BACKENDS:

        raise InputError(
            f"augment_backend {backend!r} is not one of {AUGMENT_BACKENDS}: pass --augment_backend batched "
            "(slice table, augmentation on the training device) or monai (per-sample MONAI list)."
        )
    if backend == "monai" and slice_window == "sliding":
        raise InputError(
            "slice_window sliding draws its patches from the slice table: pass --augment_backend batched (the "
            "default), or --slice_window whole to train with the per-sample MONAI list."
        )
    return backend
