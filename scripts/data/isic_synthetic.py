"""Write a small synthetic ISIC2018-like download (official folder layout) for smoke-testing the pipeline.

Usage:
    python scripts/data/isic_synthetic.py --dst data/isic_synthetic --n 12

Each image is a skin-toned RGB JPG of a random size (150–320 × 180–360) with noise and one dark elliptical
"lesion"; its mask is the ellipse as a 0/255 PNG. These are **not** dermoscopy images: they only exercise loading,
the split, training, evaluation and inference end to end (docs/isic2018.md).
"""

import os

import numpy as np
from PIL import Image

from bundle.data.isic import IMAGES_DIR, MASKS_DIR
from bundle.data.synthetic import synthetic_lesion
from bundle.errors import InputError, run_script


def main(dst: str = "data/isic_synthetic", n: int = 12, seed: int = 0) -> None:
    """Writes ``n`` image/mask pairs under ``dst`` in the official two-folder layout; prints ``dst``."""
    if n < 3:
        raise InputError(f"n must be ≥ 3 (train/validation/test), got {n}.")
    os.makedirs(os.path.join(dst, IMAGES_DIR), exist_ok=True)
    os.makedirs(os.path.join(dst, MASKS_DIR), exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(150, 320)), int(rng.integers(180, 360))
        img, mask = synthetic_lesion(h, w, rng)
        Image.fromarray(img).save(os.path.join(dst, IMAGES_DIR, f"ISIC_{i:07d}.jpg"), quality=95)
        Image.fromarray(mask).save(os.path.join(dst, MASKS_DIR, f"ISIC_{i:07d}_segmentation.png"))
    print(dst)


if __name__ == "__main__":
    run_script(main)
