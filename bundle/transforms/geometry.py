"""Where a CT volume's voxels lie in the patient, and how an axial slice reaches the 224² network grid.

Four settings decide what the network sees; training saves them with every checkpoint (``"geometry"`` entry) and
inference and evaluation apply the checkpoint's own (:func:`checkpoint_geometry`):

* ``axcodes`` -- the canonical storage order every volume is turned into before slicing (MONAI ``Orientationd``:
  flips and axis permutations only, never a resampling). The letters name where each array axis points
  (nibabel/MONAI convention): the default ``"PLS"`` puts rows toward the patient's posterior and columns toward the
  patient's left -- the radiological axial view -- and slices last. It is the layout of TransUNet's preprocessed
  Synapse slices that the official MSA²Net weights were trained on (evidence in ``docs/orientation.md``), so
  converted official weights see what they were trained on, whatever order a file is stored in.
* ``pixel_size`` -- ``None`` (the official recipe): every slice is resized whole to the network grid, so the
  network's pixel size is the slice's field of view / 224. A number ``p`` (mm): each slice is sampled onto a
  224 × 224 grid of ``p`` mm pixels centred on the slice centre (field of view ``224·p`` mm, cropped or padded with
  air), in one interpolation, so scans of any pixel size and field of view look alike to the network.
* ``crop_body`` -- ``False`` (official): the network grid is centred on the scan's field of view. ``True``: each
  volume is first cropped in-plane to the patient's body (MONAI ``CropForegroundd`` with :func:`body_mask`;
  invertible, every slice kept), so the grid is centred on the patient wherever the scanner put them. A model
  trained on few patients reads absolute position in the grid (on the demo, shifting held-out slices by 33 mm drops
  their Dice from 0.77 to 0.23), so this is what lets it carry to a scan framed differently.
* ``slice_window`` -- ``"whole"`` (official): one network grid per slice, as above. ``"sliding"`` (needs
  ``pixel_size``): each slice is sampled whole onto a grid of ``pixel_size`` mm pixels (:func:`native_grid_size`:
  its whole field of view, at least the network size), training draws network-sized patches from it and inference
  covers it with overlapping network-sized windows (:class:`bundle.inferers.axial.AxialSliceInferer`), so no part of
  a large field of view is cut off at a fine pixel size (``docs/orientation.md``).

:func:`to_network_grid` (anti-aliasing + the :func:`network_grid_theta` sampling) is the one mapping from a slice to
a physical-pixel-size network grid; the training transform (:class:`bundle.transforms.ct.NetworkGridd`), the slice table
(:class:`bundle.training.slice_table.SliceTable`) and the volume inferer (:class:`bundle.inferers.axial.AxialSliceInferer`, which
inverts it) all use it, so training and inference cannot drift apart.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from monai.data.utils import affine_to_spacing

from bundle.errors import InputError
from bundle.io.checkpoint import read_checkpoint
from bundle.transforms.postprocess import keep_largest_component

DEFAULT_AXCODES = "PLS"
FROM_CHECKPOINT = "checkpoint"  # inference/evaluation value: apply what the checkpoint was trained with
SLICE_WINDOWS = ("whole", "sliding")


_PAIRS = ("LR", "AP", "SI")


def check_axcodes(axcodes: Any) -> str:
    """Returns ``axcodes`` upper-cased after checking the rule: three letters, one of each pair L/R, A/P, S/I, with
    S or I last (slices stay along the last axis).

    Raises:
        InputError: the rule is broken.
    """
    code = str(axcodes).upper()
    pairs = sorted(next((p for p in _PAIRS if c in p), "?") for c in code)
    if len(code) != 3 or pairs != sorted(_PAIRS) or code[2] not in "SI":
        raise InputError(
            f"axcodes {axcodes!r} is not a storage order this bundle slices: give three letters, one of L/R, one of "
            "A/P and S or I last (e.g. --axcodes PLS, the default and the official weights' order)."
        )
    return code


def check_pixel_size(pixel_size: Any) -> Optional[float]:
    """``None`` (whole-slice resize, the official recipe) or a positive float in mm.

    Raises:
        InputError: not a positive finite number.
    """
    if pixel_size is None or (isinstance(pixel_size, str) and pixel_size.lower() in ("none", "null", "")):
        return None
    try:
        value = float(pixel_size)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise InputError(
            f"pixel_size {pixel_size!r} is not a positive size in mm: give e.g. --pixel_size 1.6, or $None to resize "
            "whole slices to the network grid (the official recipe)."
        )
    return value


def check_crop_body(crop_body: Any) -> bool:
    """``crop_body`` as a bool (``True``/``False`` or their strings).

    Raises:
        InputError: anything else.
    """
    if isinstance(crop_body, str) and crop_body.strip().lower() in ("true", "false"):
        return crop_body.strip().lower() == "true"
    if not isinstance(crop_body, bool):
        raise InputError(
            f"crop_body {crop_body!r} is not true or false: give --crop_body True (centre the network grid on the "
            "patient's body) or --crop_body False (on the scan's field of view, the official recipe)."
        )
    return crop_body


def check_slice_window(slice_window: Any, pixel_size: Optional[float]) -> str:
    """``"whole"`` or ``"sliding"``; sliding windows need a physical ``pixel_size`` (checked already).

    Raises:
        InputError: another value, or ``sliding`` without a pixel size.
    """
    value = str(slice_window).strip().lower()
    if value not in SLICE_WINDOWS:
        raise InputError(
            f"slice_window {slice_window!r} is not whole or sliding: give --slice_window whole (each slice on one "
            "network grid, the official recipe) or --slice_window sliding (each slice at --pixel_size, covered by "
            "overlapping network-sized windows)."
        )
    if value == "sliding" and pixel_size is None:
        raise InputError(
            "slice_window sliding samples each slice at a physical pixel size: give it one, e.g. --pixel_size 1.0 "
            "(or --slice_window whole to resize whole slices to the network grid, the official recipe)."
        )
    return value


def body_mask(image: Any, threshold: float = 0.0) -> torch.Tensor:
    """Where the patient's body is, for ``CropForegroundd(select_fn=body_mask)``: on every slice the largest
    connected region of ``image > threshold`` (windowed CT: HU above -125, so air and noise are out and a table or
    arms apart from the trunk are dropped), united over the slices whose region is at least a quarter of the largest,
    and repeated on every slice, so the crop is in-plane only and every slice is kept.

    Regions are found slice by slice, not on the slices' combined footprint: an arm lying beside the trunk overlaps
    the trunk's outline on other slices (breathing, the body's taper), so in the combined footprint it joins the
    trunk and moves the crop off centre (the demo's DICOM series: 32 mm).

    Args:
        image: (C, H, W, D) windowed CT in [0, 1].
        threshold: the body's lower bound in window units.

    Returns:
        A (C, H, W, D) boolean mask; everywhere True when nothing exceeds the threshold (a blank scan is not cropped).
    """
    x = torch.as_tensor(image)
    above = (x[0] > threshold).cpu().numpy()
    if not above.any():
        return torch.ones_like(x, dtype=torch.bool)
    # each slice's largest 4-connected region
    regions = [
        keep_largest_component(footprint[None].astype(np.uint8), applied_labels=(1,), connectivity=1)[0] == 1
        for footprint in np.moveaxis(above, -1, 0)
        if footprint.any()
    ]
    sizes = [int(r.sum()) for r in regions]
    # a slice past the patient (only the table, or a hand) must not pull the crop: regions under a quarter of the
    # largest one add nothing (the trunk's own slices cover the neck's or a leg's in-plane extent anyway)
    largest = max(sizes)
    body = np.logical_or.reduce([r for r, size in zip(regions, sizes) if 4 * size >= largest])
    return torch.as_tensor(body, device=x.device)[None, :, :, None].expand_as(x)


class Geometry:
    """The storage order, network pixel size, field-of-view centre and slice windowing a network is trained and
    applied with; saved in checkpoints.

    Has ``state_dict`` / ``load_state_dict``, so it goes into a ``CheckpointSaver``'s ``save_dict`` beside the
    model. Loading a checkpoint made with other settings refuses with the options to pass (a resumed run must not
    change what the network sees halfway).

    Args:
        axcodes: canonical storage order (:func:`check_axcodes`).
        pixel_size: network pixel size in mm, or ``None`` (:func:`check_pixel_size`).
        crop_body: crop each volume in-plane to the patient's body first (:func:`body_mask`), so the network grid
            is centred on the patient, not on the scanner's field of view; ``False``: the official recipe.
        slice_window: ``"whole"`` (one network grid per slice, the official recipe) or ``"sliding"`` (each slice
            whole at ``pixel_size``, network-sized patches in training and overlapping windows in inference).

    Examples::

        >>> Geometry("PLS", 1.6).state_dict()
        {'axcodes': 'PLS', 'pixel_size': 1.6, 'crop_body': False, 'slice_window': 'whole'}
    """

    def __init__(
        self,
        axcodes: str = DEFAULT_AXCODES,
        pixel_size: Optional[float] = None,
        crop_body: bool = False,
        slice_window: str = "whole",
    ):
        self.axcodes = check_axcodes(axcodes)
        self.pixel_size = check_pixel_size(pixel_size)
        self.crop_body = check_crop_body(crop_body)
        self.slice_window = check_slice_window(slice_window, self.pixel_size)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "Geometry":
        # checkpoints made before slice_window existed were trained on whole slices
        return cls(
            state.get("axcodes", DEFAULT_AXCODES),
            state.get("pixel_size"),
            state.get("crop_body", False),
            state.get("slice_window", "whole"),
        )

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in ("axcodes", "pixel_size", "crop_body", "slice_window")}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        other = Geometry.from_state(state)
        if other != self:
            raise InputError(
                f"the checkpoint was trained with {other.describe()} but this run is set to {self.describe()}: "
                f"resume with {other.options()} (or start a new run in another --output_dir)."
            )

    def describe(self) -> str:
        size = "whole-slice resize" if self.pixel_size is None else f"pixel_size {self.pixel_size:g} mm"
        return f"axcodes {self.axcodes}, {size}, crop_body {self.crop_body}, slice_window {self.slice_window}"

    def options(self) -> str:
        size = "$None" if self.pixel_size is None else f"{self.pixel_size:g}"
        return (
            f"--axcodes {self.axcodes} --pixel_size {size} --crop_body {self.crop_body} "
            f"--slice_window {self.slice_window}"
        )

    def metadata(self) -> dict:
        """The fields ``metadata.json`` states under ``network_data_format.inputs.image`` (read by
        ``configs/inference_ts.yaml``, written by ``scripts/model/export_torchscript.py`` and the zip packager)."""
        return {"pixel_size_mm" if key == "pixel_size" else key: v for key, v in self.state_dict().items()}

    @property
    def official(self) -> bool:
        """Whole-slice resize without a body crop: the only geometry MONAI's own transforms (``.ts`` path) apply."""
        return self.pixel_size is None and not self.crop_body

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Geometry) and other.state_dict() == self.state_dict()

    def __repr__(self) -> str:
        return (
            f"Geometry(axcodes={self.axcodes!r}, pixel_size={self.pixel_size!r}, crop_body={self.crop_body!r}, "
            f"slice_window={self.slice_window!r})"
        )


def metadata_with_geometry(meta: Mapping[str, Any], geometry: Geometry) -> dict:
    """A copy of the bundle's ``metadata.json`` dict that states ``geometry``: the input's ``axcodes``,
    ``pixel_size_mm``, ``crop_body`` and ``slice_window`` fields and the end of ``image_classes`` (from "axial slices" on), which says
    how a slice reaches the network, for a model trained with that geometry."""
    import copy

    out = copy.deepcopy(dict(meta))
    out["network_data_format"]["inputs"]["image"].update(geometry.metadata())
    if geometry.pixel_size is None:
        grid = "axial slices resized whole to 224x224 (pixel_size: none)"
    elif geometry.slice_window == "sliding":
        size = f"{geometry.pixel_size:g}"
        grid = f"axial slices sampled whole at {size} mm pixels, overlapping 224x224 windows (pixel_size: {size})"
    else:
        size = f"{geometry.pixel_size:g}"
        grid = f"axial slices sampled at {size} mm pixels onto 224x224, centred (pixel_size: {size})"
    if geometry.crop_body:
        grid = "each volume cropped in-plane to the patient's body first (crop_body), " + grid
    text = str(out.get("image_classes", ""))
    if "axial slices" in text:
        out["image_classes"] = text[: text.index("axial slices")] + grid
    if geometry.axcodes != DEFAULT_AXCODES:
        out["image_classes"] = out["image_classes"].replace(
            "reoriented to PLS (rows toward posterior, columns toward the patient's left; flips/permutations only)",
            f"reoriented to {geometry.axcodes} (flips/permutations only)",
        )
    return out


def _saved_geometry(path: str) -> Optional[Geometry]:
    if not os.path.isfile(path):  # not there yet (config checks before training): the checkpoint loader says so later
        return None
    ckpt = read_checkpoint(path, map_location="cpu", mmap=True)
    state = ckpt.get("geometry") if isinstance(ckpt, Mapping) else None
    return Geometry.from_state(state) if state else None  # a bare state dict (official weights): no constraint


def checkpoint_geometry(
    ckpt_path: Optional[str] = None,
    ckpt_paths: Sequence[str] = (),
    axcodes: str = FROM_CHECKPOINT,
    pixel_size: Union[float, str, None] = FROM_CHECKPOINT,
    crop_body: Union[bool, str] = FROM_CHECKPOINT,
    slice_window: str = FROM_CHECKPOINT,
) -> Geometry:
    """The geometry to apply a checkpoint (or an ensemble) with: the one saved in it, checked against overrides.

    A checkpoint without a ``geometry`` entry (converted official weights, older files) gets the official one
    (``PLS``, whole-slice resize, no body crop, whole slices). An explicit ``axcodes`` / ``pixel_size`` /
    ``crop_body`` / ``slice_window`` must agree with a saved one.

    Args:
        ckpt_path: the single checkpoint (used when ``ckpt_paths`` is empty).
        ckpt_paths: ensemble members; all must have been trained with the same geometry.
        axcodes: ``"checkpoint"`` or an explicit order.
        pixel_size: ``"checkpoint"``, ``None`` or mm.
        crop_body: ``"checkpoint"`` or a bool.
        slice_window: ``"checkpoint"``, ``"whole"`` or ``"sliding"``.

    Raises:
        InputError: members disagree, or an explicit setting contradicts the checkpoint.
    """
    paths = [str(p) for p in (ckpt_paths or [])] or ([str(ckpt_path)] if ckpt_path else [])
    saved = {p: _saved_geometry(p) for p in paths}
    found = {p: g for p, g in saved.items() if g is not None}
    if len({repr(g) for g in found.values()}) > 1:
        listing = "; ".join(f"{p}: {g.describe()}" for p, g in found.items())
        raise InputError(
            f"the ensemble's checkpoints were trained with different geometries ({listing}): "
            "ensemble only checkpoints trained alike."
        )
    base = next(iter(found.values()), Geometry())
    wanted = Geometry(
        base.axcodes if axcodes == FROM_CHECKPOINT else axcodes,
        base.pixel_size if pixel_size == FROM_CHECKPOINT else pixel_size,
        base.crop_body if crop_body == FROM_CHECKPOINT else crop_body,
        base.slice_window if slice_window == FROM_CHECKPOINT else slice_window,
    )
    if found and wanted != base:
        path = next(iter(found))
        raise InputError(
            f"checkpoint {path} was trained with {base.describe()}, but {wanted.describe()} was asked for: drop "
            f"--axcodes/--pixel_size/--crop_body/--slice_window (the checkpoint's own are applied) or pass "
            f"{base.options()}."
        )
    return wanted


def inplane_spacing(affine: Any) -> tuple:
    """(row, column) pixel size in mm of the first two array axes of a 2D (3×3) or 3D (4×4) affine."""
    aff = np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=np.float64)
    spacing = affine_to_spacing(aff, r=len(aff) - 1, dtype=np.float64)
    return float(spacing[0]), float(spacing[1])


def network_grid_theta(
    size: Sequence[int], spacing: Sequence[float], pixel_size: float, roi: Sequence[int]
) -> torch.Tensor:
    """``F.affine_grid`` matrix (2×3, align_corners=False) sampling a slice onto ``roi`` pixels of ``pixel_size`` mm.

    Output normalised coordinate ``u`` (per axis, in [-1, 1] across the roi) reads the slice at ``u · s`` where
    ``s = roi·pixel_size / (size·spacing)`` is the roi's extent over the slice's, both centred. ``s > 1`` pads
    (the slice is smaller than the field of view), ``s < 1`` crops. The inverse mapping is ``diag(1/s)``.

    Args:
        size: slice (rows, columns) in pixels.
        spacing: slice (row, column) pixel size in mm.
        pixel_size: network pixel size in mm.
        roi: network grid (rows, columns).
    """
    s_rows = roi[0] * pixel_size / (size[0] * spacing[0])
    s_cols = roi[1] * pixel_size / (size[1] * spacing[1])
    # affine_grid's first output coordinate is x (columns), the second y (rows)
    return torch.tensor([[s_cols, 0.0, 0.0], [0.0, s_rows, 0.0]], dtype=torch.float32)


def native_grid_size(size: Sequence[int], spacing: Sequence[float], pixel_size: float, minimum: Sequence[int]) -> tuple:
    """(rows, columns) of the ``pixel_size`` grid that holds a whole slice (``slice_window: sliding``).

    Each axis gets ``ceil(size · spacing / pixel_size)`` pixels, so the slice's whole field of view is inside (the
    grid is centred on the slice, as :func:`network_grid_theta`; the fraction of a pixel left over pads with air),
    and at least ``minimum`` (the network size): a slice smaller than one window is padded to it, which makes the
    grid of such a slice the ``slice_window: whole`` grid at the same pixel size.

    Args:
        size: slice (rows, columns) in pixels.
        spacing: slice (row, column) pixel size in mm.
        pixel_size: grid pixel size in mm.
        minimum: the network grid (rows, columns).
    """
    # a thousandth of a pixel of tolerance: affines are often float32 (50 pixels of 0.8f mm are 80.000002 mm), and
    # 80 pixels of 0.5 mm hold them; the extra pixel would only be padding
    return tuple(
        max(int(math.ceil(n * float(sp) / pixel_size - 1e-3)), int(m)) for n, sp, m in zip(size, spacing, minimum)
    )


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, axis: int, truncate: float = 3.0) -> torch.Tensor:
    """Separable Gaussian along ``axis`` (-2 rows, -1 columns) of (N, C, H, W), one σ (pixels) per sample, zero
    padding, kernel radius ``ceil(truncate · max σ)``; σ = 0 leaves a sample unchanged."""
    radius = int(math.ceil(truncate * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    weights = torch.exp(-0.5 * (offsets[None] / sigma.to(x).clamp_min(1e-6)[:, None]) ** 2)
    weights = weights / weights.sum(1, keepdim=True)  # (N, K); σ = 0 → a unit impulse
    n, c = x.shape[:2]
    kernel = (
        weights.repeat_interleave(c, 0)[:, None, :, None]
        if axis == -2
        else weights.repeat_interleave(c, 0)[:, None, None, :]
    )
    padding = (radius, 0) if axis == -2 else (0, radius)
    out = torch.nn.functional.conv2d(x.reshape(1, n * c, *x.shape[-2:]), kernel, padding=padding, groups=n * c)
    return out.reshape(x.shape)


def to_network_grid(
    x: torch.Tensor, spacing: torch.Tensor, pixel_size: float, roi: Sequence[int], mode: str = "bicubic"
) -> tuple:
    """Samples (N, C, H, W) slices onto ``roi`` pixels of ``pixel_size`` mm (:func:`network_grid_theta`).

    Images (``mode`` other than nearest) are low-passed first where the network pixel is larger than the slice's:
    a Gaussian of σ = (pixel_size / spacing − 1) / 2 pixels per axis (scikit-image's anti-aliasing rule), so a
    0.7 mm scan shown at 2 mm is not a noisy, aliased picture the network never saw in training.

    Args:
        x: slices.
        spacing: (N, 2) row/column pixel size in mm per slice.
        pixel_size: network pixel size in mm.
        roi: network grid (rows, columns).
        mode: ``grid_sample`` mode (``bicubic`` images, ``nearest`` labels).

    Returns:
        ``(sampled, theta)``, ``theta`` (N, 2, 3) for the inverse mapping.
    """
    spacing = torch.as_tensor(spacing, dtype=torch.float64).reshape(-1, 2)
    h, w = x.shape[-2:]
    theta = torch.stack([network_grid_theta((h, w), tuple(sp.tolist()), pixel_size, roi) for sp in spacing]).to(
        x.device
    )
    # in x's dtype even inside an inferer's autocast: a bf16/fp16 grid is up to ~1 px off at a 512 slice's edge
    with torch.autocast(x.device.type, enabled=False):
        if mode != "nearest":
            sigma = ((pixel_size / spacing - 1.0) / 2.0).clamp_min(0.0).to(torch.float32)
            for axis, column in ((-2, 0), (-1, 1)):
                if float(sigma[:, column].max()) > 0.0:
                    x = gaussian_blur(x, sigma[:, column].to(x.device), axis)
        grid = torch.nn.functional.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], *roi], align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False), theta


def reorient_array(array: Any, affine: Any, axcodes: str = DEFAULT_AXCODES) -> np.ndarray:
    """``array`` (3D, voxel order of ``affine``) flipped/permuted into ``axcodes`` order (nibabel; no resampling).

    With the default ``PLS``, ``imshow(out[:, :, z])`` is the radiological axial view: anterior at the top, the
    patient's left on the image's right, whatever order the file was stored in.
    """
    import nibabel as nib

    current = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    target = nib.orientations.axcodes2ornt(tuple(check_axcodes(axcodes)))
    return nib.orientations.apply_orientation(np.asarray(array), nib.orientations.ornt_transform(current, target))
