"""The real-data demos: TotalSegmentator 2.18.0's example abdominal CT (labels remapped to the 8 Synapse organs) and
the StarDist nuclei images of the microscopy demo, each fetched from PyPI and hash-checked.

CT facts (read from the files): ``example_ct.nii.gz`` is 122×101×112 at 3 mm, RAS, lower chest to pelvis, with all 8
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
import json
import os
import subprocess
import sys
import tarfile
from typing import Dict, Optional

import nibabel as nib
import numpy as np

from bundle.data.synapse import label_names, remap_labels
from bundle.errors import InputError
from bundle.io.atomic import atomic_write_bytes
from bundle.io.datalist import write_datalist
from bundle.io.provenance import file_sha256

SDIST_VERSION = "2.18.0"


SDIST_NAME = f"totalsegmentator-{SDIST_VERSION}.tar.gz"


SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"


# TotalSegmentator "total" ids → Synapse order (spleen, kidney R, kidney L, gallbladder, liver, stomach, aorta, pancreas)
TOTALSEG_TO_SYNAPSE: Dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 52: 7, 7: 8}


_REF = f"totalsegmentator-{SDIST_VERSION}/tests/reference_files/"


_MEMBERS = ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz", "example_seg_dicom.nii.gz")


def _save(volume: np.ndarray, affine: np.ndarray, path: str, dtype) -> None:
    img = nib.Nifti1Image(volume.astype(dtype), affine)
    img.set_data_dtype(dtype)
    nib.save(img, path)


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
    digest = file_sha256(path)
    if digest != SDIST_SHA256:
        raise InputError(f"{path} has sha256 {digest}, expected {SDIST_SHA256} (pinned sdist).")
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
        labels=label_names(),
        split=f"every {holdout_every}th organ-bearing axial slice held out: {len(held)} test, {len(train)} train",
        dicom_series=os.path.relpath(dicom, dest) if os.path.isdir(dicom) else None,
    )


STARDIST_VERSION = "0.9.2"


STARDIST_SHA256 = {
    "img2d.tif": "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
    "mask2d.tif": "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
}


_STARDIST_MEMBER = "stardist/data/images/"


def fetch_stardist_images(cache: str) -> Dict[str, str]:
    """Fetches ``img2d.tif``/``mask2d.tif`` from the stardist 0.9.2 package (PyPI via pip) and checks their sha256.

    ``pip download stardist==0.9.2 --no-deps`` brings a wheel or the sdist, whichever pip picks for this platform;
    both contain ``stardist/data/images/``. Only the two files are extracted, and only after their hashes match.

    Args:
        cache: folder for the package and the extracted files (reused when already there).

    Returns:
        ``{"img2d.tif": path, "mask2d.tif": path}``.
    """
    import glob
    import zipfile

    os.makedirs(cache, exist_ok=True)
    out = {name: os.path.join(cache, name) for name in STARDIST_SHA256}
    if all(os.path.isfile(p) and file_sha256(p) == STARDIST_SHA256[n] for n, p in out.items()):
        return out
    archives = glob.glob(os.path.join(cache, f"stardist-{STARDIST_VERSION}*"))
    if not archives:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"stardist=={STARDIST_VERSION}", "-d", cache]
        subprocess.run(cmd, check=True)
        archives = glob.glob(os.path.join(cache, f"stardist-{STARDIST_VERSION}*"))
    if not archives:
        raise InputError(f"pip download of stardist=={STARDIST_VERSION} left no file in {cache}.")
    archive = sorted(archives)[0]
    for name, digest in STARDIST_SHA256.items():
        if archive.endswith(".whl"):
            with zipfile.ZipFile(archive) as z:
                data = z.read(_STARDIST_MEMBER + name)
        else:
            with tarfile.open(archive) as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith(_STARDIST_MEMBER + name))
                data = tar.extractfile(member).read()
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise InputError(
                f"{name} in {archive} has sha256 {got}, expected {digest}; "
                f"delete {cache} and fetch stardist=={STARDIST_VERSION} again."
            )
        atomic_write_bytes(out[name], data)
    return out


def build_stardist_demo(dest: str, cache: str, val_rows: int = 128) -> str:
    """Splits the stardist nuclei image: left half trains (minus a validation strip), right half tests.

    The 512×512 fluorescence image (uint16 file, values 0–235, written here as lossless 8-bit PNGs) and its
    instance mask (125 nuclei, binarised) are cut into: ``train`` = left half without its bottom ``val_rows`` rows,
    ``val`` = that bottom strip of the left half (model selection / early stopping), ``test`` = the right half,
    never used before the final evaluation. The datalist has two "folds" (0 = the validation strip), so the
    ordinary configs run with ``--fold 0``.

    Args:
        dest: output folder (``imagesTr``, ``labelsTr``, ``imagesTs``, ``labelsTs``, ``dataset.json``).
        cache: where the stardist package and the two TIFFs are kept.
        val_rows: height of the validation strip.

    Returns:
        Path of the datalist.
    """
    import tifffile
    from PIL import Image

    files = fetch_stardist_images(cache)
    img, mask = tifffile.imread(files["img2d.tif"]), tifffile.imread(files["mask2d.tif"])
    if img.max() > 255:  # not the case for the pinned file (max 235); keep the demo general
        img = img.astype(np.float64) * 255.0 / img.max()
    img, mask = img.astype(np.uint8), ((mask > 0) * 255).astype(np.uint8)
    h, w = img.shape
    half = w // 2
    parts = {
        "train": (img[: h - val_rows, :half], mask[: h - val_rows, :half], "Tr"),
        "val": (img[h - val_rows :, :half], mask[h - val_rows :, :half], "Tr"),
        "test": (img[:, half:], mask[:, half:], "Ts"),
    }
    items = {}
    for name, (im, ma, sub) in parts.items():
        os.makedirs(os.path.join(dest, f"images{sub}"), exist_ok=True)
        os.makedirs(os.path.join(dest, f"labels{sub}"), exist_ok=True)
        Image.fromarray(im).save(os.path.join(dest, f"images{sub}", f"nuclei_{name}.png"))
        Image.fromarray(ma).save(os.path.join(dest, f"labels{sub}", f"nuclei_{name}.png"))
        items[name] = {"image": f"images{sub}/nuclei_{name}.png", "label": f"labels{sub}/nuclei_{name}.png"}
    datalist = {
        "name": f"stardist {STARDIST_VERSION} nuclei demo (2018 Data Science Bowl image)",
        "layout": "stardist-demo",
        "num_folds": 2,
        "seed": None,
        "fold_rule": (
            f"left half rows 0..{h - val_rows - 1} train (fold 1), left half rows {h - val_rows}..{h - 1} "
            f"validate (fold 0), right half = test; run with --fold 0"
        ),
        "training": [dict(items["train"], fold=1), dict(items["val"], fold=0)],
        "test": [items["test"]],
    }
    path = os.path.join(dest, "dataset.json")
    with open(path, "w") as f:
        json.dump(datalist, f, indent=1)
    return path
