"""Prepare ISIC2018 Task 1: pair images and masks, draw the 1815/259/520 split, write the datalist.

Usage:
    python scripts/data/prepare_isic2018.py --src /data/ISIC2018 --dst data/isic2018 [--seed 0]
    python scripts/data/prepare_isic2018.py --images_dir X --masks_dir Y --dst data/isic2018
    python scripts/data/prepare_isic2018.py --src /data/ISIC2018 --split_file other/split.json   # re-use a split

``--src`` holds the official ``ISIC2018_Task1-2_Training_Input/`` (``ISIC_<id>.jpg``) and
``ISIC2018_Task1_Training_GroundTruth/`` (``ISIC_<id>_segmentation.png``) folders. Writes ``<dst>/dataset.json``
and ``<dst>/split.json``; see docs/isic2018.md.
"""

from bundle.data.isic import prepare_isic2018
from bundle.errors import run_script


def main(
    src: str = None,
    dst: str = "data/isic2018",
    images_dir: str = None,
    masks_dir: str = None,
    seed: int = 0,
    split_file: str = None,
) -> None:
    """Writes the datalist and split file; prints the datalist path and the split sizes."""
    path = prepare_isic2018(src, dst, images_dir=images_dir, masks_dir=masks_dir, seed=seed, split_file=split_file)
    import json

    with open(path) as f:
        counts = json.load(f)["counts"]
    print(f"{path}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    run_script(main)
