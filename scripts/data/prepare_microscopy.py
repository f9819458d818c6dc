"""Prepare MoNuSeg / GlaS for the microscopy configs: images + binary masks + a 5-fold ``dataset.json``.

Usage (each writes ``<dst>/dataset.json``; folds as the official SA2-Net code, KFold(5, shuffle, seed 999) on
sorted names; the test split never enters training or model selection)::

    python scripts/data/prepare_microscopy.py glas --src Warwick_QU_Dataset --dst data/glas
    python scripts/data/prepare_microscopy.py monuseg --train "MoNuSeg 2018 Training Data" --test MoNuSegTestData \
        --dst data/monuseg
    python scripts/data/prepare_microscopy.py uctransnet --src datasets/MoNuSeg --dst data/monuseg   # Train_Folder/...

See ``docs/microscopy.md`` and ``bundle/data/microscopy.py`` for the layouts.
"""

import os

from bundle.data.microscopy import (
    OFFICIAL_SEED,
    build_datalist,
    find_glas,
    find_monuseg,
    find_uctransnet,
    write_fold_files,
)
from bundle.errors import run_script


def _finish(pairs, dst, name, num_folds, seed, layout):
    path = build_datalist(pairs, dst, name, num_folds=num_folds, seed=seed, layout=layout)
    write_fold_files(path)
    print(f"{path}: {len(pairs['pool'])} training images in {num_folds} folds (seed {seed}), {len(pairs['test'])} test")
    return path


def glas(src: str, dst: str = "data/glas", num_folds: int = 5, seed: int = OFFICIAL_SEED) -> str:
    """Warwick-QU GlaS release: train_* → 5-fold pool, testA_* + testB_* → test."""
    return _finish(find_glas(src), dst, "GlaS", num_folds, seed, "glas")


def monuseg(
    train: str, test: str = None, dst: str = "data/monuseg", num_folds: int = 5, seed: int = OFFICIAL_SEED
) -> str:
    """MoNuSeg challenge release: .tif images with .xml polygon annotations (rasterised) or .png masks."""
    return _finish(find_monuseg(train, test), dst, "MoNuSeg", num_folds, seed, "monuseg")


def uctransnet(
    src: str,
    dst: str = "data/microscopy",
    name: str = None,
    include_val_folder: bool = False,
    num_folds: int = 5,
    seed: int = OFFICIAL_SEED,
) -> str:
    """The official code's layout (Train_Folder/Test_Folder with img/ and labelcol/); Val_Folder ignored as there."""
    pairs = find_uctransnet(src, include_val_folder=include_val_folder)
    return _finish(pairs, dst, name or os.path.basename(os.path.normpath(src)), num_folds, seed, "uctransnet")


if __name__ == "__main__":
    run_script({"glas": glas, "monuseg": monuseg, "uctransnet": uctransnet})
