"""Evaluation reports: Ignite handlers that score every case of an evaluation pass and write the tables.

One skeleton (:class:`ReportHandler`: reset, add each case, write) and three reports: :class:`SegmentationReport`
(CT organs, scored with :func:`bundle.evaluation.metrics.evaluate_case` in both modes -- **protocol**, the published
TransUNet/MSA²Net Synapse rule with HD95 in voxels, and **clinical**, in mm with NaN for unmeasurable organs and NSD --
keeping only scalars per case), :class:`BinarySegmentationReport` (ISIC-style pooled binary metrics) and
:class:`PerImageScores` (microscopy per-image Dice/IoU).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from ignite.engine import Events
from monai.data.utils import affine_to_spacing

from bundle.errors import InputError
from bundle.evaluation.metrics import SYNAPSE_CLASSES, BinaryPooledMetrics, evaluate_case, per_image_dice_iou
from bundle.evaluation.tables import PAPER_MSA2NET_SYNAPSE, write_tables
from bundle.io.atomic import atomic_write_text
from bundle.io.image2d import source_name


def _to_label_map(x) -> np.ndarray:
    """(1, H, W, D) label map or (C, H, W, D) one-hot/probabilities -> (H, W, D) integer numpy array."""
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if a.ndim < 2:
        raise ValueError(f"expected a channel-first array (1|C, *spatial), got shape {a.shape}")
    return a[0].astype(np.int64) if a.shape[0] == 1 else a.argmax(0)


def _spacing(x, ndim: int):
    """Voxel size from a MetaTensor: its affine (kept current by MONAI spatial transforms), else meta pixdim."""
    aff = getattr(x, "affine", None)
    if aff is not None:
        a = np.asarray(aff.detach().cpu() if hasattr(aff, "detach") else aff, dtype=np.float64)
        if a.ndim == 2 and a.shape[0] >= ndim + 1:
            return affine_to_spacing(a, r=ndim, dtype=np.float64).tolist(), "affine"
    meta = getattr(x, "meta", None) or {}
    if "pixdim" in meta:
        p = np.asarray(meta["pixdim"].cpu() if hasattr(meta["pixdim"], "cpu") else meta["pixdim"], np.float64)
        return p.ravel()[1 : ndim + 1].tolist(), "pixdim"  # NIfTI pixdim[0] is qfac
    return [1.0] * ndim, "default"


def _case_name(x, fallback: str) -> str:
    meta = getattr(x, "meta", None) or {}
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    if not name:
        return fallback
    return re.sub(r"\.(nii\.gz|nii|npy\.h5|h5|npz|npy|mha|nrrd)$", "", os.path.basename(str(name)))


class ReportHandler:
    """The skeleton every report shares, as an Ignite handler (MONAI calls :meth:`attach` for ``val_handlers``).

    ``EPOCH_STARTED`` → :meth:`reset`; ``ITERATION_COMPLETED`` → :meth:`add` for each decollated output dict
    (a single dict is accepted); ``EPOCH_COMPLETED`` → :meth:`write`. Subclasses implement those three.
    """

    def attach(self, engine) -> None:
        """Register the reset / per-case / write callbacks on ``engine``."""
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def update(self, engine) -> None:
        """Add every case in ``engine.state.output``."""
        outputs = engine.state.output
        for item in [outputs] if isinstance(outputs, Mapping) else outputs:
            self.add(item)

    __call__ = update

    def reset(self) -> None:
        raise NotImplementedError

    def add(self, item: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def write(self, engine=None):
        raise NotImplementedError


class SegmentationReport(ReportHandler):
    """Ignite handler: per-case Synapse metrics (protocol + clinical) and report files at epoch end.

    Usable from a MONAI bundle (``_target_: bundle.evaluation.reports.SegmentationReport`` in an evaluator's ``val_handlers``;
    MONAI calls :meth:`attach`). Expects ``engine.state.output`` to be a list of per-case dicts after
    ``decollate_batch`` (a single dict is accepted), each holding ``pred_key`` and ``label_key`` as a (1, H, W, D)
    label map or a (C, H, W, D) one-hot/probability map (argmax over C). The case name comes from
    ``label.meta["filename_or_obj"]`` (else ``pred``'s, else ``case_<n>``), the spacing from the label's affine,
    else ``meta["pixdim"]``, else 1 mm (recorded in ``summary.json``).

    Only scalars are kept per case, so volumes are freed once the iteration ends. At ``EPOCH_COMPLETED``
    it writes ``metrics_long.csv``, ``summary.json`` and ``table1.md`` to ``output_dir`` (atomically) and puts
    ``protocol_mean_dice``, ``protocol_mean_hd95``, ``clinical_mean_hd95_mm`` and ``clinical_mean_nsd`` into
    ``engine.state.metrics``.

    Args:
        output_dir: where the report files go.
        pred_key: key of the prediction in each output dict.
        label_key: key of the ground truth.
        labels: organ label ids (default 1..8; the configs pass ``1..num_classes-1``).
        class_names: one name per label (default the Synapse organs; the configs pass ``label_names``).
        nsd_tolerance_mm: NSD tolerance.
        paper: row printed beside ours in ``table1.md`` (default the MSA²Net Table 1 row; ``None`` to omit).
            Only used when ``labels`` and ``class_names`` are the 8 Synapse organs.
        extra_pred_keys: post-processed predictions scored beside the raw one, ``{row name: output key}``
            (e.g. ``{"LCC": "pred_lcc"}``); each gets its own rows in every table (column ``postprocess`` in the
            CSV, ``postprocessed`` in the JSON) and ``protocol_mean_dice_<name>`` in the engine's metrics.
        run_info: what was evaluated (e.g. resampling, TTA, checkpoints), written to ``summary.json`` ("run") and
            printed above the tables.

    Raises:
        InputError: ``class_names`` does not name every label.
    """

    def __init__(
        self,
        output_dir,
        pred_key: str = "pred",
        label_key: str = "label",
        labels=tuple(range(1, 9)),
        class_names=SYNAPSE_CLASSES,
        nsd_tolerance_mm: float = 2.0,
        paper=PAPER_MSA2NET_SYNAPSE,
        extra_pred_keys: dict | None = None,
        run_info: dict | None = None,
    ):
        self.output_dir = Path(output_dir)
        self.pred_key, self.label_key = pred_key, label_key
        self.labels = [int(c) for c in labels]
        self.class_names = [str(n) for n in class_names]
        if len(self.labels) != len(self.class_names):
            raise InputError(
                f"the report scores {len(self.labels)} organ label(s) {self.labels[:10]} (labels 1..num_classes-1) "
                f"but label_names lists {len(self.class_names)} ({', '.join(self.class_names[:10])}): give one name "
                "per label, e.g. --label_names \"['liver']\" for --num_classes 2."
            )
        self.nsd_tolerance_mm = float(nsd_tolerance_mm)
        synapse = self.labels == list(range(1, 9)) and tuple(self.class_names) == tuple(SYNAPSE_CLASSES)
        self.paper = paper if synapse else None  # the paper's row only beside the organs it reports
        self.extra_pred_keys = {str(k): v for k, v in (extra_pred_keys or {}).items()}
        if "raw" in self.extra_pred_keys:
            raise ValueError("SegmentationReport: 'raw' names the unprocessed prediction; pick another row name")
        self.run_info = dict(run_info) if run_info else None
        self.records: list[dict] = []

    def reset(self, engine=None) -> None:
        """Forget the cases of the previous evaluation run."""
        self.records = []

    def add(self, item: Mapping[str, Any]) -> None:
        """Score one decollated output dict (its prediction, label and post-processed predictions)."""
        extra = {k: item[key] for k, key in self.extra_pred_keys.items()}
        self.add_case(item[self.pred_key], item[self.label_key], postprocessed=extra)

    def add_case(self, pred, label, name: str | None = None, postprocessed: dict | None = None) -> dict:
        """Score one case (channel-first pred/label, see class doc) and keep its scalars.

        ``postprocessed`` maps a row name to another prediction of the same case (e.g. ``{"LCC": pred_lcc}``).
        """
        truth = _to_label_map(label)
        p = _to_label_map(pred)
        spacing, source = _spacing(label, truth.ndim)
        if source == "default":
            spacing, source = _spacing(pred, truth.ndim)
        fallback = f"case_{len(self.records):03d}"
        name = name or _case_name(label, "") or _case_name(pred, fallback)
        m = evaluate_case(p, truth, self.labels, spacing, self.nsd_tolerance_mm)
        rec = {"case": name, "spacing": [float(s) for s in spacing], "spacing_source": source, "metrics": m}
        if postprocessed:
            rec["postprocessed"] = {
                k: evaluate_case(_to_label_map(v), truth, self.labels, spacing, self.nsd_tolerance_mm)
                for k, v in postprocessed.items()
            }
        self.records.append(rec)
        return rec

    def write(self, engine=None) -> dict | None:
        """Write the report files (rank 0 only; cases are gathered from all ranks first)."""
        records = _gather(self.records)
        if records is None:
            return None
        if not records:
            warnings.warn("SegmentationReport: no cases were seen this epoch; nothing written")
            return None
        summary = write_tables(
            records, self.output_dir, self.class_names, self.labels, self.nsd_tolerance_mm, self.paper, self.run_info
        )
        if engine is not None:
            engine.state.metrics.update(
                protocol_mean_dice=summary["protocol"]["mean_dice"],
                protocol_mean_hd95=summary["protocol"]["mean_hd95"],
                clinical_mean_hd95_mm=summary["clinical"]["mean_hd95_mm"],
                clinical_mean_nsd=summary["clinical"]["mean_nsd"],
            )
            for k, blocks in (summary.get("postprocessed") or {}).items():
                engine.state.metrics[f"protocol_mean_dice_{k}"] = blocks["protocol"]["mean_dice"]
                engine.state.metrics[f"protocol_mean_hd95_{k}"] = blocks["protocol"]["mean_hd95"]
        return summary


def _gather(records: list[dict]):
    """All ranks' records on rank 0 (``None`` on other ranks); a no-op without torch.distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return records
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, records)
    return [r for p in parts for r in p] if dist.get_rank() == 0 else None


class BinarySegmentationReport(ReportHandler):
    """Ignite handler: binary metrics over an evaluation pass, written as JSON, CSV and a Markdown table.

    Every iteration, each decollated output's ``pred`` and ``label`` ({0, 1} maps at network size) update a
    :class:`bundle.evaluation.metrics.BinaryPooledMetrics`; at the end of the epoch it writes ``metrics.json`` (pooled and
    per-image-mean DSC, IoU, ACC, SE, SP), ``per_image.csv`` and ``summary.md`` (this run beside the paper's row).

    Args:
        output_dir: destination folder.
        paper: optional ``{"method": str, "dsc": .., "iou": .., "acc": .., "se": .., "sp": ..}`` row (missing
            values shown as –).
        per_image: also report per-image means in the Markdown table.
        pred_key: prediction key in the engine output.
        label_key: truth key.
    """

    COLUMNS = ("dsc", "iou", "acc", "se", "sp")

    def __init__(
        self,
        output_dir: str,
        paper: Optional[Mapping[str, Any]] = None,
        per_image: bool = True,
        pred_key: str = "pred",
        label_key: str = "label",
    ) -> None:

        self.output_dir, self.paper, self.per_image = output_dir, paper, per_image
        self.pred_key, self.label_key = pred_key, label_key
        self.metrics = BinaryPooledMetrics()
        self.names: List[str] = []
        self.summary: Dict[str, Any] = {}

    def reset(self) -> None:
        self.metrics.reset()
        self.names = []

    def add(self, item: Mapping[str, Any]) -> None:
        self.metrics.update(item[self.pred_key], item[self.label_key])
        self.names.append(os.path.basename(source_name(item[self.pred_key], item)))

    def write(self, engine=None) -> Dict[str, Any]:
        """Writes the files; returns ``{"pooled": {...}, "per_image_mean": {...}}``."""

        pooled, mean = self.metrics.compute(), self.metrics.compute(per_image=True)
        self.summary = {"pooled": pooled, "per_image_mean": mean, "paper": dict(self.paper) if self.paper else None}
        os.makedirs(self.output_dir, exist_ok=True)
        atomic_write_text(os.path.join(self.output_dir, "metrics.json"), json.dumps(self.summary, indent=2) + "\n")
        rows = [self.metrics._from_counts(*c) for c in self.metrics.per_image]
        buf = io.StringIO(newline="")
        writer = csv.writer(buf)
        writer.writerow(["image", "tp", "fp", "tn", "fn", *self.COLUMNS])
        for name, c, r in zip(self.names, self.metrics.per_image, rows):
            writer.writerow([name, *map(int, c), *(f"{r[k]:.6f}" for k in self.COLUMNS)])
        atomic_write_text(os.path.join(self.output_dir, "per_image.csv"), buf.getvalue())
        atomic_write_text(os.path.join(self.output_dir, "summary.md"), self.markdown())
        return self.summary

    def markdown(self) -> str:
        """The Markdown table: paper row (if any), pooled row, per-image-mean row (if enabled)."""

        def cell(v):
            return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"

        head = "| method | DSC | IoU | ACC | SE | SP |\n|---|---|---|---|---|---|\n"
        lines = []
        if self.paper:
            lines.append([self.paper.get("method", "paper"), *(self.paper.get(k) for k in self.COLUMNS)])
        n = self.summary["pooled"]["n_images"]
        count = f"{n} image" + ("s" if n != 1 else "")
        lines.append([f"this run, pooled pixels ({count})", *(self.summary["pooled"][k] for k in self.COLUMNS)])
        if self.per_image:
            mean = self.summary["per_image_mean"]
            lines.append([f"this run, per-image mean ({count})", *(mean[k] for k in self.COLUMNS)])
        body = "".join(f"| {row[0]} | " + " | ".join(cell(v) for v in row[1:]) + " |\n" for row in lines)
        return head + body


class PerImageScores(ReportHandler):
    """Ignite handler: per-image Dice and IoU of the thresholded prediction against the original-size mask.

    Published convention (SA2-Net/UCTransNet ``test_model*.py``): Dice and IoU per test image, averaged over the
    images. Edge case: an image whose prediction and mask are both empty scores ``empty_score`` (1 = a correct
    "nothing here"; the official formula ``2I/(|P|+|G|+1e-5)`` gives 0; NaN leaves it out). MoNuSeg and GlaS
    test images all contain foreground, so the choice does not change their numbers.

    Writes ``<output_dir>/scores.json`` (atomically) at the end of each evaluation epoch:
    ``{"dice", "iou", "n_images", "per_image": [{"image", "dice", "iou"}], ...}``.

    Args:
        output_dir: destination folder.
        pred_key: thresholded prediction ({0, 1}, original size).
        label_key: the mask at the original size.
        empty_score: score of an image with both masks empty.
        name: free text stored in the file (e.g. the fold or the ensemble members).
    """

    def __init__(
        self,
        output_dir: str,
        pred_key: str = "pred",
        label_key: str = "label",
        empty_score: float = 1.0,
        name: str = "",
    ) -> None:
        self.output_dir, self.pred_key, self.label_key = output_dir, pred_key, label_key
        self.empty_score, self.name = float(empty_score), name
        self.preds: List[np.ndarray] = []
        self.truths: List[np.ndarray] = []
        self.names: List[str] = []
        self.result: Dict[str, Any] = {}

    def reset(self) -> None:
        self.preds, self.truths, self.names = [], [], []

    def add(self, item: Mapping[str, Any]) -> None:
        pred, truth = item[self.pred_key], item[self.label_key]
        p = np.asarray(torch.as_tensor(pred).detach().cpu()).squeeze()
        t = np.asarray(torch.as_tensor(truth).detach().cpu()).squeeze()
        if p.shape != t.shape:
            raise InputError(
                f"prediction {p.shape} and mask {t.shape} differ in size; score at the "
                f"original size (Invertd of the resize before the threshold, mask loaded without resizing)."
            )
        self.preds.append(p > 0.5)
        self.truths.append(t > 0.5)
        name = None
        for src in (item.get("image"), truth, pred):  # the input image's name first
            name = name or (getattr(src, "meta", None) or {}).get("filename_or_obj")
        self.names.append(os.path.basename(str(name or f"image_{len(self.names)}")))

    def compute(self) -> Dict[str, Any]:
        """Means and per-image values of everything seen since :meth:`reset`."""

        scores = per_image_dice_iou(self.preds, self.truths, threshold=0.5, empty_score=self.empty_score)
        per_image = [
            {"image": n, "dice": d, "iou": j}
            for n, d, j in zip(self.names, scores["per_image_dice"], scores["per_image_iou"])
        ]
        return {
            "name": self.name,
            "dice": scores["dice"],
            "iou": scores["iou"],
            "n_images": len(per_image),
            "empty_score": self.empty_score,
            "per_image": per_image,
        }

    def write(self, engine=None) -> Dict[str, Any]:
        """Computes and writes ``scores.json``; returns the scores."""
        self.result = self.compute()
        atomic_write_text(
            os.path.join(self.output_dir, "scores.json"), json.dumps(self.result, indent=1, allow_nan=True)
        )
        print(f"per-image Dice {self.result['dice']:.4f}, IoU {self.result['iou']:.4f} on {len(self.names)} images")
        return self.result
