"""Raw BTCV abdomen (13 labels) → the 8 Synapse organs and the TransUNet split, as NIfTI + decathlon datalist.

Input layout (the BTCV "RawData/Training" release)::

    <src>/img/img0001.nii.gz     <src>/label/label0001.nii.gz    ...

Output layout (``dataset_dir``)::

    <dst>/imagesTr/case0001.nii.gz   <dst>/labelsTr/case0001.nii.gz   <dst>/dataset.json

The image is copied unchanged (HU; windowing happens in the transforms); the label is remapped with
``BTCV_TO_SYNAPSE`` (ids not listed become background) and written as uint8 on the image's grid.
"""

from __future__ import annotations

import os
import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import nibabel as nib
import numpy as np

from bundle.errors import InputError
from bundle.io.datalist import write_datalist

HU_WINDOW = (-125.0, 275.0)


ORGANS = ("spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas")


# BTCV ids: 1 spleen, 2 right kidney, 3 left kidney, 4 gallbladder, 6 liver, 7 stomach, 8 aorta, 11 pancreas.
BTCV_TO_SYNAPSE: Dict[int, int] = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}


TRANSUNET_TEST_CASES = (1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38)


def remap_labels(label: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Maps label ids with ``mapping``; every id not in it becomes 0. Returns uint8."""
    lut = np.zeros(int(max(int(label.max()), max(mapping))) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        lut[int(src)] = dst
    return lut[np.clip(label, 0, None).astype(np.int64)]


def _case_id(name: str) -> int:
    match = re.search(r"(\d+)", os.path.basename(name))
    if match is None:
        raise InputError(f"no case number in file name {name}.")
    return int(match.group(1))


def split_cases(case_ids: Iterable[int], test_cases: Sequence[int] = TRANSUNET_TEST_CASES) -> Dict[str, List[int]]:
    """TransUNet split: the 12 listed cases are ``test``, the others ``training``."""
    ids = sorted(case_ids)
    return {"training": [c for c in ids if c not in test_cases], "test": [c for c in ids if c in test_cases]}


def prepare_btcv(
    src: str, dst: str, test_cases: Optional[Sequence[int]] = None, validation_from_test: bool = True
) -> str:
    """Converts raw BTCV to the Synapse 8-organ layout and writes ``<dst>/dataset.json``.

    Args:
        src: folder with ``img/imgXXXX.nii.gz`` and ``label/labelXXXX.nii.gz``.
        dst: output dataset folder.
        test_cases: case numbers held out (default: the TransUNet 12).
        validation_from_test: also list the test cases under ``validation`` (the official code validates on
            the test set; set False and edit the datalist to validate on a split of the training cases instead).

    Returns:
        Path of the datalist.
    """
    img_dir, lab_dir = os.path.join(src, "img"), os.path.join(src, "label")
    if not os.path.isdir(img_dir) or not os.path.isdir(lab_dir):
        raise InputError(f"{src} must contain img/ and label/ (raw BTCV layout).")
    images = {_case_id(f): os.path.join(img_dir, f) for f in os.listdir(img_dir) if f.endswith((".nii", ".nii.gz"))}
    labels = {_case_id(f): os.path.join(lab_dir, f) for f in os.listdir(lab_dir) if f.endswith((".nii", ".nii.gz"))}
    missing = sorted(set(images) ^ set(labels))
    if missing:
        raise InputError(f"cases {missing} have an image or a label but not both in {src}.")
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(dst, sub), exist_ok=True)
    entries: Dict[int, Dict[str, str]] = {}
    for case in sorted(images):
        name = f"case{case:04d}.nii.gz"
        img = nib.load(images[case])
        nib.save(img, os.path.join(dst, "imagesTr", name))
        lab = nib.load(labels[case])
        if lab.shape != img.shape:
            raise InputError(f"label shape {lab.shape} != image shape {img.shape} ({labels[case]}).")
        out = nib.Nifti1Image(remap_labels(np.asarray(lab.dataobj), BTCV_TO_SYNAPSE), img.affine, header=img.header)
        out.set_data_dtype(np.uint8)
        out.header.set_slope_inter(1.0, 0.0)
        nib.save(out, os.path.join(dst, "labelsTr", name))
        entries[case] = {"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"}
    split = split_cases(entries, TRANSUNET_TEST_CASES if test_cases is None else test_cases)
    sections = {k: [entries[c] for c in v] for k, v in split.items()}
    if validation_from_test:
        sections["validation"] = sections["test"]
    return write_datalist(
        os.path.join(dst, "dataset.json"), sections, name="Synapse (BTCV) 8 organs", labels=label_names()
    )


def label_names() -> Dict[str, str]:
    """The datalist's "labels" entry: label id (as text) → organ name, background included."""
    return {"0": "background", **{str(i + 1): n for i, n in enumerate(ORGANS)}}
