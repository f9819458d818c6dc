"""Real-nuclei demo of the microscopy configs: fetch the stardist 0.9.2 image, train SA2-Net on its left half,
report foreground Dice on the right half, write an overlay PNG.

Usage: python scripts/demo/run_microscopy_demo.py [--epochs 8] [--iterations_per_epoch 12] [--base_channels 8] [--out runs/microscopy_demo]

Data: ``pip download stardist==0.9.2 --no-deps`` into ``--cache``, ``img2d.tif``/``mask2d.tif`` extracted only after
their sha256 match (``bundle/data/microscopy.py``). The 512×512 fluorescence image (2018 Data Science Bowl, 125
nuclei) is split: left half rows 0..383 train, left half rows 384..511 validate (best checkpoint, early stopping),
right half = test, read only by the final evaluation. Every step is an ordinary bundle command, printed before it
runs. CPU-sized choices (documented in docs/microscopy.md): SA2-Net with ``base_channels`` 8 instead of 64,
``native`` input mode (no resize; random 128² crops, 4 per iteration; sliding-window inference), one gray channel.
"""

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from bundle.data.demos import build_stardist_demo
from bundle.errors import InputError, run_script
from bundle.evaluation.metrics import dice as dice_score
from bundle.io.image2d import save_overlay_png

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(cmd, threads):
    print("+", " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(threads))
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)


def _versions() -> dict:
    import monai
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def main(
    epochs: int = 8,
    iterations_per_epoch: int = 12,
    base_channels: int = 8,
    roi_size: int = 128,
    crops_per_image: int = 4,
    val_interval: int = 2,
    learning_rate: float = 1e-3,
    out: str = "runs/microscopy_demo",
    data: str = "demo_data/microscopy",
    cache: str = os.path.join(os.path.expanduser("~"), ".cache", "msa2net-bundle", "stardist-0.9.2"),
    threads: int = 2,
) -> None:
    """Runs the demo; writes ``<out>/demo_results.json``, ``<out>/overlay.png`` and the test mask.

    The learning rate follows one cosine from ``learning_rate`` to 1e-4 over the run (``lr_cycle = epochs``) instead
    of the official 5-epoch restarts, which would restart mid-way through so short a schedule.
    """
    t0 = time.time()
    datalist = build_stardist_demo(os.path.join(ROOT, data), cache)
    t_fetch = time.time() - t0
    cfg = "configs/microscopy/"
    common = [
        "--dataset_dir", data, "--output_dir", out, "--fold", "0", "--in_channels", "1",
        "--base_channels", str(base_channels), "--input_mode", "native", "--roi_size", str(roi_size),
        "--num_workers", "0",
    ]  # fmt: skip
    train = [
        "--crops_per_image", str(crops_per_image), "--batch_size", str(crops_per_image),
        "--iterations_per_epoch", str(iterations_per_epoch), "--epochs", str(epochs), "--lr_cycle", str(epochs),
        "--val_interval", str(val_interval), "--learning_rate", str(learning_rate),
    ]  # fmt: skip
    run = [sys.executable, "-m", "monai.bundle", "run"]
    _run(run + ["training", "--config_file", cfg + "train.yaml", *common, *train], threads)
    t_train = time.time() - t0 - t_fetch
    _run(run + ["evaluating", "--config_file", str([cfg + "train.yaml", cfg + "evaluate.yaml"]), *common], threads)
    with open(os.path.join(ROOT, out, "test", "scores.json")) as f:
        scores = json.load(f)

    from PIL import Image

    with open(datalist) as f:
        test = json.load(f)["test"][0]
    image = np.asarray(Image.open(os.path.join(ROOT, data, test["image"])))
    truth = np.asarray(Image.open(os.path.join(ROOT, data, test["label"]))) > 0
    pred_path = os.path.join(ROOT, out, "test", "masks", "nuclei_test_mask.png")
    pred = np.asarray(Image.open(pred_path)) > 0
    if pred.shape != truth.shape:
        raise InputError(f"mask {pred.shape} != image {truth.shape} ({pred_path}).")
    dice = dice_score(pred, truth)
    overlay = save_overlay_png(image, truth, os.path.join(ROOT, out, "overlay.png"), pred=pred)
    total = time.time() - t0
    result = {
        "foreground_dice_right_half": dice,
        "iou_right_half": scores["iou"],
        "best_val_dice_checkpoint": os.path.join(out, "model.pt"),
        "settings": dict(
            network="SA2Net",
            base_channels=base_channels,
            input_mode="native",
            roi_size=roi_size,
            crops_per_image=crops_per_image,
            epochs=epochs,
            iterations_per_epoch=iterations_per_epoch,
            iterations=epochs * iterations_per_epoch,
            learning_rate=learning_rate,
            val_interval=val_interval,
            threads=threads,
        ),
        "wall_s": round(total, 1),
        "fetch_s": round(t_fetch, 1),
        "train_s": round(t_train, 1),
        "versions": _versions(),
        "overlay": os.path.relpath(overlay, ROOT),
    }
    with open(os.path.join(ROOT, out, "demo_results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"\nforeground Dice on the right half (test, 256×512): {dice:.3f}   IoU {scores['iou']:.3f}\n"
        f"wall time {total:.0f} s (fetch {t_fetch:.0f} s, train {t_train:.0f} s); overlay: {result['overlay']}"
    )


if __name__ == "__main__":
    run_script(main)
