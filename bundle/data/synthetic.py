"""Tiny synthetic CT cases (NIfTI, HU-like, two organs) and a decathlon datalist, for checks that need data.

The model zoo's CI runs each workflow on small random files written by its unit tests; ``scripts/verify_bundle.py``
and the tests do the same with these cases.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import nibabel as nib
import numpy as np

__all__ = ["write_synthetic_case", "write_synthetic_dataset"]


def write_synthetic_case(
    image_path: str,
    label_path: str,
    shape: Sequence[int] = (40, 36, 3),
    seed: int = 0,
    affine: Optional[np.ndarray] = None,
) -> tuple[str, str]:
    """Writes a synthetic CT (HU, float32) and its uint8 label map (liver = 5, spleen = 1) on a non-trivial affine.

    Args:
        image_path: NIfTI path of the image.
        label_path: NIfTI path of the label map.
        shape: (H, W, D) in voxels; D is the axial (slice) axis.
        seed: noise seed.
        affine: 4×4 voxel-to-world matrix; default 0.8 × 0.7 × 3 mm with an offset.

    Returns:
        ``(image_path, label_path)``.
    """
    rng = np.random.default_rng(seed)
    img = rng.normal(-50, 60, tuple(shape)).astype(np.float32)
    lab = np.zeros(tuple(shape), np.uint8)
    h, w = shape[:2]
    lab[h // 4 : h // 2, w // 4 : w // 2] = 5
    lab[h // 2 : 3 * h // 4, w // 2 : 3 * w // 4, 1:] = 1
    img[lab > 0] += 150  # organs brighter than the background, so a few iterations can learn something
    if affine is None:
        affine = np.diag([0.8, 0.7, 3.0, 1.0])
        affine[:3, 3] = [-10.0, 5.0, 20.0]
    nib.save(nib.Nifti1Image(img, affine), image_path)
    nib.save(nib.Nifti1Image(lab, affine), label_path)
    return image_path, label_path


def write_synthetic_dataset(dest: str, n_cases: int = 2, shape: Sequence[int] = (40, 36, 3)) -> str:
    """Writes ``n_cases`` synthetic cases under ``dest/images`` and ``dest/dataset.json`` (decathlon layout).

    ``training`` holds every case; ``validation`` and ``test`` the first one (paths relative to ``dest``).

    Returns:
        The datalist path.
    """
    if n_cases < 1:
        raise ValueError(f"write_synthetic_dataset: n_cases must be ≥ 1, got {n_cases}.")
    os.makedirs(os.path.join(dest, "images"), exist_ok=True)
    items = []
    for i in range(n_cases):
        image, label = f"images/vol{i}.nii.gz", f"images/vol{i}_label.nii.gz"
        write_synthetic_case(os.path.join(dest, image), os.path.join(dest, label), shape=shape, seed=i)
        items.append({"image": image, "label": label})
    path = os.path.join(dest, "dataset.json")
    with open(path, "w") as f:
        json.dump({"training": items, "validation": items[:1], "test": items[:1]}, f, indent=2)
    return path
