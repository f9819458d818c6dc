"""CT preprocessing, slice sampling from cached volumes and the MSA²Net augmentation list, as MONAI transforms.

The volume stage (load, HU window) is deterministic and cached by ``CacheDataset``; the slice stage (sample axial
slices, resize to 224², augment, normalise) runs every iteration. Axial = the last array axis as MONAI loads
NIfTI/NRRD/DICOM (``[C, H, W, D]``) after :class:`AxialLastd` has moved the array axis closest to the patient's
superior–inferior direction last (a no-op for axial scans; a sagittal or coronal acquisition is sliced axially,
and :class:`RestoreAxesd` puts predictions back in the input's axis order). Nothing is resampled or flipped, so
labels stay on the image grid. Every case is checked by ``bundle.validation`` (see ``docs/operations.md``).

Augmentation (official ``iaa.SomeOf((0, 4), [...], random_order=True)``, ``msa2net_official.md`` §6.1), each
member always applied when drawn:

================================  ==============================================================================
official imgaug                   here (on the [0, 1] slice at 224², before normalisation)
================================  ==============================================================================
Flipud(0.5), Fliplr(0.5)          ``RandFlipd(prob=0.5)`` on each in-plane axis
AdditiveGaussianNoise(1.275)      ``RandGaussianNoised(std=0.005)``: **fixed**; 1.275 = 0.005·255 assumed uint8
GaussianBlur(σ=1)                 ``RandGaussianSmoothd(σ=1)``
LinearContrast((0.5, 1.5))        ``RandScaleIntensityd(factors=±0.5)``: v′ = α·v, α ∈ [0.5, 1.5] (imgaug centre 0)
Affine(scale (0.5, 2) per axis)   ``RandAffined(scale_range=(-0.5, 1))`` per axis (MONAI scales the sampling grid)
Affine(rotate ±40°)               ``RandAffined(rotate_range=40°)``
Affine(shear ±16°)                ``RandAffined(shear_range=tan 16°)`` on one axis
PiecewiseAffine(0.008–0.03)       ``Rand2DElasticd`` (spacing = size/4, offsets 0.008–0.03 × size): a stand-in
Affine(translate ±20 %)           ``RandAffined(translate_range=0.2 × size)``
================================  ==============================================================================

Image interpolation bilinear with zero fill (as imgaug order 1, cval 0), labels nearest. Differences on
purpose: augmentation runs after the resize to 224² (cheaper; official: at 512² before the zoom), and MONAI's
per-transform RNG is seeded per DataLoader worker and epoch, which fixes the official repeated imgaug stream.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Hashable, Mapping, Optional, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Rand2DElasticd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandSpatialCropSamplesd,
    Resized,
    ScaleIntensityRanged,
    SomeOf,
    SqueezeDimd,
)

from .validation import LoadVolumed, ValidateVolumed, slice_axis

__all__ = [
    "HU_WINDOW",
    "AxialLastd",
    "RestoreAxesd",
    "ct_volume_transforms",
    "slice_transforms",
    "augmentation",
    "normalise",
]

HU_WINDOW = (-125.0, 275.0)
_PERM_KEY = "axial_permutation"  # meta entry "i,j,k": output axis n holds input axis perm[n]


class AxialLastd(MapTransform):
    """Moves the array axis closest to superior–inferior (from the image affine) last, on every key.

    Axial scans are unchanged. The permutation is recorded in the image meta (``axial_permutation``) and the meta
    affine is updated, so :class:`RestoreAxesd` can give predictions the input's axis order back. Runs after
    ``EnsureChannelFirstd`` on (C, X, Y, Z) arrays; no resampling, no flips.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        keys = [k for k in self.key_iterator(d)]
        if not keys:
            return d
        affine = getattr(d[keys[0]], "affine", None)
        axis = slice_axis(np.asarray(affine)) if affine is not None else 2
        perm = [a for a in range(3) if a != axis] + [axis]
        for key in keys:
            img = d[key]
            if perm != [0, 1, 2]:
                img = img.permute(0, *[p + 1 for p in perm])
                if hasattr(img, "meta"):
                    aff = torch.as_tensor(img.meta["affine"]).clone()
                    aff[:, :3] = aff[:, perm]
                    img.meta["affine"] = aff
            if hasattr(img, "meta"):
                img.meta[_PERM_KEY] = ",".join(str(p) for p in perm)
            d[key] = img
        return d


class RestoreAxesd(MapTransform):
    """Inverse of :class:`AxialLastd` for predictions that carry its ``axial_permutation`` meta (C, ..., ...)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            perm = getattr(img, "meta", {}).get(_PERM_KEY)
            if isinstance(perm, (list, tuple)):  # collated meta
                perm = perm[0]
            if not perm or perm == "0,1,2":
                continue
            order = [int(p) for p in str(perm).split(",")]
            inverse = list(np.argsort(order))
            img = img.permute(0, *[int(i) + 1 for i in inverse])
            if hasattr(img, "meta"):
                aff = torch.as_tensor(img.meta["affine"]).clone()
                aff[:, :3] = aff[:, [int(i) for i in inverse]]
                img.meta["affine"] = aff
                img.meta[_PERM_KEY] = "0,1,2"
            d[key] = img
        return d


def ct_volume_transforms(
    keys: Sequence[str] = ("image", "label"),
    reader: str | None = None,
    num_classes: Optional[int] = 9,
    validate: bool = True,
    reorient: bool = True,
) -> Compose:
    """Deterministic volume stage: load, check, channel first, axial last, HU window [-125, 275] → [0, 1] (clipped).

    Args:
        keys: image key first, then an optional label key.
        reader: MONAI reader name (``ITKReader`` for DICOM series folders), ``None`` for MONAI's choice.
        num_classes: labels must lie in ``0..num_classes-1`` (``bundle.validation.ValidateVolumed``).
        validate: run the per-case checks (clear errors for bad files; NaN/inf replaced with a warning).
        reorient: slice along the superior–inferior axis whatever the storage order (:class:`AxialLastd`).

    Returns:
        The Compose (cacheable).
    """
    keys = list(keys)
    steps = [LoadVolumed(keys=keys, reader=reader, image_only=True)]
    if validate:
        steps.append(ValidateVolumed(keys=keys, num_classes=num_classes))
    steps.append(EnsureChannelFirstd(keys=keys))
    if reorient:
        steps.append(AxialLastd(keys=keys))
    steps += [
        ScaleIntensityRanged(keys=keys[0], a_min=HU_WINDOW[0], a_max=HU_WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
        EnsureTyped(keys=keys, dtype="float32", track_meta=True),
    ]
    return Compose(steps)


def augmentation(size: int = 224, keys: Sequence[str] = ("image", "label")) -> SomeOf:
    """The official augmentation list: 0–4 distinct members in random order (see the module docstring).

    Args:
        size: in-plane size of the slices it receives.
        keys: image key, then label key.

    Returns:
        A ``SomeOf`` transform on (C, H, W) dict samples.
    """
    img, lab = keys[0], keys[1]
    both, modes = [img, lab], ["bilinear", "nearest"]
    affine = dict(keys=both, prob=1.0, mode=modes, padding_mode="zeros")
    members = [
        RandFlipd(keys=both, prob=0.5, spatial_axis=0),
        RandFlipd(keys=both, prob=0.5, spatial_axis=1),
        RandGaussianNoised(keys=img, prob=1.0, mean=0.0, std=0.005, sample_std=False),
        RandGaussianSmoothd(keys=img, prob=1.0, sigma_x=(1.0, 1.0), sigma_y=(1.0, 1.0)),
        RandScaleIntensityd(keys=img, prob=1.0, factors=(-0.5, 0.5)),
        RandAffined(scale_range=((-0.5, 1.0), (-0.5, 1.0)), **affine),
        RandAffined(rotate_range=(math.radians(40.0),), **affine),
        RandAffined(shear_range=(math.tan(math.radians(16.0)), 0.0), **affine),
        Rand2DElasticd(
            keys=both,
            prob=1.0,
            spacing=(size / 4, size / 4),
            magnitude_range=(0.008 * size, 0.03 * size),
            mode=modes,
            padding_mode="zeros",
        ),
        RandAffined(translate_range=(0.2 * size, 0.2 * size), **affine),
    ]
    return SomeOf(members, num_transforms=(0, 4), replace=False)


def normalise(keys: Sequence[str] = ("image",)) -> NormalizeIntensityd:
    """(x − 0.5) / 0.5: the official ``Normalize([0.5], [0.5])`` from [0, 1] to [-1, 1]."""
    return NormalizeIntensityd(keys=list(keys), subtrahend=0.5, divisor=0.5)


def slice_transforms(
    size: int = 224, slices_per_volume: int = 4, augment: bool = True, keys: Sequence[str] = ("image", "label")
) -> Compose:
    """Random stage: sample axial slices from a cached (C, H, W, D) volume, resize, augment, normalise.

    Args:
        size: network input size (224 for MSA²Net).
        slices_per_volume: axial slices drawn per volume and visit (the DataLoader batch is volumes × this).
        augment: apply the official augmentation list.
        keys: image key, then label key.

    Returns:
        Compose producing a list of ``slices_per_volume`` dicts with (1, size, size) image in [-1, 1] and label.
    """
    keys = list(keys)
    steps = [
        RandSpatialCropSamplesd(keys=keys, roi_size=(-1, -1, 1), num_samples=slices_per_volume, random_size=False),
        SqueezeDimd(keys=keys, dim=-1),
        Resized(keys=keys, spatial_size=(size, size), mode=["bicubic", "nearest"]),
    ]
    if augment:
        steps.append(augmentation(size, keys))
    steps += [normalise(keys[:1]), EnsureTyped(keys=keys, dtype="float32", track_meta=False)]
    return Compose(steps)
