"""Generic 2D image transforms (RGB dermoscopy, microscopy): load any size, resize to the network (invertibly).

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

**Writing back.** :class:`Resize2Dd` is a MONAI invertible transform: it records each item's (H, W) before the
resize in its ``applied_operations``, so the configs put predictions back at each input's own size with MONAI's
``Invertd`` of the preprocessing, as the CT configs undo their reorientation: probabilities bilinear
(``nearest_interp: false``, microscopy), masks by nearest neighbour (``nearest_interp: true``, ISIC).
:class:`bundle.io.image2d.SaveMask2Dd` then writes the mask as it is (a uint8 PNG, 0/255 for binary masks).
Evaluation at the original size re-reads the truth from its file (:class:`ReloadLabeld`) instead of resizing
the 224² mask back.
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
    InvertibleTransform,
    MapTransform,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.utils import TraceKeys

from bundle.errors import InputError
from bundle.io.image2d import LoadImage2Dd, input_size, meta_of, source_name

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


def _interpolate(x, size: Sequence[int], mode: str, align_corners=None, antialias: bool = False) -> torch.Tensor:
    """(C, h, w) → (C, *size) float32 with ``torch.nn.functional.interpolate``; nearest is the symmetric
    ``nearest-exact`` (torch's ``nearest`` takes the floor of the source position, shifting by half a pixel)."""
    t = torch.as_tensor(x).float()[None]
    if mode in ("nearest", "nearest-exact"):
        return F.interpolate(t, size=tuple(size), mode="nearest-exact")[0]
    return F.interpolate(t, size=tuple(size), mode=mode, align_corners=align_corners, antialias=antialias)[0]


def _with_meta_of(out: torch.Tensor, x) -> torch.Tensor:
    """``out`` with ``x``'s meta and transform record when ``x`` is a ``MetaTensor``."""
    if isinstance(x, MetaTensor):
        return MetaTensor(out, meta=dict(x.meta), applied_operations=list(x.applied_operations))
    return out


class Resize2Dd(MapTransform, InvertibleTransform):
    """Resizes (C, H, W) items to ``size``², invertibly: MONAI's ``Invertd`` puts predictions back at each (H, W).

    Images: bilinear with anti-aliasing (``torch`` ``antialias=True``, so large dermoscopy photographs are
    low-pass filtered when shrunk rather than aliased; plain bilinear when enlarged). Masks: ``nearest-exact``
    (symmetric nearest neighbour), so they stay binary.

    The previous (H, W) and the interpolation ``mode`` (``bilinear`` / ``nearest-exact``, with ``align_corners``)
    go into the item's ``applied_operations``. The inverse resizes back to that (H, W) with the recorded mode:
    bilinear without anti-aliasing (``align_corners=False``) for probabilities (thresholded after, they give
    smoother boundaries than a 224² mask enlarged), and ``nearest-exact`` for any nearest mode, including the
    ``nearest`` that ``Invertd(nearest_interp=True)`` writes for label maps. An item already at that size is left
    as it is.

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
            if key in self.label_keys:
                mode, align_corners = "nearest-exact", TraceKeys.NONE
                out = _interpolate(x, (self.size, self.size), mode)
            else:
                mode, align_corners = "bilinear", False
                out = _interpolate(x, (self.size, self.size), mode, align_corners, antialias=True)
            d[key] = _with_meta_of(out, x)
            d = self.push_transform(
                d, key, orig_size=tuple(x.shape[-2:]), extra_info={"mode": mode, "align_corners": align_corners}
            )
        return d

    def inverse(self, data: Mapping) -> Dict:
        d = dict(data)
        for key in self.key_iterator(d):
            op = self.pop_transform(d, key)
            original = tuple(int(s) for s in op[TraceKeys.ORIG_SIZE])
            x = d[key]
            if tuple(x.shape[-2:]) == original:
                continue
            mode, align_corners = op[TraceKeys.EXTRA_INFO]["mode"], op[TraceKeys.EXTRA_INFO]["align_corners"]
            align_corners = None if align_corners == TraceKeys.NONE else align_corners
            d[key] = _with_meta_of(_interpolate(x, original, mode, align_corners), x)
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


class ReloadLabeld(MapTransform):
    """Replaces each network-size mask with its file read again (binarised, not resized): the truth for scoring
    at each image's original size.

    ``Invertd`` puts the prediction back at the image's size; the truth is re-read instead of inverted, because
    resizing a mask to 224² and back moves its boundary pixels. The file is ``meta["filename_or_obj"]`` of the
    mask and must have its image's size.

    Args:
        keys: mask keys.
        ref_key: image key (its meta holds the image's size).
    """

    def __init__(self, keys: KeysCollection = "label", ref_key: str = "image") -> None:
        super().__init__(keys)
        self.ref_key = ref_key
        self.load = Compose([LoadImage2Dd(keys=self.keys, as_label=True), BinarizeMaskd(keys=self.keys)])

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        size, paths = input_size(d, self.ref_key), {}
        for key in self.key_iterator(d):
            paths[key] = meta_of(d[key]).get("filename_or_obj")
            if not paths[key]:
                raise InputError(f"the {key} has no filename_or_obj meta to re-read it from.")
        loaded = self.load({key: str(path) for key, path in paths.items()})
        for key, path in paths.items():
            if tuple(loaded[key].shape[-2:]) != size:
                raise InputError(
                    f"mask {path} is {tuple(loaded[key].shape[-2:])} but its image "
                    f"{source_name(None, d, self.ref_key)} is {size}; a mask must have its image's size."
                )
            d[key] = loaded[key]
        return d
