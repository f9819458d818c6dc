"""Result tables: per-case CSV, summary JSON and the paper's Table-1 Markdown (beside the published numbers), and
the mean ± std over cross-validation folds."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np  # noqa: E402

from bundle.errors import InputError
from bundle.evaluation.metrics import SYNAPSE_CLASSES, summarize_clinical, summarize_protocol
from bundle.io.atomic import atomic_write_text

# MSA²Net row of the paper's Table 1 (Synapse, protocol mode): per-organ DSC (%), mean DSC (%), mean HD95 (voxels).
PAPER_MSA2NET_SYNAPSE = {
    "method": "MSA²Net (paper, Table 1)",
    "dice": [92.69, 84.24, 88.30, 74.35, 95.59, 84.03, 89.47, 69.30],
    "mean_dice": 84.75,
    "mean_hd95": 13.29,
}


TABLE1_COLUMNS = ("Spl", "RKid", "LKid", "Gal", "Liv", "Sto", "Aor", "Pan")


def _json_clean(x):
    """NaN -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _fmt(x, scale=1.0, nd=2) -> str:
    return "missing" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * scale:.{nd}f}"


def _summaries(records: list[dict], key: str | None, names: dict, nsd_tolerance_mm: float) -> dict:
    """Protocol and clinical summary blocks for the raw predictions (``key=None``) or one post-processed set."""

    def metrics(r):
        return r["metrics"] if key is None else r["postprocessed"][key]

    prot = summarize_protocol([{c: m["protocol"] for c, m in metrics(r).items()} for r in records])
    clin = summarize_clinical([{c: m["clinical"] for c, m in metrics(r).items()} for r in records])
    return {
        "protocol": {
            "description": "TransUNet/MSA2Net Synapse protocol: medpy dc/hd95 per volume and organ, no spacing "
            "(HD95 in voxels); pred>0 & gt empty -> (1, 0); pred empty -> (0, 0); mean over volumes, then organs",
            "hd95_unit": "voxel",
            "per_organ": {names[c]: v for c, v in prot["per_label"].items()},
            "mean_dice": prot["mean_dice"],
            "mean_hd95": prot["mean_hd95"],
        },
        "clinical": {
            "description": "Dice, HD95/ASSD in mm (voxel spacing), NSD at the tolerance; unmeasurable values are "
            "missing (null), counted per status, and skipped by the means",
            "hd95_unit": "mm",
            "nsd_tolerance_mm": nsd_tolerance_mm,
            "per_organ": {names[c]: v for c, v in clin["per_label"].items()},
            **{k: v for k, v in clin.items() if k.startswith("mean_")},
        },
    }


def write_tables(
    records: list[dict], output_dir, class_names, labels, nsd_tolerance_mm: float, paper=None, run_info=None
) -> dict:
    """Write ``metrics_long.csv``, ``summary.json`` and ``table1.md`` for a list of scored cases.

    Args:
        records: ``[{"case": name, "spacing": [...], "spacing_source": str, "metrics": evaluate_case(...)}]``,
            optionally with ``"postprocessed": {name: evaluate_case(...)}`` (e.g. ``{"LCC": ...}``), scored and
            reported beside the raw predictions.
        output_dir: folder for the three files.
        class_names: organ names, one per label.
        labels: organ label ids.
        nsd_tolerance_mm: the NSD tolerance used (recorded in the summary).
        paper: a row like :data:`PAPER_MSA2NET_SYNAPSE` printed beside ours, or ``None``.
        run_info: what was evaluated (resampling, TTA, checkpoints ...), recorded in the summary and the table.

    Returns:
        The summary dict written to ``summary.json`` (before NaN -> null): the raw predictions' ``protocol`` and
        ``clinical`` blocks at the top level, each post-processed set's under ``postprocessed``.
    """
    if not records:
        raise ValueError("no cases were scored; the report needs at least one case")
    out = Path(output_dir)
    names = dict(zip(labels, class_names))
    post = list(records[0].get("postprocessed", {}))

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["case", "postprocess", "label", "organ", "mode", "metric", "value", "status"])
    for r in records:
        for variant, metrics in [("raw", r["metrics"])] + [(k, r["postprocessed"][k]) for k in post]:
            for c, m in metrics.items():
                status = m["clinical"]["status"]
                for k, v in m["protocol"].items():
                    w.writerow([r["case"], variant, c, names[c], "protocol", k, repr(float(v)), status])
                for k, v in m["clinical"].items():
                    if k != "status":
                        w.writerow([r["case"], variant, c, names[c], "clinical", k, repr(float(v)), status])
    atomic_write_text(out / "metrics_long.csv", buf.getvalue())

    summary = {
        "num_cases": len(records),
        "cases": [{"case": r["case"], "spacing": r["spacing"], "spacing_source": r["spacing_source"]} for r in records],
        "run": run_info,
        **_summaries(records, None, names, nsd_tolerance_mm),
        "paper": paper,
    }
    if post:
        summary["postprocessed"] = {k: _summaries(records, k, names, nsd_tolerance_mm) for k in post}
    atomic_write_text(out / "summary.json", json.dumps(_json_clean(summary), indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "table1.md", _markdown(summary, class_names, paper))
    return summary


def _protocol_rules(summary: dict) -> str:
    """The protocol's two rules for organs missing on one side, and how many case-organ pairs each touched here."""
    organs = summary["clinical"]["per_organ"].values()
    count = {k: sum(int(v[k]) for v in organs) for k in ("n_false_positive", "n_missed", "n_absent")}
    total = summary["num_cases"] * len(summary["clinical"]["per_organ"])
    return (
        "DSC in %, HD95 in **voxels**, by the TransUNet/MSA²Net rules (kept so the numbers compare with the paper): "
        "an organ the prediction misses scores DSC 0, HD95 0, and so does an organ absent from both the reference "
        "and the prediction; an organ **predicted but absent from the reference scores DSC 100 %**, HD95 0 (the "
        f"official code's rule). Here, of {total} case-organ pairs: {count['n_false_positive']} predicted but absent "
        f"(scored 100 %), {count['n_missed']} missed, {count['n_absent']} absent from both (scored 0). The clinical "
        "tables below score a predicted-but-absent organ DSC 0 and leave organs absent from both out.\n"
    )


def _markdown(summary: dict, class_names, paper) -> str:
    synapse = tuple(class_names) == tuple(SYNAPSE_CLASSES)
    cols = list(TABLE1_COLUMNS) if synapse else list(class_names)
    post = summary.get("postprocessed") or {}
    # (row label, summary blocks): "raw" is only spelled out when post-processed rows stand beside it
    sets = [("raw" if post else "", summary)] + list(post.items())
    head = "| Method | " + " | ".join(cols) + " | DSC ↑ | HD95 ↓ |\n|---" + "|---:" * (len(cols) + 2) + "|\n"
    lines = [
        f"## {'Synapse, p' if synapse else 'P'}rotocol mode ({summary['num_cases']} cases)\n",
        _protocol_rules(summary) + (" Same layout as the paper's Table 1.\n" if synapse else ""),
    ]
    if summary.get("run"):
        lines.append("Evaluated: " + ", ".join(f"{k} = {v}" for k, v in summary["run"].items()) + ".\n")
        if summary["run"].get("resample", "protocol") != "protocol":
            lines.append(
                f"Resampling is **{summary['run']['resample']}**, not the protocol's zoom order 3 / order 0: the "
                "scoring rules are the protocol's, the label maps are not the ones the published protocol scores.\n"
            )
    if post:
        lines.append(
            "Rows: **raw** = the network's label map; "
            + "; ".join(f"**{k}** = the same after post-processing ({k})" for k in post)
            + ", scored against the same ground truth.\n"
        )
    lines.append(head.rstrip("\n"))
    if paper is not None:
        lines.append(
            f"| {paper['method']} | "
            + " | ".join(f"{v:.2f}" for v in paper["dice"])
            + f" | {paper['mean_dice']:.2f} | {paper['mean_hd95']:.2f} |"
        )
    for name, blocks in sets:
        prot = blocks["protocol"]
        ours = [prot["per_organ"][n]["dice"] for n in class_names]
        label = f"Ours (protocol, {name})" if name else "Ours (protocol)"
        lines.append(
            f"| {label} | "
            + " | ".join(_fmt(v, 100) for v in ours)
            + f" | {_fmt(prot['mean_dice'], 100)} | {_fmt(prot['mean_hd95'])} |"
        )
    for name, blocks in sets:
        clin = blocks["clinical"]
        tol = clin["nsd_tolerance_mm"]
        lines += [
            "",
            f"## Clinical mode, {name}\n" if name else "## Clinical mode\n",
            f"HD95/ASSD in **mm**, NSD at {tol:g} mm (%); unmeasurable organs are missing, not 0, and counted.\n",
            f"| Organ | DSC | HD95 (mm) | ASSD (mm) | NSD@{tol:g}mm | missed | false positive | absent |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n in class_names:
            v = clin["per_organ"][n]
            lines.append(
                f"| {n} | {_fmt(v['dice'], 100)} | {_fmt(v['hd95_mm'])} | {_fmt(v['assd_mm'])} "
                f"| {_fmt(v['nsd'], 100)} | {v['n_missed']} | {v['n_false_positive']} | {v['n_absent']} |"
            )
        lines.append(
            f"| **mean** | {_fmt(clin['mean_dice'], 100)} | {_fmt(clin['mean_hd95_mm'])} "
            f"| {_fmt(clin['mean_assd_mm'])} | {_fmt(clin['mean_nsd'], 100)} | | | |"
        )
    return "\n".join(lines) + "\n"


def summarize_folds(score_files: Sequence[str]) -> Dict[str, Any]:
    """Mean ± std over folds of the per-fold test means (the official ``test_model*.py`` table; std with ddof 1).

    Args:
        score_files: one ``scores.json`` per fold (written by :class:`PerImageScores`).

    Returns:
        ``{"dice_mean", "dice_std", "iou_mean", "iou_std", "folds": [{"file", "dice", "iou"}]}`` (std NaN for a
        single fold).
    """
    if isinstance(score_files, str):
        score_files = [score_files]
    if not score_files:
        raise InputError("summarize_folds needs at least one scores.json.")
    folds = []
    for path in score_files:
        with open(path) as f:
            s = json.load(f)
        folds.append({"file": str(path), "dice": float(s["dice"]), "iou": float(s["iou"])})
    out: Dict[str, Any] = {"folds": folds, "n_folds": len(folds)}
    for k in ("dice", "iou"):
        v = np.asarray([f[k] for f in folds], dtype=np.float64)
        out[f"{k}_mean"] = float(v.mean())
        out[f"{k}_std"] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return out
