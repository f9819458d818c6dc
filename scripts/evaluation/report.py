"""Report CLI: overlays of the best/worst slice per organ, the Dice bar chart, training curves.

A thin door over :mod:`bundle.evaluation.reports`; see docs/evaluation.md. Examples (from the repo root)::

    python scripts/evaluation/report.py overlays --image img.nii.gz --label lab.nii.gz --pred pred.nii.gz --out_dir eval/png
    python scripts/evaluation/report.py overlays --datalist cases.json --out_dir eval/png   # [{"image","label","pred"}, ...]
    python scripts/evaluation/report.py bars --report eval/summary.json --out eval/dice_bars.png
    python scripts/evaluation/report.py curves --run_dir runs/train --out eval/curves.png
"""

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.data.synapse import HU_WINDOW
from bundle.errors import InputError, run_script
from bundle.evaluation.metrics import SYNAPSE_CLASSES
from bundle.evaluation.plots import (
    plot_dice_bars,
    plot_overlay,
    plot_training_curves,
    read_training_history,
    select_slices,
)
from bundle.evaluation.tables import PAPER_MSA2NET_SYNAPSE
from bundle.transforms.geometry import reorient_array


def _stem(path) -> str:
    return Path(path).name.split(".nii")[0]


def overlays(image=None, label=None, pred=None, out_dir="overlays", datalist=None, window=HU_WINDOW, size_px=512):
    """Best and worst axial slice per organ (by slice Dice) for one case or every case of a datalist JSON.

    Args:
        image: CT NIfTI, any storage order (shown radiologically: anterior up, patient's left on the right).
        label: ground-truth label NIfTI, same world positions (any storage order).
        pred: predicted label NIfTI, likewise.
        out_dir: output folder; files are ``<case>_<organ>_{best,worst}_z<k>.png``.
        datalist: JSON list of ``{"image", "label", "pred"}`` paths instead of the three arguments.
        window: HU display window (the Synapse preprocessing window by default).
        size_px: PNG width and height.
    """
    items = json.loads(Path(datalist).read_text()) if datalist else [{"image": image, "label": label, "pred": pred}]
    written = []
    for it in items:
        # radiological view whatever the storage order: each file reoriented to PLS by its own affine
        img, lab, prd = (
            reorient_array(np.asarray(f.dataobj), f.affine)
            for f in (nib.load(it[k]) for k in ("image", "label", "pred"))
        )
        img = np.clip(img, *window)
        case = _stem(it["label"])
        for c, name in enumerate(SYNAPSE_CLASSES, 1):
            sel = select_slices(lab, prd, c)
            for kind, (z, d) in (sel or {}).items():
                path = Path(out_dir) / f"{case}_{name.replace(' ', '_')}_{kind}_z{z}.png"
                title = f"{case} {name} {kind}: slice {z}, Dice {d:.3f}"
                written.append(
                    str(plot_overlay(img[..., z], lab[..., z], prd[..., z], path, title=title, size_px=size_px))
                )
    return written


def bars(report, out="dice_bars.png", paper=True, postprocess="raw"):
    """Per-organ protocol Dice bars from a ``summary.json`` or ``metrics_long.csv`` written by SegmentationReport.

    Args:
        report: ``summary.json`` or ``metrics_long.csv``.
        out: output PNG.
        paper: draw the paper's MSA²Net Dice beside ours (8 Synapse organs only).
        postprocess: which predictions: ``raw`` or a post-processed row of the report (e.g. ``LCC``).
    """
    if str(report).endswith(".json"):
        summary = json.loads(Path(report).read_text())
        if postprocess != "raw":
            if postprocess not in (summary.get("postprocessed") or {}):
                raise InputError(
                    f"{report} has no post-processed rows named {postprocess!r}; evaluate with "
                    "--lcc True for LCC rows, or use --postprocess raw."
                )
            summary = summary["postprocessed"][postprocess]
        per_organ = {k: v["dice"] for k, v in summary["protocol"]["per_organ"].items()}
    else:
        import csv

        vals = {}
        for r in csv.DictReader(open(report)):
            if r["mode"] == "protocol" and r["metric"] == "dice" and r.get("postprocess", "raw") == postprocess:
                vals.setdefault(r["organ"], []).append(float(r["value"]))
        if not vals:
            raise InputError(f"{report} has no protocol Dice rows for postprocess={postprocess!r}.")
        per_organ = {k: float(np.mean(v)) for k, v in vals.items()}
    use_paper = paper and list(per_organ) == list(SYNAPSE_CLASSES)
    return str(plot_dice_bars(per_organ, out, PAPER_MSA2NET_SYNAPSE if use_paper else None))


def curves(run_dir, out="training_curves.png"):
    """Loss and validation curves from StatsHandler logs, TensorBoard events and/or metrics.json under ``run_dir``."""
    return str(plot_training_curves(read_training_history(run_dir), out))


if __name__ == "__main__":
    run_script({"overlays": overlays, "bars": bars, "curves": curves})
