"""Sliding windows over axial slices at a physical pixel size (``slice_window: sliding``).

:class:`SliceWindows` samples a chunk of (N, C, H, W) slices whole onto a grid of ``pixel_size`` mm pixels
(:func:`bundle.transforms.geometry.native_grid_size`: the slice's whole field of view, at least one window), covers it
with overlapping network-sized windows -- MONAI's ``SlidingWindowInferer``, Gaussian-weighted (σ = ⅛ of the window,
nnU-Net's and MONAI's default), windows of every slice of the chunk batched together -- and returns the blended
scores on that grid with the mapping's matrices, which :class:`bundle.inferers.axial.AxialSliceInferer` inverts onto
the slice grid as in whole-slice mode.

Windows entirely outside the patient's body are not run: :func:`body_box` puts the body's bounding box
(:func:`bundle.transforms.geometry.body_mask`, the mask ``crop_body`` crops to) on the grid, widened to at least one
window, and only that box is windowed; the rest of the grid is background (scores 0, as outside the field of view in
whole-slice mode). A slice whose grid is one window (its field of view ≤ the network size × ``pixel_size``) gets the
whole-slice grid at that pixel size and a single window, so both modes give it the same scores up to float rounding.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
from monai.inferers import SlidingWindowInferer

from bundle.errors import InputError
from bundle.transforms.geometry import native_grid_size, to_network_grid

# nnU-Net's and MONAI's Gaussian: σ = ⅛ of the window, so a window's border counts ~1/3000 of its centre
SIGMA_SCALE = 0.125


def check_window_overlap(overlap: float) -> float:
    """``window_overlap`` as a float in [0, 1).

    Raises:
        InputError: anything else.
    """
    try:
        value = float(overlap)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise InputError(
            f"window_overlap {overlap!r} is not a fraction in [0, 1): give e.g. --window_overlap 0.5 (windows step "
            "by half their size, nnU-Net's choice) or 0.25 (fewer windows, faster)."
        )
    return value


def body_box(
    body: Optional[torch.Tensor], spacing: Sequence[float], pixel_size: float, grid: Sequence[int], roi: Sequence[int]
) -> Tuple[int, int, int, int]:
    """``(row0, row1, col0, col1)``: the part of a slice's ``pixel_size`` grid the windows cover.

    The bounding box of ``body`` (an (H, W) mask on the slice grid) in grid pixels, rounded outwards, then widened
    about its centre to at least ``roi`` and kept inside the grid. ``None`` or an empty mask: the whole grid.

    Args:
        body: (H, W) boolean mask on the slice grid, or ``None``.
        spacing: slice (row, column) pixel size in mm.
        pixel_size: grid pixel size in mm.
        grid: grid (rows, columns) from :func:`bundle.transforms.geometry.native_grid_size`.
        roi: network window (rows, columns).
    """
    if body is None or not bool(body.any()):
        return 0, int(grid[0]), 0, int(grid[1])
    box = []
    for axis, (n, sp, g, r) in enumerate(zip(body.shape, spacing, grid, roi)):
        inside = torch.nonzero(body.any(dim=1 - axis)).flatten()
        offset = (g * pixel_size - n * float(sp)) / 2.0  # the grid is centred on the slice (network_grid_theta)
        lo = math.floor((int(inside[0]) * sp + offset) / pixel_size)
        hi = math.ceil(((int(inside[-1]) + 1) * sp + offset) / pixel_size)
        lo, hi = max(lo, 0), min(hi, g)
        if hi - lo < r:  # at least one window, centred on the body, inside the grid
            lo = min(max((lo + hi - r) // 2, 0), g - r)
            hi = lo + r
        box += [int(lo), int(hi)]
    return tuple(box)


class SliceWindows:
    """Overlapping network-sized windows over slices sampled at ``pixel_size`` (see the module docstring).

    Args:
        roi_size: network window (rows, columns).
        pixel_size: grid pixel size in mm.
        sw_batch_size: windows per forward pass (windows of all slices of a chunk are batched together).
        overlap: fraction of a window shared with its neighbour along each axis (MONAI's ``overlap``).
    """

    def __init__(self, roi_size: Sequence[int], pixel_size: float, sw_batch_size: int = 8, overlap: float = 0.5):
        self.roi_size = tuple(int(s) for s in roi_size)
        self.pixel_size = float(pixel_size)
        self.overlap = check_window_overlap(overlap)
        self.inferer = SlidingWindowInferer(
            roi_size=self.roi_size,
            sw_batch_size=int(sw_batch_size),
            overlap=self.overlap,
            mode="gaussian",
            sigma_scale=SIGMA_SCALE,
            padding_mode="constant",
            cval=0.0,  # never used: the grid is at least one window; 0 is air after the HU window
            cache_roi_weight_map=True,
        )

    def grid_size(self, size: Sequence[int], spacing: Sequence[float]) -> tuple:
        """The ``pixel_size`` grid of a slice of ``size`` pixels of ``spacing`` mm."""
        return native_grid_size(size, spacing, self.pixel_size, self.roi_size)

    def __call__(
        self,
        x: torch.Tensor,
        spacing: Sequence[float],
        predictor: Callable[[torch.Tensor], torch.Tensor],
        box: Optional[Tuple[int, int, int, int]] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Blended scores of (N, C, H, W) slices of one volume (pixel size ``spacing``) on their ``pixel_size`` grid.

        Args:
            x: the slices, on the device the predictor runs on.
            spacing: their (row, column) pixel size in mm.
            predictor: (n, C, roi) windows → (n, K, roi) scores.
            box: the part of the grid to window (:func:`body_box`); ``None``: all of it.

        Returns:
            ``(scores, theta)``: (N, K, rows, columns) scores on the grid, 0 outside ``box``; (N, 2, 3) matrices of
            the slice → grid mapping (:func:`bundle.transforms.geometry.to_network_grid`).
        """
        size = self.grid_size(x.shape[-2:], spacing)
        sp = torch.as_tensor(spacing, dtype=torch.float64).reshape(1, 2).expand(x.shape[0], 2)
        grid, theta = to_network_grid(x, sp, self.pixel_size, size, "bicubic")
        r0, r1, c0, c1 = box if box is not None else (0, size[0], 0, size[1])
        # blended in the grid's float32 (MONAI accumulates in the input's dtype), also under an evaluator's autocast
        scores = self.inferer(grid[..., r0:r1, c0:c1], predictor)
        if (r0, r1, c0, c1) != (0, size[0], 0, size[1]):
            full = scores.new_zeros((*scores.shape[:2], *size))
            full[..., r0:r1, c0:c1] = scores
            scores = full
        return scores, theta
