"""Network-sized training patches from whole slices at a physical pixel size (``slice_window: sliding``).

A :class:`bundle.training.slice_table.SliceTable` built with ``slice_window="sliding"`` holds every slice whole on its
``pixel_size`` grid (:func:`bundle.transforms.geometry.native_grid_size`, at least the network size), padded to the
table's largest grid. :class:`PatchSampler` cuts one network-sized patch from each row of a batch, on the table's
device, by index arithmetic (no copy of whole slices):

* with probability ``foreground_fraction`` the patch contains a random labelled pixel of its slice, centred on it
  where the slice allows (nnU-Net's foreground oversampling; it uses ⅓): small organs are seen far more often than
  their area in the slices would give. A slice without labels gets a random patch instead.
* otherwise anywhere in the slice, uniformly.

The patches then go through the batched augmentation unchanged (:class:`bundle.transforms.augment.BatchedAugment`).
"""

from __future__ import annotations

from typing import Tuple

import torch

from bundle.errors import InputError


def check_foreground_fraction(fraction: float) -> float:
    """``foreground_patch_fraction`` as a float in [0, 1].

    Raises:
        InputError: anything else.
    """
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise InputError(
            f"foreground_patch_fraction {fraction!r} is not a fraction in [0, 1]: give e.g. "
            "--foreground_patch_fraction 0.333 (a third of the patches on a labelled pixel, as nnU-Net)."
        )
    return value


class PatchSampler:
    """Draws one ``size`` × ``size`` patch per table row (see the module docstring).

    Args:
        size: patch size S (the network's).
        foreground_fraction: probability that a patch is centred on a random labelled pixel of its slice.
    """

    def __init__(self, size: int = 224, foreground_fraction: float = 1.0 / 3.0) -> None:
        self.size = int(size)
        self.foreground_fraction = check_foreground_fraction(foreground_fraction)

    def corners(
        self, label: torch.Tensor, extent: torch.Tensor, rows: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """(B, 2) top-left (row, column) of each row's patch.

        Args:
            label: the table's (N, H, W) labels.
            extent: the table's (N, 2) grid sizes (each row's slice occupies ``[:rows, :columns]``).
            rows: (B,) table rows, on ``label``'s device.
            generator: the draws' generator (on ``label``'s device).
        """
        device, s = label.device, self.size
        span = extent.index_select(0, rows).to(device) - s + 1  # (B, 2) valid top-left positions per axis
        corner = (torch.rand(rows.shape[0], 2, device=device, generator=generator) * span).long()
        chosen = torch.rand(rows.shape[0], device=device, generator=generator) < self.foreground_fraction
        if bool(chosen.any()):
            fg_rows = rows[chosen]
            labelled = label.index_select(0, fg_rows).flatten(1) > 0  # (F, H·W)
            has = labelled.any(1)
            # a slice without labels: uniform weights (its random corner is kept below)
            pick = torch.multinomial(torch.where(has[:, None], labelled, True).float(), 1, generator=generator)[:, 0]
            centre = torch.stack([pick // label.shape[-1], pick % label.shape[-1]], 1)
            centred = torch.minimum((centre - s // 2).clamp_min(0), span[chosen] - 1)
            corner[chosen] = torch.where(has[:, None], centred, corner[chosen])
        return corner

    def __call__(
        self,
        image: torch.Tensor,
        label: torch.Tensor,
        extent: torch.Tensor,
        rows: torch.Tensor,
        generator: torch.Generator,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, C, S, S) image and (B, S, S) label patches of table ``rows`` (on the table's device).

        Args:
            image: the table's (N, C, H, W) images.
            label: the table's (N, H, W) labels.
            extent: the table's (N, 2) grid sizes.
            rows: (B,) table rows.
            generator: the draws' generator (on the table's device).
        """
        corner = self.corners(label, extent, rows, generator)
        offsets = torch.arange(self.size, device=image.device)
        r = (corner[:, 0, None] + offsets)[:, :, None]  # (B, S, 1)
        c = (corner[:, 1, None] + offsets)[:, None, :]  # (B, 1, S)
        b = rows[:, None, None]
        patches = image.permute(0, 2, 3, 1)[b, r, c].permute(0, 3, 1, 2)  # (B, S, S, C) gathered, then channels first
        return patches, label[b, r, c]
