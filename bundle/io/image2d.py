"""2D images in and out: one reader for PNG/JPEG/BMP/TIFF (RGB or grey, masks), the loader that names the file on
failure, the mask writer (PNG of the input's size, atomic), contour overlays and file listing."""

from __future__ import annotations

import glob
import os
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor
from monai.transforms import MapTransform
from PIL import Image

from bundle.errors import InputError
from bundle.io.atomic import atomic_path
from bundle.io.datalist import list_inputs

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


_TIFF_EXTS = (".tif", ".tiff")


def spatial_shape2d(value) -> tuple:
    """(H, W) from a meta value that may have been collated/decollated into a tensor, array or list."""
    return tuple(int(v) for v in torch.as_tensor(np.asarray(value, dtype=np.int64)).flatten().tolist()[:2])


def meta_of(x) -> dict:
    """The meta dict of a MetaTensor; {} for anything else."""
    return x.meta if isinstance(x, MetaTensor) else {}


def source_name(x, data: Optional[Mapping] = None, ref_key: str = "image") -> str:
    """The source file of a sample: the reference key's meta (the input image), else the tensor's own meta."""
    for src in ((data or {}).get(ref_key), x):
        name = meta_of(src).get("filename_or_obj")
        if name:
            return str(name[0] if isinstance(name, (list, tuple)) else name)
    return "<unknown file>"


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
            raise InputError(f"Image2DReader reads one 2D file per key, got {names}.")
        return self._read_one(str(names[0]))

    def _read_one(self, path: str):
        if not os.path.isfile(path):
            raise InputError(f"image file {path} does not exist; check the datalist / input path.")
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
                raise InputError(f"cannot read {path} as an image ({e}).") from e
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
        raise InputError(
            f"{path} has shape {arr.shape}; a 2D image is (H, W), (H, W, C≤4) or (C≤4, H, W). "
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


def input_size(data: Mapping, ref_key: str = "image", pred=None) -> tuple:
    """The (H, W) of the file a sample was read from: the reader's ``spatial_shape`` meta (the image's, else the
    prediction's, which ``Invertd`` copies from the image)."""
    for src in (data.get(ref_key), pred):
        if "spatial_shape" in meta_of(src):
            return spatial_shape2d(meta_of(src)["spatial_shape"])
    raise InputError(
        "the prediction has no spatial_shape meta naming its input's size; load images with "
        "bundle.io.image2d.LoadImage2Dd (image2d_transforms / microscopy_transforms)."
    )


def label_map_uint8(x) -> np.ndarray:
    """(1, H, W) or (H, W) label map → (H, W) uint8 (values rounded, clamped to 0..255)."""
    t = torch.as_tensor(x).detach().float().cpu()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] != 1:
        raise InputError(f"a mask to write must be a (1, H, W) label map, got {tuple(t.shape)}.")
    return t[0].round().clamp(0, 255).to(torch.uint8).numpy()


def mask_output_path(image_path: str, output_dir: str, postfix: str = "mask", ext: str = ".png") -> str:
    """``<output_dir>/<input stem>_<postfix>.png`` (``ISIC_0000000.jpg`` → ``ISIC_0000000_mask.png``)."""
    stem = os.path.splitext(os.path.basename(str(image_path)))[0]
    return os.path.join(output_dir, f"{stem}_{postfix}{ext}" if postfix else f"{stem}{ext}")


def _atomic_save_png(arr: np.ndarray, path: str) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


class SaveMask2Dd(MapTransform):
    """Writes a (1, H, W) label-map prediction as a PNG of its input's size, atomically.

    The prediction must already be at the input's (H, W): the configs put MONAI's ``Invertd`` of the preprocessing
    (which undoes :class:`bundle.transforms.image2d.Resize2Dd`) before this writer, as the CT configs do before
    :class:`bundle.io.volume.SaveLabelNiftid`; a prediction of another size is refused rather than written at the
    wrong size. Binary {0, 1} maps are written as 0/255, other label maps as their ids (uint8). The output name
    comes from the input file name (:func:`mask_output_path`); existing outputs are left alone unless ``overwrite``.

    Args:
        keys: prediction key (already thresholded / argmaxed, e.g. by :class:`LogitsToMaskd`).
        output_dir: destination folder.
        postfix: file-name suffix (``<stem>_<postfix>.png``).
        overwrite: replace existing files.
        overlay: also write ``<stem>_overlay.png``: prediction contour (blue) over the original image.
        ref_key: key whose meta names the source file (and its size) when the prediction carries none.
        foreground_value: grey value of foreground in binary masks.
        label_key: if given and present (evaluation), its mask, at the input's size too, is drawn in the overlay
            (green).
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

    def __call__(self, data: Mapping) -> Dict:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            src = source_name(pred, d, self.ref_key)
            if src == "<unknown file>":
                raise InputError("the prediction has no filename_or_obj meta to name the output.")
            dst = mask_output_path(src, self.output_dir, self.postfix)
            if os.path.exists(dst) and not self.overwrite:
                d[f"{key}_path"] = dst
                continue
            arr, size = label_map_uint8(pred), input_size(d, self.ref_key, pred)
            if arr.shape != size:  # a config that forgot Invertd would write a mask of the network's size
                raise InputError(
                    f"the prediction for {src} is {arr.shape} but the input is {size}: put Invertd (transform: the "
                    "preprocessing) before SaveMask2Dd in the config's postprocessing."
                )
            if arr.max() <= 1:
                arr = arr * np.uint8(self.foreground_value)
            _atomic_save_png(arr, dst)
            d[f"{key}_path"] = dst
            if self.overlay and os.path.isfile(src):
                truth = label_map_uint8(d[self.label_key]) if self.label_key in d else None
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

    Mirrors :func:`bundle.io.volume.list_volumes` for 2D files.

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
            ``datalist`` left at its default ``<dataset_dir>/dataset.json``) is listed as ``input`` would be
            (:func:`bundle.io.datalist.dataset_dir_as_input`); a folder with a ``dataset.json`` uses that datalist.

    Returns:
        A list of dicts for a MONAI Dataset.

    Raises:
        InputError: as :func:`bundle.io.datalist.list_inputs` (a missing input, nothing to segment, two inputs
            with one output name), or a file that is not an image.
    """
    exts = tuple(e.lower() for e in exts)

    def expand(entry: str) -> List[str]:
        if os.path.isdir(entry):
            found = sorted(p for p in glob.glob(os.path.join(entry, "*")) if p.lower().endswith(exts))
            return [p for p in found if os.path.isfile(p)]
        if not entry.lower().endswith(exts):
            raise InputError(f"{entry} is not an image file ({', '.join(exts)}).")
        return [entry]

    return list_inputs(
        input,
        expand,
        lambda p: mask_output_path(p, output_dir, postfix),
        f"image ({', '.join(exts)})",
        datalist=datalist,
        data_list_key=data_list_key,
        base_dir=base_dir,
        dataset_dir=dataset_dir,
        output_dir=output_dir,
        overwrite=overwrite,
    )


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
            raise InputError(f"overlay mask shape {m.shape} != image shape {out.shape[:2]}.")
        out[_contour(m != 0, width)] = colour
    _atomic_save_png(out, path)
    return path
