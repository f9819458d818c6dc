"""Scoring the demo's predictions against its references (TotalSegmentator model outputs, not manual labels):
per-organ Dice on whole volumes, compared in one canonical voxel order whatever order each file is stored in.

Used by ``scripts/demo/run_demo.py`` and the benchmarks that score the demo (``scripts/benchmarks/dicom_seg.py``), so
every figure they print is computed one way.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from bundle.data.demos import TOTALSEG_TO_SYNAPSE
from bundle.data.synapse import ORGANS, remap_labels
from bundle.errors import InputError
from bundle.evaluation.metrics import dice
from bundle.transforms.geometry import reorient_array

# the organs the DICOM series' reference holds in quantity: the headline DICOM mean is over these four. Its 20 slices
# of upper abdomen hold no kidney or gallbladder, and only 1,327 voxels of pancreas (its edge); that organ is scored
# and reported too (the mean over every organ in the reference).
DICOM_ORGANS = ("spleen", "liver", "stomach", "aorta")


def load_canonical(path: str, dtype=None) -> np.ndarray:
    """A NIfTI file's array in PLS order (flips/permutations by its own affine): volumes stored in any order then
    compare voxel for voxel, and ``imshow`` of a slice is the radiological view."""
    img = nib.load(path)
    return reorient_array(np.asarray(img.dataobj, dtype=dtype), img.affine)


def dice_per_organ(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Dice per Synapse organ (labels 1..8) on whole volumes; NaN for an organ in neither (no score, not 0)."""
    return {
        name: dice(pred == i, truth == i) if (pred == i).any() or (truth == i).any() else float("nan")
        for i, name in enumerate(ORGANS, start=1)
    }


def _world_box(img) -> np.ndarray:
    n = np.array(img.shape[:3]) - 1
    corners = np.array([[i, j, k, 1] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    return np.sort((img.affine @ corners.T)[:3].T, axis=0)


def reference_dice(pred_path: str, label_path: str) -> tuple:
    """Dice of a prediction against a TotalSegmentator reference for every organ the reference holds, and that
    organ's voxel count in the reference, compared in world space.

    Both files are reoriented to PLS by their own affines (the DICOM series' reference is stored LAS, its prediction
    LPS) after checking that they cover the same world box.

    Returns:
        ``({organ: Dice}, {organ: reference voxels})`` over the organs present in the reference.
    """
    if not np.allclose(_world_box(nib.load(pred_path)), _world_box(nib.load(label_path)), atol=1e-2):
        raise InputError(f"{pred_path} and {label_path} do not cover the same voxels in the world.")
    pred = load_canonical(pred_path)
    truth = remap_labels(load_canonical(label_path).astype(np.int64), TOTALSEG_TO_SYNAPSE)
    scores = dice_per_organ(pred, truth)
    voxels = {name: int((truth == i).sum()) for i, name in enumerate(ORGANS, start=1)}
    return {k: scores[k] for k in ORGANS if voxels[k]}, {k: v for k, v in voxels.items() if v}
