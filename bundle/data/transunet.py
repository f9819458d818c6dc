"""Import TransUNet's preprocessed Synapse release (``train_npz/`` + ``test_vol_h5/``) as NIfTI volumes.

Input layout::

    <src>/train_npz/caseXXXX_sliceYYY.npz     image (512, 512) float in [0, 1], label (512, 512) uint8
    <src>/test_vol_h5/caseXXXX.npy.h5          image (D, 512, 512) float in [0, 1], label (D, 512, 512)

The release's intensities are HU clipped to [-125, 275] and scaled to [0, 1]; we map them back to HU
(``x·400 − 125``) so one pipeline (the HU window in ``bundle.transforms.ct``) serves every source. Training slices
are restacked per case in slice order, axial last ((H, W, D) with H, W = the npz rows, columns). The release has no
spacing (TransUNet evaluates in voxels too), so the affine has 1 mm voxels and declares the slices' layout:
rows toward the patient's posterior, columns toward the patient's left, slices toward superior (``PLS``, the
bundle's canonical order, ``docs/orientation.md``), so the pipeline's reorientation leaves them exactly as the
official code reads them.
"""

from __future__ import annotations

import glob
import os
import re
from collections import defaultdict
from typing import Dict, List

import nibabel as nib
import numpy as np

from bundle.data.synapse import HU_WINDOW, label_names
from bundle.errors import InputError
from bundle.io.datalist import write_datalist

__all__ = ["import_transunet"]

_HU_LOW, _HU_RANGE = HU_WINDOW[0], HU_WINDOW[1] - HU_WINDOW[0]  # the release stores (HU - low) / range
# voxel (row, column, slice) → RAS world: rows → posterior (−y), columns → patient's left (−x), slices → superior
PLS_AFFINE = np.array([[0.0, -1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _save(volume: np.ndarray, path: str, dtype) -> None:
    img = nib.Nifti1Image(volume.astype(dtype), PLS_AFFINE)
    img.set_data_dtype(dtype)
    nib.save(img, path)


def _to_hu(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) * _HU_RANGE + _HU_LOW).astype(np.float32)


def import_transunet(src: str, dst: str, validation_from_test: bool = True) -> str:
    """Converts ``train_npz`` slices and ``test_vol_h5`` volumes into NIfTI + ``<dst>/dataset.json``.

    Args:
        src: folder holding ``train_npz/`` and/or ``test_vol_h5/``.
        dst: output dataset folder.
        validation_from_test: list the test volumes under ``validation`` too (the official practice).

    Returns:
        Path of the datalist.
    """
    import h5py

    npz_files = sorted(glob.glob(os.path.join(src, "train_npz", "*.npz")))
    h5_files = sorted(glob.glob(os.path.join(src, "test_vol_h5", "*.h5")))
    if not npz_files and not h5_files:
        raise InputError(f"{src} has neither train_npz/*.npz nor test_vol_h5/*.h5.")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(dst, sub), exist_ok=True)

    slices: Dict[str, List[tuple]] = defaultdict(list)
    for f in npz_files:
        match = re.match(r"(case\d+)_slice(\d+)\.npz$", os.path.basename(f))
        if match is None:
            raise InputError(f"{f} is not named caseXXXX_sliceYYY.npz.")
        slices[match.group(1)].append((int(match.group(2)), f))
    training = []
    for case, items in sorted(slices.items()):
        images, labels = [], []
        for _, f in sorted(items):
            with np.load(f) as data:
                images.append(_to_hu(data["image"]))
                labels.append(np.asarray(data["label"], dtype=np.uint8))
        name = f"{case}.nii.gz"
        _save(np.stack(images, -1), os.path.join(dst, "imagesTr", name), np.float32)
        _save(np.stack(labels, -1), os.path.join(dst, "labelsTr", name), np.uint8)
        training.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})

    test = []
    for f in h5_files:
        case = os.path.basename(f).split(".")[0]
        with h5py.File(f, "r") as data:
            image, label = np.asarray(data["image"]), np.asarray(data["label"])
        name = f"{case}.nii.gz"
        # (D, H, W) → (H, W, D): axial last, as the NIfTI loaders return it
        _save(np.moveaxis(_to_hu(image), 0, -1), os.path.join(dst, "imagesTs", name), np.float32)
        _save(np.moveaxis(label.astype(np.uint8), 0, -1), os.path.join(dst, "labelsTs", name), np.uint8)
        test.append({"image": f"imagesTs/{name}", "label": f"labelsTs/{name}"})

    sections = {"training": training, "test": test}
    if validation_from_test:
        sections["validation"] = test
    return write_datalist(
        os.path.join(dst, "dataset.json"), sections, name="Synapse (TransUNet release)", labels=label_names()
    )
