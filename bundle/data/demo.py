"""The real-CT demo: TotalSegmentator 2.18.0's example abdominal CT, its labels remapped to the 8 Synapse organs.

Facts (``demo_data.md``): ``example_ct.nii.gz`` is 122×101×112 at 3 mm, RAS, lower chest to pelvis, with all 8
organs in ``example_seg_fast_force_split.nii.gz``. **The labels are TotalSegmentator model outputs (its regression
references), not manual annotations.** The sdist is pinned and hash-checked; nothing else is downloaded.

Held-out split (one volume, so the split is by slices): among the axial slices that contain any organ, every 4th
(the 1st, 5th, 9th … in slice order) is held out; the other organ-bearing slices train (slices without any organ
are dropped, so a short CPU schedule is not spent on empty pelvis/chest slices). The two sets are written as separate
volumes on the original in-plane grid (the z step of the affine is then nominal). Held-out slices have trained
neighbours 3 mm away, so the demo Dice measures that the pipeline learns real anatomy, not generalisation to new
patients. The DICOM series (a different scan, 512×512×20) is extracted for an inference-only check.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from typing import Dict, Optional

import nibabel as nib
import numpy as np

from .synapse import _label_names, remap_labels, write_datalist

__all__ = ["SDIST_SHA256", "TOTALSEG_TO_SYNAPSE", "fetch_sdist", "extract", "build_demo"]

SDIST_VERSION = "2.18.0"
SDIST_NAME = f"totalsegmentator-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
# TotalSegmentator "total" ids → Synapse order (spleen, kidney R, kidney L, gallbladder, liver, stomach, aorta, pancreas)
TOTALSEG_TO_SYNAPSE: Dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 52: 7, 7: 8}
_REF = f"totalsegmentator-{SDIST_VERSION}/tests/reference_files/"
_MEMBERS = ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", "example_seg_dicom.nii.gz")


def sha256(path: str) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(dest: str, sdist: Optional[str] = None) -> str:
    """Downloads the pinned sdist with pip (or uses ``sdist``) and checks its sha256.

    Args:
        dest: folder for the archive.
        sdist: an already downloaded archive to use instead.

    Returns:
        Path of the verified archive.
    """
    os.makedirs(dest, exist_ok=True)
    path = sdist or os.path.join(dest, SDIST_NAME)
    if not os.path.exists(path):
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "totalsegmentator"]
        subprocess.run(cmd + [f"totalsegmentator=={SDIST_VERSION}", "-d", dest], check=True)
    digest = sha256(path)
    if digest != SDIST_SHA256:
        raise ValueError(f"bundle/data/demo.py: {path} has sha256 {digest}, expected {SDIST_SHA256} (pinned sdist).")
    return path


def extract(archive: str, dest: str) -> str:
    """Extracts the example CT, its labels and the DICOM series into ``dest/raw``; returns that folder."""
    raw = os.path.join(dest, "raw")
    os.makedirs(raw, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.name.startswith(_REF) or not member.isfile():
                continue
            rel = member.name[len(_REF) :]
            if rel in _MEMBERS or rel.startswith("example_ct_dicom/"):
                member.name = rel  # flatten; names come from a hash-checked archive
                tar.extract(member, raw, filter="data")
    return raw


def _save(volume: np.ndarray, affine: np.ndarray, path: str, dtype) -> None:
    img = nib.Nifti1Image(volume.astype(dtype), affine)
    img.set_data_dtype(dtype)
    nib.save(img, path)


def build_demo(dest: str = "demo_data", sdist: Optional[str] = None, holdout_every: int = 4) -> str:
    """Fetches, verifies, remaps and splits the demo; writes ``<dest>/dataset.json``.

    Args:
        dest: output folder (gitignored ``demo_data/`` by default).
        sdist: use this already downloaded sdist.
        holdout_every: hold out every n-th organ-bearing axial slice.

    Returns:
        Path of the datalist.
    """
    archive = fetch_sdist(os.path.join(dest, "downloads"), sdist)
    raw = extract(archive, dest)
    ct = nib.load(os.path.join(raw, "example_ct.nii.gz"))
    image = np.asarray(ct.dataobj, dtype=np.float32)
    seg = np.asarray(nib.load(os.path.join(raw, "example_seg_fast_force_split.nii.gz")).dataobj)
    label = remap_labels(seg.astype(np.int64), TOTALSEG_TO_SYNAPSE)
    organ_slices = np.flatnonzero(label.reshape(-1, label.shape[-1]).max(0) > 0)
    held = organ_slices[::holdout_every]
    train = np.setdiff1d(organ_slices, held)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(dest, sub), exist_ok=True)
    _save(image[..., train], ct.affine, os.path.join(dest, "imagesTr", "demo_train.nii.gz"), np.float32)
    _save(label[..., train], ct.affine, os.path.join(dest, "labelsTr", "demo_train.nii.gz"), np.uint8)
    _save(image[..., held], ct.affine, os.path.join(dest, "imagesTs", "demo_test.nii.gz"), np.float32)
    _save(label[..., held], ct.affine, os.path.join(dest, "labelsTs", "demo_test.nii.gz"), np.uint8)
    dicom = os.path.join(raw, "example_ct_dicom")
    tr = [{"image": "imagesTr/demo_train.nii.gz", "label": "labelsTr/demo_train.nii.gz"}]
    ts = [{"image": "imagesTs/demo_test.nii.gz", "label": "labelsTs/demo_test.nii.gz"}]
    return write_datalist(
        os.path.join(dest, "dataset.json"),
        {"training": tr, "validation": ts, "test": ts},
        name="TotalSegmentator 2.18.0 example CT (model-made labels)",
        labels=_label_names(),
        split=f"every {holdout_every}th organ-bearing axial slice held out: {len(held)} test, {len(train)} train",
        dicom_series=os.path.relpath(dicom, dest) if os.path.isdir(dicom) else None,
    )
