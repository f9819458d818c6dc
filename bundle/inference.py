"""Volume inference: every axial slice through a 2D network in batches, back to the original grid, saved safely.

``AxialSliceInferer`` follows the TransUNet protocol (``msa2net_official.md`` §6.4): each slice is resized to
224² (bicubic), normalised to [-1, 1] by the network wrapper, its logits are resized back to the original
in-plane size (bilinear) and reduced by argmax **per chunk** of ``sw_batch_size`` slices into a uint8 volume, so
a 512×512×300 volume never holds full-volume float logits (9·512²·300·4 B = 2.8 GB). No spatial transform touches
the volume itself, so the label map is on exactly the input grid (shape and affine), with nothing to invert.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

__all__ = ["AxialSliceInferer", "SaveLabelNiftid", "list_volumes", "output_path"]

_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


class AxialSliceInferer(Inferer):
    """Runs a 2D network on every axial slice of (B, C, H, W, D) volumes and returns (B, 1, H, W, D) labels.

    Args:
        roi_size: network input size (224 for MSA²Net).
        sw_batch_size: slices per forward pass (also the argmax chunk).
        normalise: map [0, 1] input to [-1, 1] as the training pipeline does.
        sw_device: device for the network (default: the input's).
        progress: show a tqdm bar over chunks.
    """

    def __init__(
        self,
        roi_size: Sequence[int] = (224, 224),
        sw_batch_size: int = 16,
        normalise: bool = True,
        sw_device: Union[str, torch.device, None] = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if sw_batch_size < 1:
            raise ValueError(f"bundle/inference.py: sw_batch_size must be ≥ 1, got {sw_batch_size}.")
        self.roi_size = tuple(int(s) for s in roi_size)
        self.sw_batch_size = int(sw_batch_size)
        self.normalise = normalise
        self.sw_device = sw_device
        self.progress = progress

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        """Segments ``inputs`` (B, C, H, W, D) slice by slice; returns uint8 labels (B, 1, H, W, D)."""
        if inputs.ndim != 5:
            raise ValueError(f"bundle/inference.py: expected (B, C, H, W, D) volumes, got {tuple(inputs.shape)}.")
        b, c, h, w, d = inputs.shape
        device = torch.device(self.sw_device) if self.sw_device is not None else inputs.device
        out = torch.zeros((b, 1, h, w, d), dtype=torch.uint8)
        chunks = range(0, d, self.sw_batch_size)
        if self.progress:
            from tqdm import tqdm

            chunks = tqdm(chunks, desc="slices", unit="chunk")
        for z0 in chunks:
            z1 = min(z0 + self.sw_batch_size, d)
            x = torch.as_tensor(inputs[..., z0:z1]).permute(0, 4, 1, 2, 3).reshape(-1, c, h, w).float().to(device)
            x = F.interpolate(x, size=self.roi_size, mode="bicubic", align_corners=False)
            if self.normalise:
                x = (x - 0.5) / 0.5
            logits = network(x, *args, **kwargs).float()
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            labels = logits.argmax(1).to(torch.uint8).cpu()  # (B·n, H, W); logits freed per chunk
            out[:, 0, :, :, z0:z1] = labels.reshape(b, z1 - z0, h, w).permute(0, 2, 3, 1)
        result, *_ = convert_to_dst_type(out, inputs, dtype=torch.uint8)  # keeps the input's meta/affine
        return result


def output_path(image_path: str, output_dir: str, postfix: str = "seg") -> str:
    """``<output_dir>/<name>_<postfix>.nii.gz`` for a volume file or a DICOM series folder."""
    base = os.path.basename(os.path.normpath(str(image_path)))
    for suffix in _VOLUME_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return os.path.join(output_dir, f"{base}_{postfix}.nii.gz")


def _reference_header(image_path: str) -> Optional[nib.Nifti1Header]:
    if str(image_path).lower().endswith((".nii", ".nii.gz")):
        return nib.load(str(image_path)).header.copy()
    return None


class SaveLabelNiftid(MapTransform):
    """Writes ``key`` (1, H, W, D) as a uint8 NIfTI with the input's shape and affine, atomically.

    The affine is the one MONAI loaded (RAS, as nibabel reports it for NIfTI; converted from LPS by the ITK
    reader for NRRD/DICOM). For NIfTI input the source header (qform/sform codes, zooms) is copied too.

    Args:
        keys: prediction key.
        output_dir: destination folder (created).
        postfix: file name suffix.
        overwrite: replace existing outputs (otherwise they are left alone).
    """

    def __init__(self, keys: str = "pred", output_dir: str = "./eval", postfix: str = "seg", overwrite: bool = False):
        super().__init__(keys)
        self.output_dir, self.postfix, self.overwrite = output_dir, postfix, overwrite

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        for key in self.key_iterator(data):
            pred = data[key]
            meta = getattr(pred, "meta", {})
            src = meta.get("filename_or_obj")
            if not src:
                raise ValueError("bundle/inference.py: the prediction has no filename_or_obj meta to name the output.")
            dst = output_path(str(src), self.output_dir, self.postfix)
            if os.path.exists(dst) and not self.overwrite:
                continue
            arr = np.asarray(pred.detach().cpu().numpy() if torch.is_tensor(pred) else pred)
            arr = arr[0].astype(np.uint8)
            affine = np.asarray(meta.get("original_affine", meta.get("affine")), dtype=np.float64)
            header = _reference_header(str(src))
            img = nib.Nifti1Image(arr, affine, header=header)
            img.set_data_dtype(np.uint8)
            img.header.set_slope_inter(1.0, 0.0)
            if header is not None:
                img.set_qform(affine, int(header["qform_code"]) or 1)
                img.set_sform(affine, int(header["sform_code"]) or 1)
            os.makedirs(self.output_dir, exist_ok=True)
            tmp = dst[: -len(".nii.gz")] + ".tmp.nii.gz"  # same folder, so os.replace is atomic
            nib.save(img, tmp)
            os.replace(tmp, dst)
            data[f"{key}_path"] = dst
        return data


def _is_volume(path: str) -> bool:
    return path.lower().endswith(_VOLUME_SUFFIXES) and not path.lower().endswith(".tmp.nii.gz")


def list_volumes(
    input: Union[str, Sequence[str], None] = None,
    datalist: Optional[str] = None,
    data_list_key: str = "test",
    base_dir: Optional[str] = None,
    output_dir: Optional[str] = None,
    postfix: str = "seg",
    overwrite: bool = False,
) -> List[Dict[str, str]]:
    """Volumes to segment, as ``[{"image": path}]``, minus those whose output already exists.

    Args:
        input: a volume file, a folder (volume files, or DICOM series sub-folders, or itself one DICOM series),
            or a list of such paths.
        datalist: decathlon JSON, used when ``input`` is not given.
        data_list_key: section of the datalist (``test``, ``validation`` …).
        base_dir: base for relative datalist paths (default: the datalist's folder).
        output_dir: where outputs go; existing outputs are skipped unless ``overwrite``.
        postfix: output name suffix (must match the saver's).
        overwrite: keep inputs whose output exists.

    Returns:
        A list of dicts for a MONAI Dataset.
    """
    paths: List[str] = []
    if not input and datalist:
        with open(datalist) as f:
            items = json.load(f).get(data_list_key)
        if items is None:
            raise ValueError(f"bundle/inference.py: datalist {datalist} has no {data_list_key!r} section.")
        root = base_dir or os.path.dirname(os.path.abspath(datalist))
        for item in items:
            rel = item["image"] if isinstance(item, dict) else item
            paths.append(rel if os.path.isabs(rel) else os.path.join(root, rel))
    else:
        for entry in [input] if isinstance(input, str) else list(input or []):
            if os.path.isdir(entry):
                files = sorted(glob.glob(os.path.join(entry, "*")))
                volumes = [p for p in files if os.path.isfile(p) and _is_volume(p)]
                # a sub-folder is a DICOM series unless it holds volume files (e.g. imagesTr/)
                subdirs = [p for p in files if os.path.isdir(p)]
                series = [p for p in subdirs if not any(_is_volume(f) for f in os.listdir(p))]
                bare_series = not volumes and not subdirs and files  # the folder itself is one DICOM series
                paths += [entry] if bare_series else volumes + series
            elif os.path.exists(entry):
                paths.append(entry)
            else:
                raise ValueError(f"bundle/inference.py: input {entry} does not exist.")
    if output_dir and not overwrite:
        paths = [p for p in paths if not os.path.exists(output_path(p, output_dir, postfix))]
    return [{"image": p} for p in paths]
