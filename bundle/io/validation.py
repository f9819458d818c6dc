"""Per-case checks of a loaded CT volume (and its label), before it costs anything: one 3D single-channel volume,
a usable voxel-to-world matrix, a label on the image's grid with values in range, finite intensities. Every failure
is an :class:`~bundle.errors.InputError` naming the file and the fix (catalogue: ``docs/operations.md``).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Hashable, Mapping, Optional

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform

from bundle.errors import InputError
from bundle.io.volume import output_path


def _name(data: Mapping, key: Hashable) -> str:
    value = data.get(key)
    meta = getattr(value, "meta", None)
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return str(value)


def slice_axis(affine: np.ndarray) -> int:
    """Array axis (0..2) closest to the patient's superior–inferior direction, i.e. the axial slice axis."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    axes = [i for i in range(3) if ornt[i, 0] == 2]
    return axes[0] if axes else 2


def check_affine(affine: Any, name: str) -> np.ndarray:
    """The 4×4 voxel-to-world matrix of file ``name``, refused when it cannot place voxels in the patient.

    Raises:
        InputError: non-finite entries, a zero-length voxel axis, or a singular (flat) matrix.
    """
    aff = np.asarray(affine, dtype=np.float64)
    fix = "repair the header (e.g. re-export from the DICOM, or copy a correct affine with nibabel) and run again"
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise InputError(f"image {name} has a NaN/inf or malformed voxel-to-world matrix (affine): {fix}.")
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    if (spacing < 1e-6).any():
        raise InputError(f"image {name} has zero voxel spacing {np.round(spacing, 4).tolist()} in its affine: {fix}.")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-6 * float(np.prod(spacing)):
        raise InputError(f"image {name} has a singular affine (its voxel axes are not independent): {fix}.")
    return aff


class ValidateVolumed(MapTransform):
    """Per-case checks after loading (before ``EnsureChannelFirstd``); raises :class:`InputError` naming the file.

    Checks: the image is one 3D single-channel volume (not a 2D image, 4D series, multi-channel or RGB image);
    in-plane size ≥ ``min_size``; the label has the image's shape and affine, integer values in
    ``0..num_classes-1``; non-finite intensities (NaN → the volume's finite minimum, ±inf → finite max/min, with a
    warning; an error when more than ``max_nonfinite_fraction`` of the voxels are non-finite); warnings for very
    anisotropic spacing and for uint8 images (not HU).

    Args:
        keys: image key, then an optional label key.
        num_classes: label values must lie in ``0..num_classes-1`` (``None``: not checked).
        max_nonfinite_fraction: above this fraction of NaN/inf voxels the case is refused.
        min_size: smallest in-plane size accepted.
        max_inplane_ratio: warn when the two in-plane spacings differ more than this factor.
        max_slice_ratio: warn when slice spacing / in-plane spacing exceeds this.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        num_classes: Optional[int] = 9,
        max_nonfinite_fraction: float = 0.5,
        min_size: int = 8,
        max_inplane_ratio: float = 2.0,
        max_slice_ratio: float = 10.0,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = num_classes
        self.max_nonfinite_fraction = float(max_nonfinite_fraction)
        self.min_size = int(min_size)
        self.max_inplane_ratio = float(max_inplane_ratio)
        self.max_slice_ratio = float(max_slice_ratio)

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        keys = [k for k in self.keys if k in d]
        if not keys:
            return d
        img_key = keys[0]
        d[img_key] = self._check_image(d[img_key], _name(d, img_key))
        for lab_key in keys[1:]:
            self._check_label(d[lab_key], d[img_key], _name(d, lab_key), _name(d, img_key))
        return d

    def _check_image(self, img, name):
        meta = getattr(img, "meta", {}) or {}
        shape = tuple(img.shape)
        spatial = tuple(int(s) for s in np.asarray(meta.get("spatial_shape", shape)).ravel())
        channel_dim = meta.get("original_channel_dim", "no_channel")
        has_channel = not (channel_dim is None or channel_dim == "no_channel" or _isnan(channel_dim))
        if len(spatial) == 2 and has_channel and shape[-1] in (3, 4):
            raise InputError(
                f"image {name} is a 2D RGB{'A' if shape[-1] == 4 else ''} picture {shape}: this config segments 3D "
                "CT volumes (NIfTI/NRRD/MHA/DICOM in HU); give a CT volume, or use a 2D RGB bundle config."
            )
        if len(spatial) < 3:
            raise InputError(
                f"image {name} is 2D {shape}: a 3D CT volume (H, W, slices) is expected; stack the slices into one "
                "volume (a single slice needs shape (H, W, 1))."
            )
        if has_channel or len(shape) > 3:
            n = shape[int(channel_dim)] if has_channel and not isinstance(channel_dim, str) else shape[-1]
            raise InputError(
                f"image {name} has {n} channels/time points {shape}: one single-channel 3D CT volume is expected; "
                "split a 4D series (one phase per file) or keep one channel of a multi-channel image."
            )
        affine = meta.get("affine")
        if affine is not None:
            check_affine(affine, name)
        axis = slice_axis(np.asarray(affine)) if affine is not None else 2
        if min(spatial[i] for i in range(3) if i != axis) < self.min_size:
            raise InputError(
                f"image {name} has shape {shape}: the in-plane size must be ≥ {self.min_size}; check that the file is "
                "a CT volume and not a thumbnail or a mask."
            )
        if int(np.asarray(meta.get("datatype", 0))) in (2, 128, 2304) or img.dtype == torch.uint8:  # NIfTI u8/RGB
            warnings.warn(
                f"image {name} is uint8: CT is expected in Hounsfield units (e.g. int16); is this an RGB export?"
            )
        values = torch.as_tensor(img)
        finite = torch.isfinite(values)
        bad = int(finite.numel() - finite.sum())
        if bad:
            frac = bad / finite.numel()
            if frac > self.max_nonfinite_fraction or bad == finite.numel():
                raise InputError(
                    f"image {name}: {frac:.0%} of the voxels are NaN/inf: the file is broken (failed conversion or "
                    "resampling); re-export it from the source images."
                )
            lo, hi = float(values[finite].min()), float(values[finite].max())
            warnings.warn(
                f"image {name}: {bad} NaN/inf voxels ({frac:.2%}) replaced (NaN → {lo:g}, +inf → {hi:g}, "
                f"-inf → {lo:g}); check how the file was made."
            )
            img = torch.nan_to_num(img, nan=lo, posinf=hi, neginf=lo)
        if affine is not None:
            sp, ax = np.asarray(affine_to_spacing(np.asarray(affine, dtype=np.float64), r=3)), axis
            inplane = [sp[i] for i in range(3) if i != ax]
            if min(inplane) > 0 and max(inplane) / min(inplane) > self.max_inplane_ratio:
                warnings.warn(
                    f"image {name}: in-plane spacing {inplane[0]:.3g} × {inplane[1]:.3g} mm is very anisotropic; "
                    "slices are resized to a square network input, so anatomy is distorted: resample in-plane first."
                )
            if min(inplane) > 0 and sp[ax] / min(inplane) > self.max_slice_ratio:
                warnings.warn(
                    f"image {name}: slice spacing {sp[ax]:.3g} mm vs in-plane {min(inplane):.3g} mm (ratio > "
                    f"{self.max_slice_ratio:g}); the 2D network is unaffected but 3D metrics (HD95) are coarse."
                )
        return img

    def _check_label(self, lab, img, name, img_name):
        lshape, ishape = tuple(lab.shape), tuple(img.shape)
        if lshape != ishape:
            raise InputError(
                f"label {name} has shape {lshape} but its image {img_name} has {ishape}: the label must be on the "
                f"image's grid; resample it onto the image ({resample_label_command(name, img_name)}) or pair the "
                "right files."
            )
        la, ia = getattr(lab, "affine", None), getattr(img, "affine", None)
        if la is not None and ia is not None:
            la, ia = np.asarray(la, dtype=np.float64), np.asarray(ia, dtype=np.float64)
            if not np.allclose(la, ia, rtol=1e-4, atol=1e-3):
                grid = (
                    f"label {name} has affine {np.round(la[:3], 3).tolist()} but its image {img_name} has "
                    f"{np.round(ia[:3], 3).tolist()}: the label must be on the image's grid; "
                )
                resample = (
                    f"resample the label onto the image (nearest neighbour): {resample_label_command(name, img_name)}"
                )
                lcodes, icodes = "".join(nib.aff2axcodes(la)), "".join(nib.aff2axcodes(ia))
                if lcodes != icodes:  # a header copy would mirror/transpose the label in the patient
                    raise InputError(
                        f"{grid}they are stored in different orientations (label {lcodes}, image {icodes}), so "
                        f"{resample}; never copy the image's header into the label here, it would flip the label."
                    )
                raise InputError(
                    f"{grid}{resample} (or, if the label is known to share the image's voxels and only "
                    "its header is off, copy the image's header into it)."
                )
        if self.num_classes is None:
            return
        values = torch.as_tensor(lab)
        if not torch.isfinite(values).all() or not torch.equal(values, values.round()):
            raise InputError(f"label {name} holds non-integer values: resample labels with nearest neighbour only.")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > self.num_classes - 1:
            found = torch.unique(values).to(torch.int64).tolist()
            outside = [v for v in found if v < 0 or v > self.num_classes - 1]
            raise InputError(
                f"label {name} has values {outside[:10]} outside 0..{self.num_classes - 1}: map raw BTCV ids to the 8 "
                "Synapse organs with scripts/data/prepare_synapse.py btcv, or set --num_classes to match your labels."
            )


def resample_label_command(label: str, image: str) -> str:
    """A shell command that resamples ``label`` onto ``image``'s grid (nearest neighbour, SimpleITK, any format the
    bundle reads) into ``<label>_resampled.nii.gz``: the fix offered when a label is on another grid."""
    out = output_path(label, os.path.dirname(str(label)), "resampled")
    code = (
        f"import SimpleITK as sitk; sitk.WriteImage(sitk.Resample(sitk.ReadImage({str(label)!r}), "
        f"sitk.ReadImage({str(image)!r}), sitk.Transform(), sitk.sitkNearestNeighbor, 0), {out!r})"
    )
    return f'python -c "{code}"'


def _isnan(value) -> bool:
    try:
        return bool(np.isnan(value))
    except (TypeError, ValueError):
        return False
