"""Generic 2D image transforms (RGB dermoscopy, microscopy): load any size, resize to the network, restore the size.

The reader, loader and mask writer live in :mod:`bundle.io.image2d`; this module holds the steps between them.

Shared by the ISIC2018 configs (MSA²Net, Kolahi et al., BMVC 2024, Table 2) and the microscopy configs (SA2-Net,
Fiaz et al., BMVC 2023). Images of any size go through::

    load (PNG/JPG/BMP via PIL, TIFF via tifffile) → (C, H, W), values scaled to [0, 1]
    → channels (RGBA → RGB, grayscale repeated) → mask binarised {0, 1} → resize to size²
    → [augmentation, training only] → normalisation (ImageNet mean/std, or none) → float32

**Axes.** :class:`Image2DReader` keeps the file's row-major layout: array axis 1 is the image height (rows) and
axis 2 the width (columns), exactly ``np.asarray(PIL.Image.open(f))`` / ``cv2.imread`` / ``tifffile.imread``,
i.e. MONAI ``PILReader(reverse_indexing=False)``. MONAI's default ``reverse_indexing=True`` would give (W, H) to
match ITK; we do not, because every 2D segmentation code this bundle is compared with (the official SA2-Net
loaders, D-LKA / DermoSegDiff for ISIC2018) reads images as (H, W), and a mask written back must have the input's
height and width without a transpose. ``meta["spatial_shape"]`` is (H, W) accordingly.

**Intensities.** The reader records the largest value of the file's integer type (255 for 8-bit, 65535 for 16-bit;
1 for float files) and :func:`image2d_transforms` divides by it, so ``normalize="imagenet"`` sees [0, 1] images
whatever the bit depth. ``normalize="minmax"`` instead maps each image's own min..max to [0, 1] (microscopy with a
narrow 16-bit range), as the official SA2-Net ISIC preprocessing does.

**Masks.** Any non-zero pixel is foreground: 0/255 PNGs, 0/1 PNGs, palette PNGs and instance-label TIFFs all become
{0, 1}. A mask with 2 or 4 channels has its last channel treated as alpha and ignored.

**Writing back.** The shape before the resize is kept in ``meta["original_spatial_shape"]``; :class:`SaveMask2Dd`
resizes the (already thresholded / argmaxed) prediction back to it with nearest-neighbour interpolation and writes
a uint8 PNG (0/255 for binary masks) atomically, plus an optional contour overlay on the original image.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from bundle.errors import InputError
from bundle.io.image2d import (
    ORIGINAL_SIZE_KEY,
    LoadImage2Dd,
    meta_of,
    original_size,
    resize_label_map,
    source_name,
    spatial_shape2d,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


class ScaleTo01d(MapTransform):
    """Intensities to [0, 1]: divide by the file dtype's maximum (``value_max`` meta), or per-image min–max.

    Args:
        keys: image keys.
        minmax: per-image (x − min) / (max − min) instead (a constant image becomes 0).
    """

    def __init__(self, keys: KeysCollection, minmax: bool = False) -> None:
        super().__init__(keys)
        self.minmax = minmax

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if self.minmax:
                lo, hi = x.min(), x.max()
                d[key] = (x - lo) / (hi - lo) if hi > lo else x * 0
            else:
                d[key] = x / float(meta_of(x).get("value_max", 255.0))
        return d


class EnsureChannels2Dd(MapTransform):
    """(C, H, W) images to exactly ``channels`` channels: RGBA → RGB, gray (+alpha) repeated; otherwise an error.

    Args:
        keys: image keys.
        channels: channels the network takes (3 for MSA²Net / ImageNet encoders, 1 for gray microscopy).
    """

    def __init__(self, keys: KeysCollection, channels: int = 3) -> None:
        super().__init__(keys)
        self.channels = int(channels)

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x, c = d[key], d[key].shape[0]
            if c == self.channels:
                continue
            if c == 4 and self.channels == 3:  # RGBA: drop alpha
                x = x[:3]
            elif c in (1, 2):  # gray or gray + alpha
                x = x[:1].repeat(self.channels, 1, 1)
            else:
                raise InputError(
                    f"{source_name(x)} has {c} channels; the network takes {self.channels}. "
                    "Accepted: RGB, RGBA (alpha dropped), gray (repeated). Convert the file, or set `channels`."
                )
            d[key] = x
        return d


class BinarizeMaskd(MapTransform):
    """(C, H, W) masks → (1, H, W) float {0, 1}: any non-zero pixel (over channels, alpha ignored) is foreground.

    Works for 0/255 and 0/1 PNGs and for instance-label TIFFs (every instance id → 1).
    """

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if x.shape[0] in (2, 4):  # gray+alpha / RGBA: the alpha channel is not a label
                x = x[:-1]
            d[key] = (x != 0).any(dim=0, keepdim=True).to(torch.float32)
        return d


class Resize2Dd(MapTransform):
    """Resizes (C, H, W) items to ``size``² and records the previous (H, W) in ``meta["original_spatial_shape"]``.

    Images: bilinear with anti-aliasing (``torch`` ``antialias=True``, so large dermoscopy photographs are
    low-pass filtered when shrunk rather than aliased; plain bilinear when enlarged). Masks: ``nearest-exact``
    (symmetric nearest neighbour), so they stay binary.

    Args:
        keys: keys to resize.
        size: output side (224 for MSA²Net).
        label_keys: keys resized with nearest neighbour.
    """

    def __init__(self, keys: KeysCollection, size: int = 224, label_keys: Sequence[str] = ("label",)) -> None:
        super().__init__(keys)
        self.size = int(size)
        self.label_keys = set(label_keys)

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            meta = dict(meta_of(x))
            meta.setdefault(ORIGINAL_SIZE_KEY, np.asarray(x.shape[-2:], dtype=np.int64))
            t = torch.as_tensor(x).float()[None]
            if key in self.label_keys:
                out = F.interpolate(t, size=(self.size, self.size), mode="nearest-exact")
            else:
                out = F.interpolate(
                    t, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
                )
            d[key] = MetaTensor(out[0], meta=meta) if isinstance(x, MetaTensor) else out[0]
        return d


def image2d_augmentation(keys: Sequence[str] = ("image", "label"), label_key: str = "label") -> Compose:
    """Training augmentation on [0, 1] images at network size (before normalisation).

    Neither MSA²Net nor its cited split source (DermoSegDiff) publishes the ISIC augmentation with the paper, so
    this is a documented choice (``docs/isic2018.md``): lesions and tissue have no canonical orientation, so flips
    and 90° rotations are label-preserving; a mild affine (±20°, scale 0.9–1.1, p = 0.5) and photometric jitter
    (brightness ±0.1, contrast ×[0.9, 1.1], gamma [0.8, 1.25], each p = 0.3) model acquisition changes.
    Geometry is shared by image and mask (mask nearest); photometric changes touch the image only.

    Args:
        keys: image key(s) and the label key.
        label_key: the mask key.

    Returns:
        A Compose of MONAI random transforms.
    """
    keys = list(keys)
    images = [k for k in keys if k != label_key]
    modes = ["nearest" if k == label_key else "bilinear" for k in keys]
    return Compose(
        [
            RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            RandRotate90d(keys=keys, prob=0.5, max_k=3),
            RandAffined(
                keys=keys,
                prob=0.5,
                rotate_range=(np.pi / 9,),
                scale_range=(0.1, 0.1),
                mode=modes,
                padding_mode="reflection",
            ),
            RandShiftIntensityd(keys=images, prob=0.3, offsets=0.1),
            RandScaleIntensityd(keys=images, prob=0.3, factors=0.1),
            RandAdjustContrastd(keys=images, prob=0.3, gamma=(0.8, 1.25)),
        ]
    )


def imagenet_normalize(keys: KeysCollection) -> NormalizeIntensityd:
    """Per-channel ImageNet mean/std on [0, 1] RGB (the statistics timm's encoders were pretrained with)."""
    return NormalizeIntensityd(
        keys=keys, subtrahend=np.asarray(IMAGENET_MEAN), divisor=np.asarray(IMAGENET_STD), channel_wise=True
    )


def load_steps(
    keys: Sequence[str], label_key: str, channels: int, normalize: Optional[str]
) -> Tuple[List[str], List[str], List[Any]]:
    """The shared head of every 2D pipeline: load, binarise the mask, [0, 1] intensities, channel count.

    Args:
        keys: image key(s) and, when present, ``label_key``.
        label_key: the mask key.
        channels: network input channels (gray images are repeated, RGBA loses alpha).
        normalize: ``"imagenet"`` (needs 3 channels), ``"minmax"`` (per image) or ``None``/``"none"`` (by dtype);
            only ``minmax`` acts here, ImageNet statistics come after augmentation (:func:`imagenet_normalize`).

    Returns:
        ``(image_keys, label_keys, steps)``.
    """
    if normalize not in ("imagenet", "minmax", None, "none"):
        raise InputError(f"normalize must be 'imagenet', 'minmax' or None, got {normalize!r}.")
    if normalize == "imagenet" and channels != 3:
        raise InputError(f"ImageNet normalisation needs 3 channels, got channels={channels}.")
    images = [k for k in keys if k != label_key]
    labels = [k for k in keys if k == label_key]
    steps: List[Any] = [LoadImage2Dd(keys=images)]
    if labels:
        steps += [LoadImage2Dd(keys=labels, as_label=True), BinarizeMaskd(keys=labels)]
    steps += [ScaleTo01d(keys=images, minmax=normalize == "minmax"), EnsureChannels2Dd(keys=images, channels=channels)]
    return images, labels, steps


def image2d_transforms(
    keys: Sequence[str] = ("image", "label"),
    size: int = 224,
    channels: int = 3,
    normalize: Optional[str] = "imagenet",
    label_key: str = "label",
    augment: bool = False,
) -> Compose:
    """The 2D pipeline: load, [0, 1], channels, binarise mask, resize to ``size``², [augment], normalise.

    The deterministic head (up to the resize) is what ``CacheDataset`` caches; augmentation runs every iteration.

    Args:
        keys: image key first; ``label_key`` if present is loaded as a mask.
        size: network input side (224 for MSA²Net, Kolahi et al. 2024 §4.2).
        channels: network input channels (3: gray images are repeated, RGBA loses alpha).
        normalize: ``"imagenet"`` ([0, 1] by dtype, then ImageNet mean/std per channel, needs 3 channels),
            ``"minmax"`` (per-image min–max to [0, 1]) or ``None`` ([0, 1] by dtype only).
        label_key: the mask key (binarised to {0, 1}, resized nearest).
        augment: add :func:`image2d_augmentation` (training).

    Returns:
        Compose producing float32 ``(channels, size, size)`` images and ``(1, size, size)`` {0, 1} masks.
    """
    keys = list(keys)
    images, labels, steps = load_steps(keys, label_key, channels, normalize)
    steps.append(Resize2Dd(keys=keys, size=size, label_keys=labels))
    if augment:
        steps.append(image2d_augmentation(keys, label_key))
    if normalize == "imagenet":
        steps.append(imagenet_normalize(images))
    steps.append(EnsureTyped(keys=keys, dtype="float32", track_meta=True))
    return Compose(steps)


class RestoreOriginalSized(MapTransform):
    """Moves evaluation to each image's original resolution: prediction resized back, truth re-read from its file.

    The literature scores ISIC2018 at 224² (the default here); the ISIC challenge scores at the original size.
    Use after :class:`LogitsToMaskd`: the (1, h, w) prediction is resized with nearest neighbour to the image's
    ``original_spatial_shape``, and the mask is loaded again from ``label.meta["filename_or_obj"]`` (binarised,
    not resized), so the metrics count every original pixel.

    Args:
        keys: prediction keys.
        label_key: truth key (its meta names the mask file).
        ref_key: image key (its meta holds the original shape).
    """

    def __init__(self, keys: KeysCollection = "pred", label_key: str = "label", ref_key: str = "image") -> None:
        super().__init__(keys)
        self.label_key, self.ref_key = label_key, ref_key
        self.load = Compose([LoadImage2Dd(keys=label_key, as_label=True), BinarizeMaskd(keys=label_key)])

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        h, w = original_size(d, self.ref_key)
        for key in self.key_iterator(d):
            d[key] = torch.from_numpy(resize_label_map(d[key], h, w).astype(np.float32))[None]
        if self.label_key in d:
            path = meta_of(d[self.label_key]).get("filename_or_obj")
            if not path:
                raise InputError("the label has no filename_or_obj meta to re-read it from.")
            label = self.load({self.label_key: str(path)})[self.label_key]
            if tuple(label.shape[-2:]) != (h, w):
                raise InputError(
                    f"mask {path} is {tuple(label.shape[-2:])} but its image "
                    f"{source_name(None, d, self.ref_key)} is {(h, w)}; a mask must have its image's size."
                )
            d[self.label_key] = label
        return d


class RestoreSized(MapTransform):
    """Resizes a (K, h, w) probability map back to the input's original (H, W) with bilinear interpolation.

    The original size is ``meta["original_spatial_shape"]`` of ``ref_key`` (set by the ``resize`` input mode); in
    ``native`` mode there is none and the map, already at full size, is left alone. Resizing probabilities and
    then thresholding gives smoother boundaries than thresholding at 224² and enlarging the mask.

    Args:
        keys: probability keys.
        ref_key: the image key whose meta holds the original size.
    """

    def __init__(self, keys: KeysCollection = "pred", ref_key: str = "image") -> None:
        super().__init__(keys)
        self.ref_key = ref_key

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        ref = d.get(self.ref_key)
        meta = ref.meta if isinstance(ref, MetaTensor) else {}
        if ORIGINAL_SIZE_KEY not in meta:
            return d
        h, w = spatial_shape2d(meta[ORIGINAL_SIZE_KEY])
        for key in self.key_iterator(d):
            x = d[key]
            if tuple(x.shape[-2:]) == (h, w):
                continue
            out = F.interpolate(torch.as_tensor(x).float()[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            new_meta = dict(x.meta) if isinstance(x, MetaTensor) else {}
            new_meta.pop(ORIGINAL_SIZE_KEY, None)  # now at the original size: nothing left to restore
            new_meta["spatial_shape"] = np.asarray((h, w), dtype=np.int64)
            d[key] = MetaTensor(out, meta=new_meta)
        return d
