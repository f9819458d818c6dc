"""bundle.training.progress.ProgressPlot through configs/train.yaml: a 2-epoch tiny training run writes a valid
progress.png whose numbers (progress.json) equal the logged history (TensorBoard events), and a resumed run
continues the same curves."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from bundle.evaluation.plots import read_training_history

TESTS = os.path.join(ROOT, "tests")
# 2 epochs × 2 iterations (batch 2 = 1 volume × 2 slices; 4 slices per epoch), validation every epoch, tiny network
ARGS = ["--epochs", "2", "--batch_size", "2", "--slices_per_volume", "2", "--slices_per_epoch", "4"]
ARGS += ["--num_workers", "0", "--val_interval", "1", "--show_progress", "False", "--roi_size", "[32,32]"]
OVERLAY = """network_def:
  _target_: conftest.TinySegNet
  in_channels: "@in_channels"
  out_channels: "@num_classes"
"""


def _train(ct_dataset, out, overlay, *extra):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
           f"['configs/train.yaml','{overlay}']", "--dataset_dir", str(ct_dataset), "--output_dir", str(out),
           "--ckpt_path", str(out / "model.pt"), *ARGS, *extra]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_progress_plot_matches_logged_history_and_resumes(ct_dataset, tmp_path):
    overlay = tmp_path / "tiny.yaml"
    overlay.write_text(OVERLAY)
    out = tmp_path / "run"
    _train(ct_dataset, out, overlay)
    png, numbers = out / "progress.png", out / "progress.json"
    assert _png_size(png) == (1200, 400)
    import matplotlib.pyplot as plt

    pixels = plt.imread(png)
    assert pixels.shape[:2] == (400, 1200) and pixels.std() > 0.05  # drawn, not blank
    assert not [f for f in os.listdir(out) if f.startswith(".progress")]  # atomic: no temporary files left
    epochs = json.load(open(numbers))["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]

    logged = read_training_history(out)  # the TensorBoard events the config's handlers write
    loss = logged["train_loss"]
    assert loss["x"] == [1, 2, 3, 4]  # 2 iterations per epoch
    for e, rec in enumerate(epochs):
        assert rec["train_loss"] == pytest.approx(np.mean(loss["y"][2 * e : 2 * e + 2]), rel=1e-6)
    dice = logged["val_mean_dice"]
    assert dice["x"] == [1, 2]
    assert [rec["val_mean_dice"] for rec in epochs] == pytest.approx(dice["y"], rel=1e-6)
    # lr after each epoch's last step: 0.05 · 2/20 (batch scaling) · (1 - it/4)^0.9 (poly per iteration)
    assert [rec["lr"] for rec in epochs] == pytest.approx([0.005 * (1 - 2 / 4) ** 0.9, 0.0], abs=1e-12)

    # resume for one more epoch: epochs 1-2 are kept as they were, epoch 3 is added
    _train(ct_dataset, out, overlay, "--epochs", "3", "--resume", "True")
    resumed = json.load(open(numbers))["epochs"]
    assert [e["epoch"] for e in resumed] == [1, 2, 3] and resumed[:2] == epochs
    assert resumed[2]["val_mean_dice"] is not None and np.isfinite(resumed[2]["train_loss"])


def test_only_rank_0_writes_and_nan_is_null(tmp_path, monkeypatch):
    from bundle.training import progress

    plot = progress.ProgressPlot(str(tmp_path))
    plot.epochs = [{"epoch": 1, "train_loss": float("nan"), "lr": 0.1}, {"epoch": 2, "train_loss": 0.5, "lr": 0.05}]
    plot.epochs[1]["val_mean_dice"] = 0.25
    monkeypatch.setattr(progress, "_rank", lambda: 1)
    assert plot.write() is None and os.listdir(tmp_path) == []
    monkeypatch.setattr(progress, "_rank", lambda: 0)
    assert plot.write() == str(tmp_path / "progress.png") and _png_size(tmp_path / "progress.png") == (1200, 400)
    assert json.load(open(tmp_path / "progress.json"))["epochs"][0]["train_loss"] is None  # strict JSON
    assert plot.history()["val_mean_dice"] == {"x": [2], "y": [0.25], "unit": "epoch"}
    assert plot.history()["lr"]["y"] == [0.1, 0.05]
