"""Generic 2D image pipeline (RGB dermoscopy, microscopy): load any size, resize to the network, write masks back.

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

import csv
import glob
import io
import json
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor
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
from PIL import Image

from .data import datalist_image_paths, dataset_dir_as_input
from .validation import InputError

__all__ = [
    "IMAGE_EXTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_normalise",
    "load_steps",
    "Image2DReader",
    "LoadImage2Dd",
    "ScaleTo01d",
    "EnsureChannels2Dd",
    "BinarizeMaskd",
    "Resize2Dd",
    "LogitsToMaskd",
    "RestoreOriginalSized",
    "SaveMask2Dd",
    "image2d_transforms",
    "image2d_augmentation",
    "list_images",
    "mask_output_path",
    "save_overlay_png",
    "BinarySegmentationReport",
]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_TIFF_EXTS = (".tif", ".tiff")
_ORIG_KEY = "original_spatial_shape"


def _meta(x) -> dict:
    return x.meta if isinstance(x, MetaTensor) else {}


def _filename(x, data: Optional[Mapping] = None, ref_key: str = "image") -> str:
    """The source file of a sample: the reference key's meta (the input image), else the tensor's own meta."""
    for src in ((data or {}).get(ref_key), x):
        name = _meta(src).get("filename_or_obj")
        if name:
            return str(name[0] if isinstance(name, (list, tuple)) else name)
    return "<unknown file>"


def _shape2(value) -> tuple:
    """(H, W) from a meta value that may have been collated/decollated into a tensor, array or list."""
    return tuple(int(v) for v in torch.as_tensor(np.asarray(value, dtype=np.int64)).flatten().tolist()[:2])


class Image2DReader(ImageReader):
    """Reads a 2D PNG/JPG/BMP (Pillow) or TIFF (tifffile) as a float32 (H, W, C) array, rows first.

    Args:
        as_label: the file is a mask: palette ("P") images keep their indices instead of being converted to RGB.

    Meta data: ``spatial_shape`` (H, W), ``original_channel_dim`` -1, ``value_max`` (largest value of the file's
    integer dtype, 1.0 for float data), ``mode`` (PIL mode, or the TIFF dtype).
    """

    def __init__(self, as_label: bool = False) -> None:
        super().__init__()
        self.as_label = as_label

    def verify_suffix(self, filename) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(str(n).lower().endswith(IMAGE_EXTS) for n in names)

    def read(self, data, **kwargs):
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        if len(names) != 1:
            raise ValueError(f"bundle/image2d.py: Image2DReader reads one 2D file per key, got {names}.")
        return self._read_one(str(names[0]))

    def _read_one(self, path: str):
        if not os.path.isfile(path):
            raise ValueError(f"bundle/image2d.py: image file {path} does not exist; check the datalist / input path.")
        if path.lower().endswith(_TIFF_EXTS):
            import tifffile

            arr, mode = np.asarray(tifffile.imread(path)), None
            mode = str(arr.dtype)
            arr = self._tiff_to_hwc(arr, path)
        else:
            try:
                with Image.open(path) as im:
                    im.load()
                    mode = im.mode
                    if im.mode == "P" and not self.as_label:
                        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                    elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                        im = im.convert("RGB")
                    elif im.mode == "1":
                        im = im.convert("L")
                    arr = np.asarray(im)
            except OSError as e:
                raise ValueError(f"bundle/image2d.py: cannot read {path} as an image ({e}).") from e
            if arr.ndim == 2:
                arr = arr[..., None]
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        value_max = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
        return {"array": arr.astype(np.float32), "mode": mode, "value_max": value_max, "path": path}

    @staticmethod
    def _tiff_to_hwc(arr: np.ndarray, path: str) -> np.ndarray:
        """(H, W) / (H, W, C) / (C, H, W) with C ≤ 4 → (H, W, C); a stack of planes is refused."""
        if arr.ndim > 2:
            arr = arr.reshape([s for s in arr.shape if s != 1] or [1])
        if arr.ndim == 2:
            return arr[..., None]
        if arr.ndim == 3 and arr.shape[-1] <= 4:
            return arr
        if arr.ndim == 3 and arr.shape[0] <= 4:  # planar TIFF (C, H, W)
            return np.moveaxis(arr, 0, -1)
        raise ValueError(
            f"bundle/image2d.py: {path} has shape {arr.shape}; a 2D image is (H, W), (H, W, C≤4) or (C≤4, H, W). "
            "Save one plane per file (multi-page / z-stack TIFFs are not 2D images)."
        )

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        arr = img["array"]
        meta = {
            "spatial_shape": np.asarray(arr.shape[:2], dtype=np.int64),
            "original_channel_dim": -1,
            "value_max": img["value_max"],
            "mode": img["mode"],
        }
        return arr, meta


class LoadImage2Dd(MapTransform):
    """Loads 2D files with :class:`Image2DReader` into float32 (C, H, W) ``MetaTensor``s.

    Used instead of ``LoadImaged(reader=Image2DReader())`` because MONAI's loader, given a reader instance, falls
    back to every other registered reader on failure and reports a ``RuntimeError`` listing all of them; here a
    missing or unreadable file raises this module's ``ValueError`` naming the file. Meta: ``filename_or_obj``,
    ``spatial_shape`` (H, W), ``value_max``, ``mode``.

    Args:
        keys: keys holding file paths.
        as_label: files are masks (palette indices kept).
    """

    def __init__(self, keys: KeysCollection, as_label: bool = False) -> None:
        super().__init__(keys)
        self.reader = Image2DReader(as_label=as_label)

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            arr, meta = self.reader.get_data(self.reader.read(path))
            meta["filename_or_obj"] = path
            d[key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(np.moveaxis(arr, -1, 0))), meta=meta)
        return d


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
                d[key] = x / float(_meta(x).get("value_max", 255.0))
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
                raise ValueError(
                    f"bundle/image2d.py: {_filename(x)} has {c} channels; the network takes {self.channels}. "
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
            meta = dict(_meta(x))
            meta.setdefault(_ORIG_KEY, np.asarray(x.shape[-2:], dtype=np.int64))
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


def imagenet_normalise(keys: KeysCollection) -> NormalizeIntensityd:
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
            only ``minmax`` acts here, ImageNet statistics come after augmentation (:func:`imagenet_normalise`).

    Returns:
        ``(image_keys, label_keys, steps)``.
    """
    if normalize not in ("imagenet", "minmax", None, "none"):
        raise ValueError(f"bundle/image2d.py: normalize must be 'imagenet', 'minmax' or None, got {normalize!r}.")
    if normalize == "imagenet" and channels != 3:
        raise ValueError(f"bundle/image2d.py: ImageNet normalisation needs 3 channels, got channels={channels}.")
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
        steps.append(imagenet_normalise(images))
    steps.append(EnsureTyped(keys=keys, dtype="float32", track_meta=True))
    return Compose(steps)


class LogitsToMaskd(MapTransform):
    """Network logits (K, H, W) → a (1, H, W) float label map, for either head of a binary task.

    ``head="sigmoid"``: one logit, foreground where sigmoid(logit) > ``threshold``. ``head="softmax"``: K ≥ 2
    logits, argmax (for K = 2 identical to softmax p₁ > 0.5).

    Args:
        keys: prediction keys.
        head: ``sigmoid`` or ``softmax``.
        threshold: probability threshold of the sigmoid head.
    """

    def __init__(self, keys: KeysCollection = "pred", head: str = "sigmoid", threshold: float = 0.5) -> None:
        super().__init__(keys)
        if head not in ("sigmoid", "softmax"):
            raise ValueError(f"bundle/image2d.py: head must be 'sigmoid' or 'softmax', got {head!r}.")
        self.head, self.threshold = head, float(threshold)

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if self.head == "sigmoid":
                if x.shape[0] != 1:
                    raise ValueError(f"bundle/image2d.py: the sigmoid head has 1 logit channel, got {x.shape[0]}.")
                d[key] = (torch.sigmoid(x.float()) > self.threshold).float()
            else:
                d[key] = x.argmax(dim=0, keepdim=True).float()
        return d


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
        h, w = SaveMask2Dd(ref_key=self.ref_key)._original_shape(None, d)
        for key in self.key_iterator(d):
            d[key] = torch.from_numpy(SaveMask2Dd._restore(d[key], h, w).astype(np.float32))[None]
        if self.label_key in d:
            path = _meta(d[self.label_key]).get("filename_or_obj")
            if not path:
                raise ValueError("bundle/image2d.py: the label has no filename_or_obj meta to re-read it from.")
            label = self.load({self.label_key: str(path)})[self.label_key]
            if tuple(label.shape[-2:]) != (h, w):
                raise ValueError(
                    f"bundle/image2d.py: mask {path} is {tuple(label.shape[-2:])} but its image "
                    f"{_filename(None, d, self.ref_key)} is {(h, w)}; a mask must have its image's size."
                )
            d[self.label_key] = label
        return d


def mask_output_path(image_path: str, output_dir: str, postfix: str = "mask", ext: str = ".png") -> str:
    """``<output_dir>/<input stem>_<postfix>.png`` (``ISIC_0000000.jpg`` → ``ISIC_0000000_mask.png``)."""
    stem = os.path.splitext(os.path.basename(str(image_path)))[0]
    return os.path.join(output_dir, f"{stem}_{postfix}{ext}" if postfix else f"{stem}{ext}")


def _atomic_save_png(arr: np.ndarray, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, path)  # same folder: readers never see a half-written PNG
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _contour(mask: np.ndarray, width: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation, binary_erosion

    mask = mask.astype(bool)
    edge = mask ^ binary_erosion(mask, border_value=0)
    return binary_dilation(edge, iterations=max(0, width - 1)) if width > 1 else edge


def save_overlay_png(image, mask=None, path: str = "overlay.png", pred=None, width: Optional[int] = None) -> str:
    """Draws mask contours over an RGB image and writes a PNG of the image's exact size (atomically).

    Colours as the paper's Fig. 3: ground truth green, prediction blue.

    Args:
        image: (H, W, 3) / (H, W) uint8 array, or a path to an image file.
        mask: ground-truth mask (H, W), non-zero = foreground, or None.
        path: output PNG.
        pred: predicted mask (H, W), or None.
        width: contour width in pixels (default: 1 per 300 pixels of the short side, at least 1).

    Returns:
        ``path``.
    """
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            image = np.asarray(im.convert("RGB"))
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.dtype != np.uint8:
        lo, hi = float(img.min()), float(img.max())
        img = ((img - lo) / (hi - lo) * 255 if hi > lo else img * 0).astype(np.uint8)
    out = img[..., :3].copy()
    width = width or max(1, min(out.shape[:2]) // 300)
    for m, colour in ((mask, (0, 255, 0)), (pred, (0, 0, 255))):
        if m is None:
            continue
        m = np.asarray(m).squeeze()
        if m.shape != out.shape[:2]:
            raise ValueError(f"bundle/image2d.py: overlay mask shape {m.shape} != image shape {out.shape[:2]}.")
        out[_contour(m != 0, width)] = colour
    _atomic_save_png(out, path)
    return path


class SaveMask2Dd(MapTransform):
    """Writes a (1, h, w) label-map prediction as a PNG at the input's original (H, W), atomically.

    The prediction is resized back with nearest neighbour (``nearest-exact``) to ``original_spatial_shape`` (set by
    :class:`Resize2Dd`; falls back to the reader's ``spatial_shape``). Binary {0, 1} maps are written as 0/255,
    other label maps as their ids (uint8). The output name comes from the input file name
    (:func:`mask_output_path`); existing outputs are left alone unless ``overwrite``.

    Args:
        keys: prediction key (already thresholded / argmaxed, e.g. by :class:`LogitsToMaskd`).
        output_dir: destination folder.
        postfix: file-name suffix (``<stem>_<postfix>.png``).
        overwrite: replace existing files.
        overlay: also write ``<stem>_overlay.png``: prediction contour (blue) over the original image.
        ref_key: key whose meta names the source file when the prediction carries none.
        foreground_value: grey value of foreground in binary masks.
        label_key: if given and present (evaluation), its mask, resized back the same way, is drawn in the
            overlay too (green).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str = "./eval",
        postfix: str = "mask",
        overwrite: bool = False,
        overlay: bool = False,
        ref_key: str = "image",
        foreground_value: int = 255,
        label_key: Optional[str] = None,
    ) -> None:
        super().__init__(keys)
        self.label_key = label_key
        self.output_dir, self.postfix, self.overwrite = output_dir, postfix, overwrite
        self.overlay, self.ref_key, self.foreground_value = overlay, ref_key, int(foreground_value)

    def _original_shape(self, pred, data) -> tuple:
        for src in (data.get(self.ref_key), pred):
            meta = _meta(src)
            for k in (_ORIG_KEY, "spatial_shape"):
                if k in meta:
                    return _shape2(meta[k])
        raise ValueError(
            "bundle/image2d.py: the prediction has no original_spatial_shape / spatial_shape meta; load images "
            "with image2d_transforms so the size can be restored."
        )

    @staticmethod
    def _restore(x, h: int, w: int) -> np.ndarray:
        """(1, h', w') label map → (h, w) uint8 by nearest neighbour."""
        t = torch.as_tensor(x).detach().float().cpu()
        if t.ndim == 2:
            t = t[None]
        if t.shape[0] != 1:
            raise ValueError(f"bundle/image2d.py: SaveMask2Dd needs a (1, H, W) label map, got {tuple(t.shape)}.")
        t = F.interpolate(t[None], size=(h, w), mode="nearest-exact")[0, 0]
        return t.round().clamp(0, 255).to(torch.uint8).numpy()

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            src = _filename(pred, d, self.ref_key)
            if src == "<unknown file>":
                raise ValueError("bundle/image2d.py: the prediction has no filename_or_obj meta to name the output.")
            dst = mask_output_path(src, self.output_dir, self.postfix)
            if os.path.exists(dst) and not self.overwrite:
                d[f"{key}_path"] = dst
                continue
            h, w = self._original_shape(pred, d)
            arr = self._restore(pred, h, w)
            if arr.max() <= 1:
                arr = arr * np.uint8(self.foreground_value)
            _atomic_save_png(arr, dst)
            d[f"{key}_path"] = dst
            if self.overlay and os.path.isfile(src):
                truth = self._restore(d[self.label_key], h, w) if self.label_key in d else None
                save_overlay_png(src, truth, mask_output_path(src, self.output_dir, "overlay"), pred=arr)
        return d


def list_images(
    input: Union[str, Sequence[str], None] = None,
    exts: Sequence[str] = IMAGE_EXTS,
    output_dir: Optional[str] = None,
    overwrite: bool = False,
    datalist: Optional[str] = None,
    data_list_key: str = "test",
    base_dir: Optional[str] = None,
    postfix: str = "mask",
    dataset_dir: Optional[str] = None,
) -> List[Dict[str, str]]:
    """Images to segment as ``[{"image": path}]``, minus those whose output mask already exists.

    Mirrors :func:`bundle.inference.list_volumes` for 2D files.

    Args:
        input: an image file, a folder (its image files, sorted, not recursive), or a list of such paths.
        exts: accepted extensions (case-insensitive).
        output_dir: where masks go; inputs whose mask exists there are skipped unless ``overwrite``.
        overwrite: keep every input.
        datalist: decathlon JSON used when ``input`` is not given.
        data_list_key: its section (``test``, ``validation`` …).
        base_dir: base for relative datalist paths (default: the datalist's folder).
        postfix: output suffix (must match :class:`SaveMask2Dd`'s).
        dataset_dir: the model zoo's ``--dataset_dir``: without ``input``, a folder with no ``dataset.json`` (and
            ``datalist`` at its default) is listed as ``input`` would be (:func:`bundle.data.dataset_dir_as_input`).

    Returns:
        A list of dicts for a MONAI Dataset.

    Raises:
        InputError: ``dataset_dir`` is used as the input folder but holds no image.
    """
    exts = tuple(e.lower() for e in exts)
    paths: List[str] = []
    from_dataset_dir = dataset_dir_as_input(input, datalist, dataset_dir)
    if from_dataset_dir:
        input = str(dataset_dir)
    if not input and datalist:
        paths = datalist_image_paths(datalist, data_list_key, base_dir, origin="bundle/image2d.py")
    else:
        for entry in [input] if isinstance(input, (str, os.PathLike)) else list(input or []):
            entry = str(entry)
            if os.path.isdir(entry):
                found = sorted(p for p in glob.glob(os.path.join(entry, "*")) if p.lower().endswith(exts))
                paths += [p for p in found if os.path.isfile(p) and ".png.tmp" not in p]
            elif os.path.isfile(entry):
                if not entry.lower().endswith(exts):
                    raise ValueError(f"bundle/image2d.py: {entry} is not an image file ({', '.join(exts)}).")
                paths.append(entry)
            else:
                raise ValueError(f"bundle/image2d.py: input {entry} does not exist.")
    if from_dataset_dir and not paths:
        raise InputError(
            f"dataset_dir {dataset_dir} holds no dataset.json and no image ({', '.join(exts)}): point --dataset_dir "
            "at the folder of images, or give --input."
        )
    if output_dir and not overwrite:
        paths = [p for p in paths if not os.path.exists(mask_output_path(p, output_dir, postfix))]
    return [{"image": p} for p in paths]


class BinarySegmentationReport:
    """Ignite handler: binary metrics over an evaluation pass, written as JSON, CSV and a Markdown table.

    Every iteration, each decollated output's ``pred`` and ``label`` ({0, 1} maps at network size) update a
    :class:`bundle.metrics.BinaryPooledMetrics`; at the end of the epoch it writes ``metrics.json`` (pooled and
    per-image-mean DSC, IoU, ACC, SE, SP), ``per_image.csv`` and ``summary.md`` (this run beside the paper's row).

    Args:
        output_dir: destination folder.
        paper: optional ``{"method": str, "dsc": .., "iou": .., "acc": .., "se": .., "sp": ..}`` row (missing
            values shown as –).
        per_image: also report per-image means in the Markdown table.
        pred_key: prediction key in the engine output.
        label_key: truth key.
    """

    COLUMNS = ("dsc", "iou", "acc", "se", "sp")

    def __init__(
        self,
        output_dir: str,
        paper: Optional[Mapping[str, Any]] = None,
        per_image: bool = True,
        pred_key: str = "pred",
        label_key: str = "label",
    ) -> None:
        from bundle.metrics import BinaryPooledMetrics

        self.output_dir, self.paper, self.per_image = output_dir, paper, per_image
        self.pred_key, self.label_key = pred_key, label_key
        self.metrics = BinaryPooledMetrics()
        self.names: List[str] = []
        self.summary: Dict[str, Any] = {}

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self) -> None:
        self.metrics.reset()
        self.names = []

    def update(self, engine) -> None:
        outputs = engine.state.output
        for item in outputs if isinstance(outputs, list) else [outputs]:
            self.metrics.update(item[self.pred_key], item[self.label_key])
            self.names.append(os.path.basename(_filename(item[self.pred_key], item)))

    def write(self, engine=None) -> Dict[str, Any]:
        """Writes the files; returns ``{"pooled": {...}, "per_image_mean": {...}}``."""
        from bundle.reports import atomic_write_text

        pooled, mean = self.metrics.compute(), self.metrics.compute(per_image=True)
        self.summary = {"pooled": pooled, "per_image_mean": mean, "paper": dict(self.paper) if self.paper else None}
        os.makedirs(self.output_dir, exist_ok=True)
        atomic_write_text(os.path.join(self.output_dir, "metrics.json"), json.dumps(self.summary, indent=2) + "\n")
        rows = [self.metrics._from_counts(*c) for c in self.metrics.per_image]
        buf = io.StringIO(newline="")
        writer = csv.writer(buf)
        writer.writerow(["image", "tp", "fp", "tn", "fn", *self.COLUMNS])
        for name, c, r in zip(self.names, self.metrics.per_image, rows):
            writer.writerow([name, *map(int, c), *(f"{r[k]:.6f}" for k in self.COLUMNS)])
        atomic_write_text(os.path.join(self.output_dir, "per_image.csv"), buf.getvalue())
        atomic_write_text(os.path.join(self.output_dir, "summary.md"), self.markdown())
        return self.summary

    def markdown(self) -> str:
        """The Markdown table: paper row (if any), pooled row, per-image-mean row (if enabled)."""

        def cell(v):
            return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"

        head = "| method | DSC | IoU | ACC | SE | SP |\n|---|---|---|---|---|---|\n"
        lines = []
        if self.paper:
            lines.append([self.paper.get("method", "paper"), *(self.paper.get(k) for k in self.COLUMNS)])
        n = self.summary["pooled"]["n_images"]
        count = f"{n} image" + ("s" if n != 1 else "")
        lines.append([f"this run, pooled pixels ({count})", *(self.summary["pooled"][k] for k in self.COLUMNS)])
        if self.per_image:
            mean = self.summary["per_image_mean"]
            lines.append([f"this run, per-image mean ({count})", *(mean[k] for k in self.COLUMNS)])
        body = "".join(f"| {row[0]} | " + " | ".join(cell(v) for v in row[1:]) + " |\n" for row in lines)
        return head + body
