"""Evaluation reports: an Ignite handler writing CSV/JSON/Markdown tables, and plots (overlays, bars, curves).

The handler (:class:`SegmentationReport`) scores every case with :func:`bundle.metrics.evaluate_case` in both
modes -- **protocol** (published TransUNet/MSA²Net Synapse rule, HD95 in voxels) and **clinical** (mm, NaN for
unmeasurable organs, NSD) -- keeps only the scalars, and writes the tables when the evaluation epoch ends.
Plots use matplotlib's Agg backend and are saved at an exact pixel size (no ``bbox_inches="tight"``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from bundle.metrics import SYNAPSE_CLASSES, evaluate_case, summarize_clinical, summarize_protocol  # noqa: E402

__all__ = [
    "PAPER_MSA2NET_SYNAPSE",
    "TABLE1_COLUMNS",
    "SegmentationReport",
    "write_tables",
    "atomic_write_text",
    "plot_overlay",
    "select_slices",
    "plot_dice_bars",
    "read_training_history",
    "plot_training_curves",
]

# MSA²Net row of the paper's Table 1 (Synapse, protocol mode): per-organ DSC (%), mean DSC (%), mean HD95 (voxels).
PAPER_MSA2NET_SYNAPSE = {
    "method": "MSA²Net (paper, Table 1)",
    "dice": [92.69, 84.24, 88.30, 74.35, 95.59, 84.03, 89.47, 69.30],
    "mean_dice": 84.75,
    "mean_hd95": 13.29,
}
TABLE1_COLUMNS = ("Spl", "RKid", "LKid", "Gal", "Liv", "Sto", "Aor", "Pan")
ORGAN_COLORS = ("tab:red", "tab:blue", "tab:cyan", "tab:green", "tab:purple", "tab:orange", "gold", "tab:pink")


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and ``os.replace`` (readers never see half)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _save_fig(fig, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


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


# ----------------------------------------------------------------------------------------------- tables


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


def _markdown(summary: dict, class_names, paper) -> str:
    cols = list(TABLE1_COLUMNS) if len(class_names) == len(TABLE1_COLUMNS) else list(class_names)
    post = summary.get("postprocessed") or {}
    # (row label, summary blocks): "raw" is only spelled out when post-processed rows stand beside it
    sets = [("raw" if post else "", summary)] + list(post.items())
    head = "| Method | " + " | ".join(cols) + " | DSC ↑ | HD95 ↓ |\n|---" + "|---:" * (len(cols) + 2) + "|\n"
    lines = [
        f"## Synapse, protocol mode ({summary['num_cases']} cases)\n",
        "DSC in %, HD95 in **voxels**; TransUNet/MSA²Net rule (missed organ -> DSC 0, HD95 0). Same layout as the "
        "paper's Table 1.\n",
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


# ----------------------------------------------------------------------------------------------- handler


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
            return np.linalg.norm(a[:ndim, :ndim], axis=0).tolist(), "affine"
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


class SegmentationReport:
    """Ignite handler: per-case Synapse metrics (protocol + clinical) and report files at epoch end.

    Usable from a MONAI bundle (``_target_: bundle.reports.SegmentationReport`` in an evaluator's ``val_handlers``;
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
        labels: organ label ids (default 1..8).
        class_names: one name per label (default the Synapse organs).
        nsd_tolerance_mm: NSD tolerance.
        paper: row printed beside ours in ``table1.md`` (default the MSA²Net Table 1 row; ``None`` to omit).
            Only used when ``labels`` are the 8 Synapse organs.
        extra_pred_keys: post-processed predictions scored beside the raw one, ``{row name: output key}``
            (e.g. ``{"LCC": "pred_lcc"}``); each gets its own rows in every table (column ``postprocess`` in the
            CSV, ``postprocessed`` in the JSON) and ``protocol_mean_dice_<name>`` in the engine's metrics.
        run_info: what was evaluated (e.g. resampling, TTA, checkpoints), written to ``summary.json`` ("run") and
            printed above the tables.
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
        self.class_names = list(class_names)
        if len(self.labels) != len(self.class_names):
            raise ValueError(f"labels and class_names must have the same length, got {self.labels} and {class_names}")
        self.nsd_tolerance_mm = float(nsd_tolerance_mm)
        self.paper = paper if self.labels == list(range(1, 9)) else None
        self.extra_pred_keys = {str(k): v for k, v in (extra_pred_keys or {}).items()}
        if "raw" in self.extra_pred_keys:
            raise ValueError("SegmentationReport: 'raw' names the unprocessed prediction; pick another row name")
        self.run_info = dict(run_info) if run_info else None
        self.records: list[dict] = []

    def attach(self, engine) -> None:
        """Register the reset / per-case / write callbacks on ``engine``."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def reset(self, engine=None) -> None:
        """Forget the cases of the previous evaluation run."""
        self.records = []

    def __call__(self, engine) -> None:
        """Score every case in ``engine.state.output``."""
        outputs = engine.state.output
        for item in [outputs] if isinstance(outputs, dict) else outputs:
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


# ----------------------------------------------------------------------------------------------- plots


def select_slices(truth, pred, label: int, axis: int = -1) -> dict | None:
    """Best and worst slice for one organ by per-slice Dice, among slices where the truth or prediction has it.

    A slice with only a false-positive organ scores 0, so spurious detections can be the worst slice.

    Args:
        truth: integer label volume.
        pred: integer label volume of the same shape.
        label: organ label id.
        axis: slice axis (default last, the axial axis of an (H, W, D) NIfTI array).

    Returns:
        ``{"best": (index, dice), "worst": (index, dice)}``, or ``None`` if the organ is in neither volume.
    """
    t = np.moveaxis(np.asarray(truth) == label, axis, 0)
    p = np.moveaxis(np.asarray(pred) == label, axis, 0)
    sizes = t.reshape(len(t), -1).sum(1) + p.reshape(len(p), -1).sum(1)
    idx = np.flatnonzero(sizes)
    if idx.size == 0:
        return None
    dsc = 2 * (t & p).reshape(len(t), -1).sum(1)[idx] / sizes[idx]
    # ties: the largest organ cross-section is the most informative picture
    order = np.lexsort((-sizes[idx], dsc))
    worst, best = order[0], np.lexsort((-sizes[idx], -dsc))[0]
    return {"best": (int(idx[best]), float(dsc[best])), "worst": (int(idx[worst]), float(dsc[worst]))}


def orientation_letters(ax, color: str = "orange") -> None:
    """Marks a radiological axial view: A (top), P (bottom), R (left edge), L (right edge)."""
    for text, x, y in (("A", 0.5, 0.97), ("P", 0.5, 0.03), ("R", 0.02, 0.5), ("L", 0.98, 0.5)):
        ax.text(
            x, y, text, color=color, fontsize=9, fontweight="bold", ha="center", va="center", transform=ax.transAxes
        )


def plot_overlay(
    image,
    truth,
    pred,
    path,
    labels=tuple(range(1, 9)),
    class_names=SYNAPSE_CLASSES,
    title: str = "",
    size_px: int = 512,
    dpi: int = 100,
) -> Path:
    """Save one 2D slice: gray image, ground-truth contours (solid) and prediction contours (dashed) per organ.

    Arrays are axial slices in radiological order (rows toward posterior, columns toward the patient's left: a
    ``PLS`` volume from :func:`bundle.geometry.reorient_array`), drawn as they are with the orientation letters at the
    edges, so the patient's left is on the image's right whatever the file's storage order. The PNG is exactly
    ``size_px`` x ``size_px`` pixels.

    Args:
        image: 2D intensity slice.
        truth: 2D label slice.
        pred: 2D label slice.
        path: output PNG.
        labels: organ label ids.
        class_names: organ names (legend).
        title: figure title.
        size_px: output width and height in pixels.
        dpi: rendering resolution.
    """
    image, truth, pred = (np.asarray(a) for a in (image, truth, pred))
    if not (image.ndim == 2 and image.shape == truth.shape == pred.shape):
        raise ValueError(f"image, truth and pred must be 2D slices of one shape, got {image.shape}, {truth.shape}")
    fig = plt.figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(image, cmap="gray")
    handles = []
    for i, (c, n) in enumerate(zip(labels, class_names)):
        color = ORGAN_COLORS[i % len(ORGAN_COLORS)]
        shown = False
        for mask, style in ((truth == c, "solid"), (pred == c, "dashed")):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=[color], linestyles=style, linewidths=1.2)
                shown = True
        if shown:
            handles.append(Line2D([], [], color=color, label=n))
    handles += [
        Line2D([], [], color="w", ls="solid", label="truth"),
        Line2D([], [], color="w", ls="dashed", label="pred"),
    ]
    ax.legend(handles=handles, loc="upper right", fontsize=6, facecolor="black", labelcolor="white", framealpha=0.6)
    if title:
        ax.text(0.01, 0.99, title, color="yellow", fontsize=7, va="top", transform=ax.transAxes)
    orientation_letters(ax)
    ax.set_axis_off()
    _save_fig(fig, path)
    return Path(path)


def plot_dice_bars(per_organ: dict, path, paper: dict | None = None, width_px: int = 800, height_px: int = 400):
    """Bar chart of per-organ Dice (0..1) with the paper's values (percent, same organ order) beside ours.

    Args:
        per_organ: ``{organ name: dice in [0, 1]}`` (NaN shown as a missing bar).
        path: output PNG.
        paper: a row like :data:`PAPER_MSA2NET_SYNAPSE`, or ``None``.
        width_px: PNG width.
        height_px: PNG height.
    """
    names = list(per_organ)
    ours = np.array([per_organ[n] for n in names], dtype=float) * 100
    fig, ax = plt.subplots(figsize=(width_px / 100, height_px / 100), dpi=100)
    x = np.arange(len(names))
    w = 0.4 if paper is not None else 0.8
    ax.bar(x - (w / 2 if paper is not None else 0), np.nan_to_num(ours), w, label="ours")
    if paper is not None:
        ax.bar(x + w / 2, paper["dice"][: len(names)], w, label=paper["method"], alpha=0.7)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("DSC (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    fig.tight_layout()  # changes the layout, not the figure's pixel size
    _save_fig(fig, path)
    return Path(path)


_ITER_RE = re.compile(r"Epoch: (\d+)/(\d+), Iter: (\d+)/(\d+) --(.*)")
_EPOCH_RE = re.compile(r"Epoch\[(\d+)\] Metrics --(.*)")
_KV_RE = re.compile(r"([A-Za-z_][\w/.-]*): (-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf)")


def read_training_history(run_dir) -> dict:
    """Scalar series of a run from MONAI StatsHandler logs, TensorBoard events and/or a ``metrics.json``.

    Sources (all that exist under ``run_dir`` are merged, first one wins per series name):

    * ``*.log`` / ``*.txt``: StatsHandler lines ``Epoch: e/E, Iter: i/I -- name: value ...`` (x = global
      iteration) and ``Epoch[e] Metrics -- name: value ...`` (x = epoch);
    * ``events.out.tfevents.*``: every scalar tag (x = its step);
    * ``metrics.json``: ``{name: [v, ...]}`` (x = 1..n) or ``[{"epoch": e, name: v, ...}, ...]``.

    Returns:
        ``{name: {"x": [...], "y": [...], "unit": "iteration" | "epoch" | "step"}}``.
    """
    run_dir = Path(run_dir)
    hist: dict = {}

    def add(name, x, y, unit):
        s = hist.setdefault(name, {"x": [], "y": [], "unit": unit})
        if s["unit"] == unit:
            s["x"].append(x)
            s["y"].append(float(y))

    for f in sorted(list(run_dir.rglob("*.log")) + list(run_dir.rglob("*.txt"))):
        for line in f.read_text(errors="replace").splitlines():
            if m := _ITER_RE.search(line):
                e, _, i, n = (int(g) for g in m.groups()[:4])
                for k, v in _KV_RE.findall(m.group(5)):
                    add(k, (e - 1) * n + i, v, "iteration")
            elif m := _EPOCH_RE.search(line):
                for k, v in _KV_RE.findall(m.group(2)):
                    add(k, int(m.group(1)), v, "epoch")
    events = sorted(run_dir.rglob("events.out.tfevents.*"))
    if events:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        for f in events:
            acc = EventAccumulator(str(f))
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                for ev in acc.Scalars(tag):
                    add(tag, ev.step, ev.value, "step")
    for f in sorted(run_dir.rglob("metrics.json")):
        data = json.loads(f.read_text())
        if isinstance(data, dict):
            for k, vs in data.items():
                if isinstance(vs, list):
                    for j, v in enumerate(vs, 1):
                        add(k, j, v, "epoch")
        elif isinstance(data, list):
            for j, row in enumerate(data, 1):
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, (int, float)):
                        add(k, row.get("epoch", j), v, "epoch")
    return hist


_LR_RE = re.compile(r"(^|[_/ ])lr($|[_/ ])|learning.?rate", re.IGNORECASE)


def plot_training_curves(history: dict, path, width_px: int = 900, height_px: int = 400) -> Path:
    """Two panels: series whose name contains "loss" on the left, all others (validation Dice, ...) on the right.

    A learning-rate series (named ``lr``, ``…_lr`` or ``learning_rate``) gets a third panel of its own (its scale
    is not the metrics').

    Args:
        history: output of :func:`read_training_history`.
        path: output PNG.
        width_px: PNG width.
        height_px: PNG height.
    """
    if not history:
        raise ValueError("no training series found: expected StatsHandler logs, TensorBoard events or metrics.json")
    has_lr = any(_LR_RE.search(name) for name in history)
    fig, axes = plt.subplots(1, 3 if has_lr else 2, figsize=(width_px / 100, height_px / 100), dpi=100)
    a_loss, a_val = axes[0], axes[1]
    for name, s in history.items():
        ax = axes[2] if has_lr and _LR_RE.search(name) else a_loss if "loss" in name.lower() else a_val
        ax.plot(s["x"], s["y"], label=name, marker="." if len(s["x"]) < 50 else None)
        ax.set_xlabel(s["unit"])
    a_loss.set_title("loss")
    a_val.set_title("validation metrics")
    if has_lr:
        axes[2].set_title("learning rate")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save_fig(fig, path)
    return Path(path)
