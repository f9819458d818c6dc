"""CT preprocessing, slice sampling from cached volumes and the MSA²Net augmentation list, as MONAI transforms.

The volume stage (load, check, canonical orientation, HU window) is deterministic and cached by ``CacheDataset``;
the slice stage (sample axial slices, map them to the 224² network grid, augment, normalise) runs every iteration.
Every volume is first turned into one canonical storage order with MONAI's ``Orientationd`` (default ``PLS``: rows
toward the patient's posterior, columns toward the patient's left, slices last -- the official weights' layout,
``docs/orientation.md``), so the same patient stored RAS, LPS (DICOM/ITK), LAS or sagittally gives the network the
same slices. It only flips and permutes axes: nothing is resampled, labels stay on the image grid, and ``Invertd``
puts predictions back on the input's grid. The slice-to-grid mapping (whole-slice resize, or a fixed physical pixel
size) is :class:`NetworkGridd`. Every case is checked by ``bundle.io.volume`` (see ``docs/operations.md``).

Augmentation (official ``iaa.SomeOf((0, 4), [...], random_order=True)``, ``docs/official_code.md`` §3), each
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

from typing import Any, Dict, Hashable, Mapping, Optional, Sequence

import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
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

from bundle.data.synapse import HU_WINDOW
from bundle.errors import check_subset
from bundle.io.validation import ValidateVolumed
from bundle.io.volume import LoadVolumed
from bundle.transforms.augment import (
    BLUR_SIGMA,
    CONTRAST,
    ELASTIC_MAGNITUDE,
    ELASTIC_SPACING,
    MEMBERS,
    NOISE_STD,
    ROTATE,
    SCALE,
    SHEAR,
    TRANSLATE,
)
from bundle.transforms.geometry import (
    DEFAULT_AXCODES,
    body_mask,
    check_axcodes,
    check_crop_body,
    check_pixel_size,
    inplane_spacing,
    to_network_grid,
)


class NetworkGridd(MapTransform):
    """(C, H, W) slices onto the (C, size, size) network grid: image bicubic, label nearest.

    ``pixel_size=None`` (official): the whole slice is resized (MONAI ``Resized``). A size in mm: the slice is
    sampled onto ``size`` pixels of that size centred on the slice (:func:`bundle.transforms.geometry.network_grid_theta`, the
    mapping the volume inferer inverts; images low-passed first where the network pixel is the larger, see
    :func:`bundle.transforms.geometry.to_network_grid`), padding outside the slice with 0 (air after the HU window). The slice's
    own pixel size comes from its meta affine.
    """

    def __init__(self, keys: Sequence[str] = ("image", "label"), size: int = 224, pixel_size: Optional[float] = None):
        super().__init__(keys)
        self.size = int(size)
        self.pixel_size = check_pixel_size(pixel_size)
        self.modes = ["bicubic", "nearest"][: len(self.keys)]
        self._resize = Resized(keys=self.keys, spatial_size=(self.size, self.size), mode=self.modes)

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        if self.pixel_size is None:
            return self._resize(data)
        d = dict(data)
        for key, mode in zip(self.key_iterator(d), self.modes):
            img = d[key]
            x = torch.as_tensor(img, dtype=torch.float32)[None]
            spacing = torch.tensor([inplane_spacing(img.affine)])
            out = to_network_grid(x, spacing, self.pixel_size, (self.size,) * 2, mode)[0][0]
            d[key] = out.to(img.dtype) if mode == "nearest" else out
        return d


def ct_volume_transforms(
    keys: Sequence[str] = ("image", "label"),
    reader: str | None = None,
    num_classes: Optional[int] = 9,
    validate: bool = True,
    axcodes: str = DEFAULT_AXCODES,
    crop_body: bool = False,
    output_type: str = "nifti",
) -> Compose:
    """Deterministic volume stage: load, check, channel first, canonical orientation, HU window [-125, 275] → [0, 1],
    optionally an in-plane crop to the body.

    The configs spell these steps out (``volume_transforms`` in ``configs/train.yaml``, ``preprocessing`` in
    ``configs/inference.yaml``), as model-zoo bundles do, so a user edits the chain where it runs; this function
    builds the same chain for scripts and tests (``tests/transforms/test_transforms.py`` holds them equal).

    Args:
        keys: image key first, then an optional label key.
        reader: MONAI reader name, ``None`` for MONAI's choice of file reader and
            :class:`~bundle.io.dicom_reader.DicomSeriesReader` for DICOM folders and series references.
        num_classes: labels must lie in ``0..num_classes-1`` (``bundle.io.validation.ValidateVolumed``).
        validate: run the per-case checks (clear errors for bad files; NaN/inf replaced with a warning).
        axcodes: canonical storage order (``Orientationd``: flips/permutations, no resampling; invertible, so
            ``Invertd`` puts predictions back on the input's grid). ``None`` keeps the stored order.
        crop_body: crop in-plane to the patient's body (``CropForegroundd`` with
            :func:`bundle.transforms.geometry.body_mask`; invertible: ``Invertd`` pads predictions back with background).
        output_type: what the run writes (``nifti``/``dicom_seg``/``both``), which decides the DICOM series geometries
            that can be read (``bundle.io.dicom_reader``).

    Returns:
        The Compose (cacheable: every step is deterministic).
    """
    keys = list(keys)
    steps = [LoadVolumed(keys=keys, reader=reader, output_type=output_type, image_only=True)]
    if validate:
        steps.append(ValidateVolumed(keys=keys, num_classes=num_classes))
    steps.append(EnsureChannelFirstd(keys=keys))
    if axcodes is not None:
        steps.append(Orientationd(keys=keys, axcodes=check_axcodes(axcodes), labels=None))
    steps += [
        ScaleIntensityRanged(keys=keys[0], a_min=HU_WINDOW[0], a_max=HU_WINDOW[1], b_min=0.0, b_max=1.0, clip=True)
    ]
    if check_crop_body(crop_body):
        steps.append(CropForegroundd(keys=keys, source_key=keys[0], select_fn=body_mask, allow_smaller=True))
    steps.append(EnsureTyped(keys=keys, dtype="float32", track_meta=True))
    return Compose(steps)


def augmentation(
    size: int = 224, keys: Sequence[str] = ("image", "label"), members: Optional[Sequence[str]] = None
) -> SomeOf:
    """The official augmentation list: 0–4 distinct members in random order (see the module docstring).

    Args:
        size: in-plane size of the slices it receives.
        keys: image key, then label key.
        members: draw only these members (names of :data:`bundle.transforms.augment.MEMBERS`, the same order); default all.

    Returns:
        A ``SomeOf`` transform on (C, H, W) dict samples.
    """
    img, lab = keys[0], keys[1]
    both, modes = [img, lab], ["bilinear", "nearest"]
    affine = dict(keys=both, prob=1.0, mode=modes, padding_mode="zeros")
    transforms = [
        RandFlipd(keys=both, prob=0.5, spatial_axis=0),
        RandFlipd(keys=both, prob=0.5, spatial_axis=1),
        RandGaussianNoised(keys=img, prob=1.0, mean=0.0, std=NOISE_STD, sample_std=False),
        RandGaussianSmoothd(keys=img, prob=1.0, sigma_x=(BLUR_SIGMA,) * 2, sigma_y=(BLUR_SIGMA,) * 2),
        RandScaleIntensityd(keys=img, prob=1.0, factors=(CONTRAST[0] - 1, CONTRAST[1] - 1)),
        RandAffined(scale_range=((SCALE[0] - 1, SCALE[1] - 1),) * 2, **affine),
        RandAffined(rotate_range=(ROTATE,), **affine),
        RandAffined(shear_range=(SHEAR, 0.0), **affine),
        Rand2DElasticd(
            keys=both,
            prob=1.0,
            spacing=(ELASTIC_SPACING * size,) * 2,
            magnitude_range=(ELASTIC_MAGNITUDE[0] * size, ELASTIC_MAGNITUDE[1] * size),
            mode=modes,
            padding_mode="zeros",
        ),
        RandAffined(translate_range=(TRANSLATE * size,) * 2, **affine),
    ]
    names = MEMBERS if members is None else check_subset("augment_members", members, MEMBERS)
    chosen = [t for name, t in zip(MEMBERS, transforms) if name in names]
    return SomeOf(chosen, num_transforms=(0, min(4, len(chosen))), replace=False)


def normalize(keys: Sequence[str] = ("image",)) -> NormalizeIntensityd:
    """(x − 0.5) / 0.5: the official ``Normalize([0.5], [0.5])`` from [0, 1] to [-1, 1]."""
    return NormalizeIntensityd(keys=list(keys), subtrahend=0.5, divisor=0.5)


def slice_transforms(
    size: int = 224,
    slices_per_volume: int = 4,
    augment: bool = True,
    keys: Sequence[str] = ("image", "label"),
    pixel_size: Optional[float] = None,
    augment_members: Optional[Sequence[str]] = None,
) -> Compose:
    """Random stage: sample axial slices from a cached (C, H, W, D) volume, resize, augment, normalise.

    Args:
        size: network input size (224 for MSA²Net).
        slices_per_volume: axial slices drawn per volume and visit (the DataLoader batch is volumes × this).
        augment: apply the official augmentation list.
        keys: image key, then label key.
        pixel_size: network pixel size in mm, or ``None`` for the official whole-slice resize (:class:`NetworkGridd`).
        augment_members: draw only these members of the list (default: all, the official recipe).

    Returns:
        Compose producing a list of ``slices_per_volume`` dicts with (1, size, size) image in [-1, 1] and label.
    """
    keys = list(keys)
    steps = [
        RandSpatialCropSamplesd(keys=keys, roi_size=(-1, -1, 1), num_samples=slices_per_volume, random_size=False),
        SqueezeDimd(keys=keys, dim=-1),
        NetworkGridd(keys=keys, size=size, pixel_size=pixel_size),
    ]
    if augment:
        steps.append(augmentation(size, keys, augment_members))
    steps += [normalize(keys[:1]), EnsureTyped(keys=keys, dtype="float32", track_meta=False)]
    return Compose(steps)
