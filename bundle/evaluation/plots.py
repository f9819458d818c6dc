"""Pictures people would rather look at than read: overlays in radiological view, per-organ Dice bars, and the
training curves read back from a run's log. Every figure is written atomically."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from bundle.evaluation.metrics import SYNAPSE_CLASSES  # noqa: E402
from bundle.io.atomic import atomic_path  # noqa: E402

ORGAN_COLORS = ("tab:red", "tab:blue", "tab:cyan", "tab:green", "tab:purple", "tab:orange", "gold", "tab:pink")


def _save_fig(fig, path) -> None:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=fig.dpi)
    finally:
        plt.close(fig)


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
    ``PLS`` volume from :func:`bundle.transforms.geometry.reorient_array`), drawn as they are with the orientation letters at the
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


def plot_case_rows(panels, path, class_names=SYNAPSE_CLASSES, dpi: int = 100) -> Path:
    """Image | reference | prediction, filled labels over the image, one row per case (the demo's overlay.png).

    Args:
        panels: ``(title, image, truth, pred)`` volumes in PLS order (radiological view, orientation letters at the
            edges); each row shows the axial slice holding most reference labels.
        path: output PNG.
        class_names: names of labels 1.. (legend; colours as :func:`plot_overlay`).
        dpi: rendering resolution.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colors = ListedColormap(ORGAN_COLORS[: len(class_names)])  # label i -> ORGAN_COLORS[i - 1]
    fig, axes = plt.subplots(len(panels), 3, figsize=(12, 4.2 * len(panels) + 0.6), squeeze=False, dpi=dpi)
    for row, (name, image, truth, pred) in zip(axes, panels):
        z = int(np.argmax((truth > 0).reshape(-1, truth.shape[-1]).sum(0)))
        ct = np.clip((image[..., z] + 125) / 400, 0, 1)  # soft-tissue window (W 400, L 75)
        for ax, lab, title in zip(row, (None, truth, pred), (f"CT ({name})", "reference (model-made)", "MSA²Net")):
            ax.imshow(ct, cmap="gray")
            if lab is not None:
                masked = np.ma.masked_equal(lab[..., z], 0)
                ax.imshow(masked, cmap=colors, vmin=0.5, vmax=len(class_names) + 0.5, alpha=0.5)
            ax.set_title(title)
            orientation_letters(ax)
            ax.axis("off")
    handles = [Patch(color=c, alpha=0.5, label=n) for n, c in zip(class_names, ORGAN_COLORS)]
    fig.legend(handles=handles, loc="lower center", ncol=len(class_names), frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
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
