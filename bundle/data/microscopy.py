"""MoNuSeg and GlaS as distributed → images, binary masks and a 5-fold datalist (SA2-Net protocol, no test leakage).

Source layouts handled (``docs/official_code.md`` §8 for what the official SA2-Net code reads):

* ``uctransnet`` -- the folders the official code (copied from UCTransNet) expects:
  ``<src>/Train_Folder/img/<name>`` with ``<src>/Train_Folder/labelcol/<stem>.png`` (MoNuSeg) or
  ``labelcol/<stem>_anno.bmp`` (GlaS), and the same under ``Test_Folder``. ``Val_Folder`` is never read by the
  official code; ``include_val_folder=True`` adds it to the cross-validation pool.
* ``glas`` -- the Warwick-QU GlaS release (one folder, searched recursively): ``train_<i>.bmp`` with
  ``train_<i>_anno.bmp`` form the pool; ``testA_*`` and ``testB_*`` (60 + 20 images) the test split.
* ``monuseg`` -- the MoNuSeg challenge release: ``.tif`` images with Aperio/ImageScope ``.xml`` polygon
  annotations (training data: ``Tissue Images/`` + ``Annotations/``; test data: both in one folder), rasterised
  here to binary masks; a ready ``<stem>.png`` mask next to the image or in a ``masks``/``labelcol`` folder is
  used instead when there is no XML.

Instance masks are binarised (any label > 0 is foreground, as the official ``mask[mask > 0] = 1``). Images are
copied unchanged to ``imagesTr``/``imagesTs``; masks are written as uint8 PNGs {0, 255} to ``labelsTr``/``labelsTs``.

Folds: the official driver runs ``KFold(5, shuffle=True, random_state=999)`` over ``os.listdir(Train_Folder/img)``
(an order the file system decides) and validates on the held-out fold while the test folder stays apart.
:func:`kfold_assignment` reproduces scikit-learn's ``KFold`` exactly (``RandomState(seed).shuffle`` of the indices,
then consecutive chunks, the first ``n % k`` one larger) on the **sorted** file names, so a split is reproducible on
every machine. The datalist stores the seed, the rule and every case's fold.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from bundle.errors import InputError
from bundle.io.atomic import atomic_write_text
from bundle.io.datalist import read_datalist

OFFICIAL_SEED = 999  # Config.py: seed = 999, KFold(random_state=seed)


IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


Pair = Tuple[str, str]  # (image path, mask path or XML path)


def kfold_assignment(n: int, num_folds: int = 5, seed: int = OFFICIAL_SEED) -> List[int]:
    """Fold index of each of ``n`` items, identical to scikit-learn ``KFold(num_folds, shuffle=True, seed)``.

    Args:
        n: number of items (in the order they will be listed, here the sorted file names).
        num_folds: number of folds (5 in the official code).
        seed: ``random_state`` (999 in the official code).

    Returns:
        ``folds[i]`` = the fold in which item ``i`` is the validation case.
    """
    if num_folds < 2 or n < num_folds:
        raise InputError(
            f"{num_folds}-fold cross-validation needs at least {max(num_folds, 2)} "
            f"training images and num_folds >= 2; got {n} images. Add images or lower num_folds."
        )
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)  # sklearn check_random_state(seed).shuffle(indices)
    sizes = np.full(num_folds, n // num_folds)
    sizes[: n % num_folds] += 1
    folds = np.empty(n, dtype=int)
    start = 0
    for k, size in enumerate(sizes):
        folds[order[start : start + size]] = k
        start += size
    return folds.tolist()


def read_image_size(path: str) -> Tuple[int, int]:
    """(height, width) of a 2D image file without decoding more than needed."""
    if path.lower().endswith((".tif", ".tiff")):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
        return int(shape[0]), int(shape[1])
    from PIL import Image

    with Image.open(path) as img:
        return img.height, img.width


def xml_to_mask(xml_path: str, shape: Tuple[int, int]) -> np.ndarray:
    """Rasterises a MoNuSeg (Aperio ImageScope) XML annotation into a binary mask.

    Every ``Region`` under ``Annotation/Regions`` is a nucleus outline given by ``Vertex X=col Y=row`` points
    (sub-pixel floats). Polygons are filled with their outline included (PIL ``ImageDraw.polygon``, vertices at
    pixel centres); overlapping nuclei merge, as the semantic (binary) task requires.

    Args:
        xml_path: the annotation file.
        shape: (height, width) of the image it belongs to.

    Returns:
        uint8 mask (H, W) with 1 inside nuclei.
    """
    from PIL import Image, ImageDraw

    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise InputError(f"{xml_path} is not valid XML ({err}); re-download it.") from err
    height, width = shape
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    regions = root.findall(".//Region")
    for region in regions:
        pts = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
        if len(pts) >= 3:
            draw.polygon(pts, fill=1, outline=1)
        elif len(pts) > 0:  # degenerate outline: keep the touched pixels rather than dropping a nucleus
            draw.line(pts, fill=1)
    if not regions:
        raise InputError(
            f"{xml_path} has no <Region> elements; a MoNuSeg annotation lists one "
            f"Region with <Vertices> per nucleus. Check that this is the annotation file of the image."
        )
    return np.asarray(canvas, dtype=np.uint8)


def _images(folder: str) -> List[str]:
    return sorted(
        os.path.join(folder, f)
        for f in os.listdir(folder)
        if f.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, f))
    )


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _find_mask(label_dir: str, stem: str) -> Optional[str]:
    for name in (f"{stem}.png", f"{stem}_anno.bmp"):  # MoNuSeg, GlaS (official Load_Dataset*.py)
        if os.path.isfile(os.path.join(label_dir, name)):
            return os.path.join(label_dir, name)
    for name in sorted(os.listdir(label_dir)):
        base = os.path.splitext(name)[0]
        if base in (stem, f"{stem}_anno", f"{stem}_mask") and name.lower().endswith(IMAGE_SUFFIXES):
            return os.path.join(label_dir, name)
    return None


def find_uctransnet(src: str, include_val_folder: bool = False) -> Dict[str, List[Pair]]:
    """Pairs of the UCTransNet layout read by the official code (``Train_Folder``/``Test_Folder``).

    Args:
        src: the dataset folder holding ``Train_Folder`` and ``Test_Folder`` (each with ``img``/``labelcol``).
        include_val_folder: add ``Val_Folder`` to the cross-validation pool (the official code ignores it).

    Returns:
        ``{"pool": [(image, mask)], "test": [(image, mask)]}``.
    """
    out: Dict[str, List[Pair]] = {"pool": [], "test": []}
    parts = [("Train_Folder", "pool"), ("Test_Folder", "test")]
    if include_val_folder:
        parts.insert(1, ("Val_Folder", "pool"))
    for folder, split in parts:
        img_dir, lab_dir = os.path.join(src, folder, "img"), os.path.join(src, folder, "labelcol")
        if not os.path.isdir(img_dir) or not os.path.isdir(lab_dir):
            raise InputError(
                f"{src} is not in the UCTransNet layout: {folder}/img and "
                f"{folder}/labelcol are required. Use the 'glas' or 'monuseg' command for the original releases."
            )
        for image in _images(img_dir):
            mask = _find_mask(lab_dir, _stem(image))
            if mask is None:
                raise InputError(
                    f"no mask for {image} in {lab_dir} (expected {_stem(image)}.png for "
                    f"MoNuSeg or {_stem(image)}_anno.bmp for GlaS)."
                )
            out[split].append((image, mask))
    return out


_GLAS_NAME = re.compile(r"^(train|testA|testB)_\d+$")


def find_glas(src: str) -> Dict[str, List[Pair]]:
    """Pairs of the Warwick-QU GlaS release: ``train_*`` → pool, ``testA_*`` + ``testB_*`` → test.

    Args:
        src: the release folder (searched recursively).

    Returns:
        ``{"pool": [...], "test": [...]}`` sorted by file name.
    """
    out: Dict[str, List[Pair]] = {"pool": [], "test": []}
    for folder, _, files in sorted(os.walk(src)):
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() != ".bmp" or not _GLAS_NAME.match(stem):
                continue
            mask = os.path.join(folder, f"{stem}_anno.bmp")
            if not os.path.isfile(mask):
                raise InputError(f"GlaS image {name} in {folder} has no {stem}_anno.bmp.")
            out["pool" if stem.startswith("train") else "test"].append((os.path.join(folder, name), mask))
    if not out["pool"]:
        raise InputError(
            f"no GlaS images (train_<i>.bmp with train_<i>_anno.bmp) under {src}; point "
            f"--src at the Warwick_QU_Dataset folder, or use the 'uctransnet' command for Train_Folder/Test_Folder."
        )
    for split in out:
        out[split].sort(key=lambda p: os.path.basename(p[0]))
    return out


def _monuseg_pairs(folder: str) -> List[Pair]:
    tifs, xmls, pngs = {}, {}, {}
    for sub, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            path = os.path.join(sub, name)
            if ext.lower() in (".tif", ".tiff"):
                tifs[stem] = path
            elif ext.lower() == ".xml":
                xmls[stem] = path
            elif ext.lower() == ".png":
                pngs[stem] = path
    pairs = []
    for stem, image in sorted(tifs.items()):
        ann = xmls.get(stem) or pngs.get(stem) or pngs.get(f"{stem}_mask")
        if ann is None:
            raise InputError(
                f"MoNuSeg image {image} has no {stem}.xml annotation (nor a {stem}.png " f"mask) under {folder}."
            )
        pairs.append((image, ann))
    return pairs


def find_monuseg(train: str, test: Optional[str] = None) -> Dict[str, List[Pair]]:
    """Pairs of the MoNuSeg challenge release (``.tif`` + ``.xml``, or ``.tif`` + ``.png`` masks).

    Args:
        train: the training-data folder (e.g. ``MoNuSeg 2018 Training Data``), searched recursively.
        test: the test-data folder (``MoNuSegTestData``); ``None`` leaves the test split empty.

    Returns:
        ``{"pool": [(tif, xml|png)], "test": [...]}``.
    """
    out = {"pool": _monuseg_pairs(train), "test": _monuseg_pairs(test) if test else []}
    if not out["pool"]:
        raise InputError(f"no .tif images under {train}; point --train at the MoNuSeg data.")
    return out


def _write_mask(src: str, dst: str) -> None:
    """Binary uint8 PNG {0, 255} from an XML annotation or any mask image (labels > 0 → 255)."""
    from PIL import Image

    if src.lower().endswith(".xml"):
        raise InputError("XML annotations need the image size; use xml_to_mask.")
    if src.lower().endswith((".tif", ".tiff")):
        import tifffile

        arr = tifffile.imread(src)
    else:
        with Image.open(src) as img:
            arr = np.asarray(img)
    if arr.ndim == 3:  # RGB(A) mask files: any non-zero channel is foreground
        arr = arr.max(-1)
    Image.fromarray(((arr > 0) * 255).astype(np.uint8)).save(dst)


def build_datalist(
    pairs: Dict[str, List[Pair]], dst: str, name: str, num_folds: int = 5, seed: int = OFFICIAL_SEED, layout: str = ""
) -> str:
    """Copies images, writes binary masks and ``<dst>/dataset.json`` with one fold index per pool case.

    Args:
        pairs: ``{"pool": [(image, annotation)], "test": [...]}`` from one of the ``find_*`` functions.
        dst: output folder (``imagesTr``, ``labelsTr``, ``imagesTs``, ``labelsTs``, ``dataset.json``).
        name: data set name stored in the datalist.
        num_folds: cross-validation folds over the pool (5 as the official code).
        seed: KFold seed (999 as the official code).
        layout: source layout name, stored for the record.

    Returns:
        Path of the datalist.
    """
    pool_names = [os.path.basename(p[0]) for p in pairs["pool"]]
    test_names = {os.path.basename(p[0]) for p in pairs["test"]}
    clash = sorted(set(pool_names) & test_names)
    if clash:
        raise InputError(
            f"{len(clash)} image name(s) are both in the training pool and the test "
            f"split (e.g. {clash[0]}); the test split must stay out of training and model selection."
        )
    if len(set(pool_names)) != len(pool_names):
        raise InputError("duplicate image file names in the training pool; rename them.")
    order = sorted(range(len(pool_names)), key=lambda i: pool_names[i])  # sorted names: reproducible everywhere
    folds = kfold_assignment(len(order), num_folds, seed)
    sections = {"training": [], "test": []}
    for split, section, img_dir, lab_dir in (
        ("pool", "training", "imagesTr", "labelsTr"),
        ("test", "test", "imagesTs", "labelsTs"),
    ):
        os.makedirs(os.path.join(dst, img_dir), exist_ok=True)
        os.makedirs(os.path.join(dst, lab_dir), exist_ok=True)
        items = pairs[split] if split == "test" else [pairs["pool"][i] for i in order]
        for idx, (image, ann) in enumerate(items):
            base = os.path.basename(image)
            stem = _stem(image)
            image_rel, label_rel = f"{img_dir}/{base}", f"{lab_dir}/{stem}.png"
            shutil.copyfile(image, os.path.join(dst, image_rel))
            if ann.lower().endswith(".xml"):
                from PIL import Image

                mask = xml_to_mask(ann, read_image_size(image))
                Image.fromarray(mask * 255).save(os.path.join(dst, label_rel))
            else:
                _write_mask(ann, os.path.join(dst, label_rel))
            item = {"image": image_rel, "label": label_rel}
            if split == "pool":
                item["fold"] = int(folds[idx])
            sections[section].append(item)
    datalist = {
        "name": name,
        "layout": layout,
        "num_folds": num_folds,
        "seed": seed,
        "fold_rule": (
            f"sklearn KFold({num_folds}, shuffle=True, random_state={seed}) over the training images sorted by file "
            f"name; fold k validates on the cases with fold == k and trains on the others; 'test' is never used "
            f"for training or model selection"
        ),
        "training": sections["training"],
        "test": sections["test"],
    }
    path = os.path.join(dst, "dataset.json")
    atomic_write_text(path, json.dumps(datalist, indent=1))
    return path


def fold_items(
    datalist: str, fold: int = 0, section: str = "training", base_dir: Optional[str] = None
) -> List[Dict[str, str]]:
    """The cases of one fold's split, with absolute paths (the configs' ``train``/``validate``/``test`` lists).

    Args:
        datalist: a ``dataset.json`` written by :func:`build_datalist` (pool cases carry a ``fold`` key).
        fold: the held-out fold, ``0 .. num_folds-1``.
        section: ``training`` (pool minus the fold), ``validation`` (the fold) or ``test``.
        base_dir: base of relative paths (default: the datalist's folder).

    Returns:
        A list of ``{"image", "label"}`` dicts.
    """
    data = read_datalist(datalist, "scripts/data/prepare_microscopy.py")
    root = base_dir or os.path.dirname(os.path.abspath(datalist))
    num_folds = int(data.get("num_folds", 0))
    if section not in ("training", "validation", "test"):
        raise InputError(f"section must be training, validation or test, got {section!r}.")
    pool = data.get("training", [])
    if section != "test":
        if any("fold" not in item for item in pool):
            raise InputError(
                f"{datalist} has training cases without a 'fold' key; write it with "
                f"scripts/data/prepare_microscopy.py (or add fold indices 0..K-1)."
            )
        if not 0 <= int(fold) < num_folds:
            raise InputError(f"fold must be in 0..{num_folds - 1} for {datalist}, got {fold}.")
        keep = (lambda k: k != fold) if section == "training" else (lambda k: k == fold)
        items = [item for item in pool if keep(int(item["fold"]))]
    else:
        items = data.get("test", [])
    test_images = {os.path.normpath(os.path.join(root, t["image"])) for t in data.get("test", [])}
    out = []
    for item in items:
        entry = {
            k: (v if os.path.isabs(v) else os.path.join(root, v)) for k, v in item.items() if k in ("image", "label")
        }
        if section != "test" and os.path.normpath(entry["image"]) in test_images:
            raise InputError(f"{entry['image']} is both a {section} and a test case.")
        out.append(entry)
    return out


def write_fold_files(datalist: str, out_dir: Optional[str] = None) -> List[str]:
    """Writes ``val_fold_<k>.txt`` (one image name per line, as the official driver) for the record."""
    data = read_datalist(datalist, "scripts/data/prepare_microscopy.py")
    out_dir = out_dir or os.path.dirname(os.path.abspath(datalist))
    paths = []
    for k in range(int(data["num_folds"])):
        names: Sequence[str] = [os.path.basename(i["image"]) for i in data["training"] if int(i["fold"]) == k]
        path = os.path.join(out_dir, f"val_fold_{k + 1}.txt")
        atomic_write_text(path, "\n".join(names) + "\n")
        paths.append(path)
    return paths
