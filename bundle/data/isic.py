"""ISIC2018 Task 1 (lesion boundary segmentation): pairing, the 1815/259/520 split, the decathlon datalist.

MSA²Net (Kolahi et al., BMVC 2024, §4.1) uses the 2594 images of the ISIC2018 Task 1 *training* release with the
split of DermoSegDiff / D-LKA: 1815 train, 259 validation, 520 test. Those codes take the first 1815 / next 259 /
last 520 files of an **unsorted** ``glob`` (filesystem order), which cannot be reproduced elsewhere
(``docs/official_code.md`` §7). Here the ISIC ids are sorted, permuted with ``numpy.random.default_rng(seed)`` and cut
1815 / 259 / 520, and the id lists are written to ``split.json`` so a split can be shared and re-used exactly.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from bundle.errors import InputError
from bundle.io.atomic import atomic_write_text

ISIC2018_SPLIT = (1815, 259, 520)  # train, validation, test over the 2594 Task 1 training images


IMAGES_DIR = "ISIC2018_Task1-2_Training_Input"  # official download folder names


MASKS_DIR = "ISIC2018_Task1_Training_GroundTruth"


# MSA²Net row of the paper's Table 2 (ISIC2018); IoU is not reported there.
PAPER_MSA2NET_ISIC2018 = {
    "method": "MSA²Net (paper, Table 2)",
    "dsc": 0.9129,
    "iou": None,
    "acc": 0.9640,
    "se": 0.8840,
    "sp": 0.9557,
}


_IMAGE_RE = re.compile(r"^(ISIC_\d+)\.jpe?g$", re.IGNORECASE)


_MASK_RE = re.compile(r"^(ISIC_\d+)_segmentation\.png$", re.IGNORECASE)


_SECTIONS = ("training", "validation", "test")


def _scan(folder: str, pattern: re.Pattern, what: str) -> Dict[str, str]:
    if not os.path.isdir(folder):
        raise InputError(f"{what} folder {folder} does not exist (expected the official layout).")
    found = {}
    for name in sorted(os.listdir(folder)):
        m = pattern.match(name)
        if m:
            found[m.group(1)] = os.path.join(folder, name)
    return found


def find_pairs(images_dir: str, masks_dir: str) -> Dict[str, Tuple[str, str]]:
    """Pairs ``ISIC_<id>.jpg`` with ``ISIC_<id>_segmentation.png`` (other files, e.g. LICENSE.txt, are ignored).

    Args:
        images_dir: folder of the Task 1-2 training input images.
        masks_dir: folder of the Task 1 ground-truth masks.

    Returns:
        ``{id: (image path, mask path)}`` sorted by id.

    Raises:
        ValueError: a folder is missing or empty, or an image has no mask (or a mask no image).
    """
    images = _scan(images_dir, _IMAGE_RE, "image")
    masks = _scan(masks_dir, _MASK_RE, "mask")
    if not images:
        raise InputError(f"no ISIC_<id>.jpg images in {images_dir}.")
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask or no_image:
        raise InputError(
            "every image needs its mask and vice versa; "
            f"{len(no_mask)} image(s) without ISIC_<id>_segmentation.png in {masks_dir} (first: {no_mask[:3]}), "
            f"{len(no_image)} mask(s) without ISIC_<id>.jpg in {images_dir} (first: {no_image[:3]}). "
            "Re-extract both official archives."
        )
    return {i: (images[i], masks[i]) for i in sorted(images)}


def split_ids(ids: Sequence[str], seed: int = 0, counts: Sequence[int] = ISIC2018_SPLIT) -> Dict[str, List[str]]:
    """Reproducible split: sort ids, permute with ``default_rng(seed)``, cut train / validation / test.

    With ``sum(counts)`` ids (2594 for ISIC2018) the cut is exactly ``counts``; with another number of ids the
    same proportions are used (validation and test rounded, the rest trains).

    Args:
        ids: unique image ids.
        seed: permutation seed.
        counts: (train, validation, test) sizes for the full set.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, each sorted.
    """
    ids = sorted(ids)
    if len(set(ids)) != len(ids):
        raise InputError("image ids must be unique.")
    n, total = len(ids), int(sum(counts))
    if n == total:
        n_train, n_val, n_test = (int(c) for c in counts)
    else:
        n_val, n_test = round(n * counts[1] / total), round(n * counts[2] / total)
        n_train = n - n_val - n_test
    if min(n_train, n_val, n_test) < 1:
        raise InputError(f"{n} images are too few for a train/validation/test split.")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    cuts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    return {name: sorted(part) for name, part in zip(_SECTIONS, cuts)}


def _load_split(path: str, pairs: Mapping[str, Tuple[str, str]]) -> Dict[str, List[str]]:
    with open(path) as f:
        split = json.load(f)
    missing = sorted({i for s in _SECTIONS for i in split.get(s, [])} - set(pairs))
    if missing or any(s not in split for s in _SECTIONS):
        raise InputError(
            f"split file {path} needs {_SECTIONS} id lists that all exist in the data; "
            f"{len(missing)} id(s) not found (first: {missing[:3]})."
        )
    return {s: list(split[s]) for s in _SECTIONS}


def prepare_isic2018(
    src: Optional[str] = None,
    dst: str = "data/isic2018",
    images_dir: Optional[str] = None,
    masks_dir: Optional[str] = None,
    seed: int = 0,
    split_file: Optional[str] = None,
) -> str:
    """Writes ``<dst>/dataset.json`` (decathlon datalist) and ``<dst>/split.json`` (the id lists) for ISIC2018.

    Files are not copied: datalist paths point to the downloaded files, relative to ``dst`` (the configs'
    ``dataset_dir``), so moving ``dst`` and the download together keeps it valid.

    Args:
        src: folder holding the official ``ISIC2018_Task1-2_Training_Input/`` and
            ``ISIC2018_Task1_Training_GroundTruth/`` folders.
        dst: output folder.
        images_dir: the image folder, if not ``<src>/ISIC2018_Task1-2_Training_Input``.
        masks_dir: the mask folder, if not ``<src>/ISIC2018_Task1_Training_GroundTruth``.
        seed: split seed (ignored with ``split_file``).
        split_file: re-use the id lists of an existing ``split.json`` instead of drawing a split.

    Returns:
        The datalist path.
    """
    if images_dir is None or masks_dir is None:
        if src is None:
            raise InputError("give --src (official layout) or both --images_dir and --masks_dir.")
        images_dir = images_dir or os.path.join(src, IMAGES_DIR)
        masks_dir = masks_dir or os.path.join(src, MASKS_DIR)
    pairs = find_pairs(images_dir, masks_dir)
    split = _load_split(split_file, pairs) if split_file else split_ids(list(pairs), seed=seed)
    os.makedirs(dst, exist_ok=True)
    root = os.path.abspath(dst)

    def item(i):
        img, lab = pairs[i]
        return {
            "image": os.path.relpath(os.path.abspath(img), root),
            "label": os.path.relpath(os.path.abspath(lab), root),
        }

    counts = {s: len(split[s]) for s in _SECTIONS}
    split_doc = {
        "dataset": "ISIC2018 Task 1 training release",
        "rule": "sorted ISIC ids, numpy.random.default_rng(seed).permutation, cut 1815/259/520 (proportional if "
        "the image count is not 2594); ids sorted within each section",
        "seed": None if split_file else int(seed),
        "source_split_file": os.path.abspath(split_file) if split_file else None,
        "counts": counts,
        **split,
    }
    datalist = {
        "name": "ISIC2018 Task 1",
        "description": "dermoscopy lesion segmentation; image = ISIC_<id>.jpg, label = ISIC_<id>_segmentation.png",
        "split_file": "split.json",
        "counts": counts,
        **{s: [item(i) for i in split[s]] for s in _SECTIONS},
    }

    atomic_write_text(os.path.join(dst, "split.json"), json.dumps(split_doc, indent=1) + "\n")
    path = os.path.join(dst, "dataset.json")
    atomic_write_text(path, json.dumps(datalist, indent=1) + "\n")
    return path
