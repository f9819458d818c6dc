"""Score an existing folder of predicted label maps (any tool's) against a folder of reference labels.

The scoring is ``run evaluating``'s: every pair goes through :class:`bundle.evaluation.reports.SegmentationReport`
(protocol + clinical metrics of :func:`bundle.evaluation.metrics.evaluate_case`), which writes the same ``metrics_long.csv``,
``summary.json`` and ``table1.md``. Both masks are first put in the canonical storage order (``axcodes``, ``PLS``
by default, as ``configs/evaluate.yaml`` does with the checkpoint's order), so the figures equal the
evaluator's on the same masks; the case is named after the label file, as there.

Pairing (:func:`case_key`): a file's case name is its name without the extension (``.nii.gz``, ``.nii``,
``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) and without **one** trailing suffix of :data:`PAIR_SUFFIXES`
(``_seg`` as this bundle's inference writes, ``_label``, ``_gt`` …), on both sides; prefixes are never stripped
(rename such files). Two files of one folder with the same case name, a case on one side only, a pair whose shapes
or voxel-to-world matrices differ, and label values outside ``0..num_classes-1`` are refused with one line naming
the files and the fix (:class:`bundle.errors.InputError`).
"""

from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from monai.transforms import LoadImage, Orientation

from bundle.errors import InputError
from bundle.evaluation.metrics import SYNAPSE_CLASSES
from bundle.evaluation.reports import SegmentationReport
from bundle.io.volume import quiet_default_readers
from bundle.transforms.geometry import check_axcodes

__all__ = ["MASK_SUFFIXES", "PAIR_SUFFIXES", "case_key", "list_masks", "pair_cases", "load_mask", "evaluate_folder"]

MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# stripped once from the end of a case name (longest first): what tools append to predictions and references
PAIR_SUFFIXES = ("_prediction", "_labels", "_label", "_pred", "_mask", "_seg", "_gt")


def _strip_extension(name: str) -> Optional[str]:
    low = name.lower()
    for ext in MASK_SUFFIXES:
        if low.endswith(ext):
            return name[: -len(ext)]
    return None


def case_key(path: str) -> Optional[str]:
    """Case name used for pairing: file name without extension and one :data:`PAIR_SUFFIXES` suffix.

    ``None`` for files that are not label volumes (other extensions, hidden and temporary files).
    """
    name = os.path.basename(str(path))
    stem = _strip_extension(name)
    if stem is None or name.startswith(".") or stem.endswith(".tmp"):
        return None
    for suffix in PAIR_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def list_masks(folder: str, what: str) -> Dict[str, str]:
    """``{case name: path}`` of the label volumes directly in ``folder`` (``what``: ``--pred`` / ``--label``).

    Raises:
        InputError: the folder does not exist, holds no label volume, or two files share a case name.
    """
    folder = str(folder)
    if not os.path.isdir(folder):
        raise InputError(f"{what} {folder} is not a folder: give the folder that holds the label volumes.")
    found: Dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        key = case_key(name)
        if key is None or not os.path.isfile(path):
            continue
        if key in found:
            raise InputError(
                f"{what} {folder}: {os.path.basename(found[key])} and {name} are both case {key!r} (suffixes "
                f"{', '.join(PAIR_SUFFIXES)} are ignored for pairing): keep one mask per case in the folder (images "
                "and labels in one folder: point at a folder of labels only)."
            )
        found[key] = path
    if not found:
        raise InputError(
            f"{what} {folder} holds no label volume ({', '.join(MASK_SUFFIXES)}): give the folder of the masks."
        )
    return found


def _few(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" … ({len(names)} in all)" if len(names) > n else "")


def pair_cases(pred_dir: str, label_dir: str) -> List[Tuple[str, str, str]]:
    """``[(case name, prediction path, label path)]`` sorted by case name; every case must be on both sides.

    Raises:
        InputError: a folder is missing or empty, a case name repeats, or cases are unmatched (both lists named).
    """
    preds, labels = list_masks(pred_dir, "--pred"), list_masks(label_dir, "--label")
    only_pred = sorted(set(preds) - set(labels))
    only_label = sorted(set(labels) - set(preds))
    if only_pred or only_label:
        parts = []
        if only_pred:
            parts.append(f"{len(only_pred)} prediction(s) in {pred_dir} without a label in {label_dir}: "
                         + _few([os.path.basename(preds[k]) for k in only_pred]))  # fmt: skip
        if only_label:
            parts.append(f"{len(only_label)} label(s) in {label_dir} without a prediction in {pred_dir}: "
                         + _few([os.path.basename(labels[k]) for k in only_label]))  # fmt: skip
        raise InputError(
            "; ".join(parts) + ". Cases pair by file name without extension and one suffix "
            f"({', '.join(PAIR_SUFFIXES)}): give folders holding the same cases, or move the extra files away."
        )
    return [(k, preds[k], labels[k]) for k in sorted(preds)]


def load_mask(path: str):
    """A label volume as a channel-first MONAI ``MetaTensor`` (1, H, W, D) in its stored order.

    Raises:
        InputError: the file cannot be read, or is not one 3D volume.
    """

    try:
        with quiet_default_readers():
            loader = LoadImage(image_only=True, ensure_channel_first=True)
        img = loader(str(path))
    except Exception as err:
        while err.__cause__ is not None:  # MONAI's wrapper says nothing about the file
            err = err.__cause__
        raise InputError(
            f"mask {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
            ": the file is truncated, corrupt or not a label volume; re-export or re-copy it."
        ) from None
    if img.ndim != 4 or img.shape[0] != 1:
        raise InputError(
            f"mask {path} has shape {tuple(img.shape)[1:] if img.shape[0] == 1 else tuple(img.shape)}: one 3D label "
            "volume (H, W, D) is expected; give integer label maps, not one-hot or 4D files."
        )
    return img


def _check_pair(pred, label, pred_path: str, label_path: str, num_classes: int) -> None:
    ps, ls = tuple(pred.shape[1:]), tuple(label.shape[1:])
    if ps != ls:
        raise InputError(
            f"prediction {pred_path} has shape {ps} but its label {label_path} has {ls}: a mask must be on its "
            "label's grid; resample it onto the label (nearest neighbour) or pair the right files."
        )
    pa, la = np.asarray(pred.affine, np.float64), np.asarray(label.affine, np.float64)
    if not np.allclose(pa, la, rtol=1e-4, atol=1e-3):
        raise InputError(
            f"prediction {pred_path} has voxel-to-world matrix {np.round(pa[:3], 3).tolist()} but its label "
            f"{label_path} has {np.round(la[:3], 3).tolist()}: a mask must be on its label's grid; resample it "
            "(nearest) or copy the label's header into it if only the header is wrong."
        )
    for what, path, x in (("prediction", pred_path, pred), ("label", label_path, label)):
        values = np.unique(np.asarray(x))
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            raise InputError(f"{what} {path} holds non-integer values: give integer label maps (nearest neighbour).")
        outside = [int(v) for v in values if v < 0 or v > num_classes - 1]
        if outside:
            image = " (an image, not a label map?)" if len(values) > 255 else ""
            raise InputError(
                f"{what} {path} has label values {outside[:10]} outside 0..{num_classes - 1}{image}: map its labels to the "
                f"{num_classes - 1} organs scored (Synapse ids 1..8: scripts/data/prepare_synapse.py btcv), or set "
                "--num_classes to match."
            )


def evaluate_folder(
    pred_dir: str,
    label_dir: str,
    output_dir: str,
    num_classes: int = 9,
    class_names: Optional[Sequence[str]] = None,
    nsd_tolerance_mm: float = 2.0,
    axcodes: Optional[str] = "PLS",
) -> dict:
    """Scores every (prediction, label) pair of two folders and writes the report of ``run evaluating``.

    The folders are paired first (an unmatched case fails before any file is read); each pair is then checked
    (shape, voxel-to-world matrix, label values) as it is read, and the report is written only when all passed.

    Args:
        pred_dir: folder of predicted label volumes (any tool's).
        label_dir: folder of reference label volumes.
        output_dir: where ``metrics_long.csv``, ``summary.json`` and ``table1.md`` go (atomically).
        num_classes: label values are ``0..num_classes-1``; organs ``1..num_classes-1`` are scored.
        class_names: one name per organ; default the Synapse organs for 9 classes, else ``class_<id>``.
        nsd_tolerance_mm: NSD tolerance.
        axcodes: canonical order both masks are put in before scoring (the checkpoint's, ``PLS`` by default, as
            ``run evaluating`` scores); ``None`` keeps the stored order.

    Returns:
        The summary written to ``summary.json`` (see :func:`bundle.evaluation.tables.write_tables`), plus ``"seconds"``.

    Raises:
        InputError: unmatched or repeated cases, an unreadable file, or a mismatched pair (one line naming both).
    """

    start = time.perf_counter()
    num_classes = int(num_classes)
    if num_classes < 2:
        raise InputError(f"--num_classes must be ≥ 2 (background + organs), got {num_classes}.")
    labels = list(range(1, num_classes))
    if class_names is None:
        class_names = SYNAPSE_CLASSES if num_classes == 9 else [f"class_{c}" for c in labels]
    class_names = list(class_names)
    if len(class_names) != len(labels):
        raise InputError(
            f"--class_names lists {len(class_names)} names but --num_classes {num_classes} scores {len(labels)} "
            "organs: give one name per organ label 1..num_classes-1."
        )
    pairs = pair_cases(pred_dir, label_dir)
    orient = Orientation(axcodes=check_axcodes(axcodes), labels=None) if axcodes is not None else None
    report = SegmentationReport(
        output_dir,
        labels=labels,
        class_names=class_names,
        nsd_tolerance_mm=nsd_tolerance_mm,
        run_info={"pred_dir": str(pred_dir), "label_dir": str(label_dir), "axcodes": axcodes},
    )
    for _, pred_path, label_path in pairs:  # one pair in memory at a time; nothing is written before all pass
        pred, label = load_mask(pred_path), load_mask(label_path)
        _check_pair(pred, label, pred_path, label_path, num_classes)
        if orient is not None:
            pred, label = orient(pred), orient(label)
        report.add_case(pred, label)
    summary = dict(report.write())
    summary["seconds"] = time.perf_counter() - start
    return summary
