"""Synthetic data for checks that need data: tiny CT cases (NIfTI, HU-like, two organs) with a decathlon datalist,
a CT written as a DICOM series, and stand-in dermoscopy images.

The model zoo's CI runs each workflow on small random files written by its unit tests; ``scripts/release/verify_bundle.py``
and the tests do the same with these cases.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Optional, Sequence, Tuple

import nibabel as nib
import numpy as np

__all__ = ["write_synthetic_case", "write_synthetic_dataset", "write_body_ct", "write_dicom_series", "synthetic_lesion"]


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
        affine: 4×4 voxel-to-world matrix; default 0.8 × 0.7 × 3 mm, stored PLS (the bundle's canonical order), with an
            offset.

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
    if affine is None:  # stored in the canonical PLS order (rows → posterior, columns → patient's left)
        affine = np.array([[0.0, -0.7, 0.0, -10.0], [-0.8, 0.0, 0.0, 5.0], [0.0, 0.0, 3.0, 20.0], [0, 0, 0, 1.0]])
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


def write_body_ct(
    path: str, shape: Sequence[int] = (512, 512, 200), seed: int = 0, spacing: Sequence[float] = (0.7, 0.7, 3.0)
) -> None:
    """A CT-sized int16 NIfTI without labels, for speed and memory benchmarks: a body-like ellipse (soft tissue, one
    organ) in air, with noise, ``spacing`` mm voxels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    body = ((yy - 256) / 200.0) ** 2 + ((xx - 256) / 150.0) ** 2 < 1
    organ = ((yy - 230) / 60.0) ** 2 + ((xx - 300) / 40.0) ** 2 < 1
    vol = np.full(shape, -1000, np.int16)
    for z in range(shape[2]):
        sl = np.where(body, 40, -1000) + np.where(organ, 60 + z % 20, 0)
        vol[:, :, z] = (sl + rng.normal(0, 15, shape[:2])).astype(np.int16)
    nib.save(nib.Nifti1Image(vol, np.diag([*map(float, spacing), 1.0])), str(path))


def write_dicom_series(image_path: str, folder: str) -> str:
    """Writes a NIfTI CT as a DICOM CT series folder (one int16 file per slice, HU), as a scanner export would.

    The geometry (origin, spacing, direction) is kept through SimpleITK; DICOM needs a right-handed LPS frame, so
    give a volume stored LPS-like (e.g. the same CT reoriented with nibabel). Used to test the DICOM path end to end.

    Returns:
        ``folder``.
    """
    import locale

    import SimpleITK as sitk

    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer switches the process to the "C" locale, after
    try:  # which Python opens text files (the bundle's YAML configs) as ASCII
        return _write_dicom_series(sitk, str(image_path), folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)


def _write_dicom_series(sitk, image_path: str, folder: str) -> str:
    img = sitk.Cast(sitk.ReadImage(image_path), sitk.sitkInt16)
    os.makedirs(folder, exist_ok=True)
    direction = img.GetDirection()
    series = "1.2.826.0.1.3680043.2.1125.1." + str(zlib.crc32(image_path.encode()))  # same file, same UID
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "0008|0018": f"{series}.{k + 1}",
            "0020|000d": series + ".0",
            "0020|000e": series,
            "0020|0013": str(k + 1),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[0:7:3], *direction[1:8:3])),
            "0020|0032": "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0028|0030": f"{img.GetSpacing()[1]:.6f}\\{img.GetSpacing()[0]:.6f}",
            "0018|0050": f"{img.GetSpacing()[2]:.6f}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(os.path.join(folder, f"IM{k + 1:04d}.dcm"))
        writer.Execute(sl)
    return folder


def synthetic_lesion(h: int, w: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A stand-in "dermoscopy" image for tests and smoke runs: skin tone + noise with one dark elliptical lesion.

    Not a dermoscopy image: it only exercises loading, the split, training, evaluation and inference.

    Args:
        h: height in pixels.
        w: width in pixels.
        rng: random generator (lesion centre and radii, then the noise, are drawn from it in that order).

    Returns:
        ``(image, mask)``: uint8 RGB (h, w, 3) and the lesion as a uint8 0/255 mask (h, w).
    """
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    ry, rx = h * rng.uniform(0.15, 0.3), w * rng.uniform(0.15, 0.3)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    img = np.empty((h, w, 3))
    img[:] = (205, 160, 140)
    img[mask] = (95, 55, 45)
    img += rng.normal(0, 8, img.shape)
    return img.clip(0, 255).astype(np.uint8), (mask * 255).astype(np.uint8)
