"""ISIC2018 pipeline on synthetic dermoscopy-like images (no real image with a mask is available here):
split reproducibility, datalist, configs and recipe, metric formulas, and train → evaluate → infer through
`python -m monai.bundle run` with the real MSA²Net on CPU."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT
from monai.bundle import ConfigWorkflow
from PIL import Image

from bundle.data.isic import (
    IMAGES_DIR,
    ISIC2018_SPLIT,
    MASKS_DIR,
    PAPER_MSA2NET_ISIC2018,
    find_pairs,
    prepare_isic2018,
    split_ids,
)
from bundle.data.synthetic import synthetic_lesion
from bundle.evaluation.reports import BinarySegmentationReport
from bundle.training.losses import BoundaryDoULoss

CFG = os.path.join(ROOT, "configs")
TRAIN = ["configs/train.yaml", "configs/isic2018/train.yaml"]
EVAL = [*TRAIN, "configs/isic2018/evaluate.yaml"]
INFER = ["configs/inference.yaml", "configs/isic2018/inference.yaml"]
SIZES = [(150, 200), (231, 180), (197, 305), (240, 240), (160, 290), (283, 171), (175, 226), (222, 263)]


def make_lesion(h, w, seed):
    """An RGB "dermoscopy" image (skin tone + noise) with a dark elliptical lesion, and its 0/255 mask."""
    return synthetic_lesion(h, w, np.random.default_rng(seed))


def write_layout(root, sizes=SIZES):
    """The official download layout: ISIC_<id>.jpg and ISIC_<id>_segmentation.png in their two folders."""
    os.makedirs(root / IMAGES_DIR, exist_ok=True)
    os.makedirs(root / MASKS_DIR, exist_ok=True)
    (root / IMAGES_DIR / "LICENSE.txt").write_text("not an image")
    for i, (h, w) in enumerate(sizes):
        img, mask = make_lesion(h, w, i)
        Image.fromarray(img).save(root / IMAGES_DIR / f"ISIC_{i:07d}.jpg", quality=95)
        Image.fromarray(mask).save(root / MASKS_DIR / f"ISIC_{i:07d}_segmentation.png")
    return root


@pytest.fixture(scope="module")
def isic(tmp_path_factory):
    root = write_layout(tmp_path_factory.mktemp("isic"))
    prepare_isic2018(str(root), str(root / "prep"))
    return root


# ---------------------------------------------------------------- split and datalist


def test_split_2594_sizes_reproducible_disjoint():
    ids = [f"ISIC_{i:07d}" for i in range(2594)]
    split = split_ids(ids, seed=0)
    assert tuple(len(split[s]) for s in ("training", "validation", "test")) == ISIC2018_SPLIT == (1815, 259, 520)
    sets = [set(split[s]) for s in ("training", "validation", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(ids)
    shuffled = list(np.random.default_rng(5).permutation(ids))
    assert split_ids(shuffled, seed=0) == split  # input order does not matter (sorted first)
    other = split_ids(ids, seed=1)
    assert other != split and len(other["test"]) == 520
    # not simply the first 1815 sorted ids (a random permutation), and sorted within each section
    assert split["training"] != ids[:1815] and split["test"] == sorted(split["test"])
    assert split["test"][:3] == split_ids(ids, seed=0)["test"][:3]


def test_split_proportional_and_errors():
    split = split_ids([f"ISIC_{i}" for i in range(100)])
    assert [len(split[s]) for s in ("training", "validation", "test")] == [70, 10, 20]
    with pytest.raises(ValueError, match="too few"):
        split_ids(["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        split_ids(["a", "a", "b", "c"])


def test_prepare_2594_files_through_the_script(tmp_path):
    img_dir, mask_dir = tmp_path / IMAGES_DIR, tmp_path / MASKS_DIR
    os.makedirs(img_dir)
    os.makedirs(mask_dir)
    for i in range(2594):  # pairing only lists names: empty files suffice
        (img_dir / f"ISIC_{i:07d}.jpg").touch()
        (mask_dir / f"ISIC_{i:07d}_segmentation.png").touch()
    (img_dir / "ATTRIBUTION.txt").touch()
    cmd = [sys.executable, "scripts/data/prepare_isic2018.py", "--src", str(tmp_path), "--dst", str(tmp_path / "d")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training 1815, validation 259, test 520" in proc.stdout
    datalist = json.loads((tmp_path / "d" / "dataset.json").read_text())
    split = json.loads((tmp_path / "d" / "split.json").read_text())
    assert split["seed"] == 0 and split["counts"] == {"training": 1815, "validation": 259, "test": 520}
    first = datalist["test"][0]
    assert os.path.basename(first["image"]) == split["test"][0] + ".jpg"
    assert os.path.exists(os.path.join(tmp_path / "d", first["label"]))  # relative to dataset_dir
    # a second run, and a run re-using the split file, give the same split
    again = prepare_isic2018(str(tmp_path), str(tmp_path / "e"))
    assert json.load(open(again))["test"] == datalist["test"]
    reuse = prepare_isic2018(str(tmp_path), str(tmp_path / "f"), seed=99, split_file=str(tmp_path / "d" / "split.json"))
    assert json.load(open(reuse))["training"] == datalist["training"]


def test_prepare_errors(tmp_path):
    write_layout(tmp_path, SIZES[:4])
    os.remove(tmp_path / MASKS_DIR / "ISIC_0000002_segmentation.png")
    with pytest.raises(ValueError, match=r"1 image\(s\) without .*ISIC_0000002"):
        find_pairs(str(tmp_path / IMAGES_DIR), str(tmp_path / MASKS_DIR))
    os.remove(tmp_path / IMAGES_DIR / "ISIC_0000002.jpg")
    (tmp_path / MASKS_DIR / "ISIC_0000009_segmentation.png").touch()
    with pytest.raises(ValueError, match=r"1 mask\(s\) without .*ISIC_0000009"):
        prepare_isic2018(str(tmp_path), str(tmp_path / "d"))
    with pytest.raises(ValueError, match="does not exist"):
        prepare_isic2018(str(tmp_path / "nowhere"), str(tmp_path / "d"))
    with pytest.raises(ValueError, match="give --src"):
        prepare_isic2018(None, str(tmp_path / "d"))
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"training": ["ISIC_0000000"], "validation": ["ISIC_0000001"], "test": ["ISIC_7"]}))
    os.remove(tmp_path / MASKS_DIR / "ISIC_0000009_segmentation.png")
    with pytest.raises(ValueError, match="1 id\\(s\\) not found"):
        prepare_isic2018(str(tmp_path), str(tmp_path / "d"), split_file=str(bad))


# ---------------------------------------------------------------- configs and recipe


def _workflow(files, workflow_type, **override):
    return ConfigWorkflow(
        config_file=[os.path.join(ROOT, f) for f in files],
        meta_file=os.path.join(CFG, "metadata.json"),
        logging_file=os.path.join(CFG, "logging.conf"),
        workflow_type=workflow_type,
        **override,
    )


@pytest.mark.parametrize(
    "files, workflow_type, run_id",
    [(TRAIN, "train", "training"), (EVAL, "train", "evaluating"), (INFER, "infer", "inference")],
)
def test_config_properties(files, workflow_type, run_id, isic, tmp_path):
    paths = dict(dataset_dir=str(isic / "prep"), output_dir=str(tmp_path), ckpt_path=str(tmp_path / "m" / "model.pt"))
    wf = _workflow(files, workflow_type, bundle_root=ROOT, num_workers=0, **paths)
    wf.initialize()
    assert wf.check_properties() in ([], None)
    assert run_id in wf.parser.config
    wf.finalize()


def test_recipe_defaults_and_heads(isic):
    cfg = _workflow(TRAIN, "train", dataset_dir=str(isic / "prep")).parser
    assert cfg["epochs"] == 50 and cfg["batch_size"] == 16 and cfg["learning_rate"] == 1.0e-4
    assert cfg["loss_name"] == "bdou" and cfg["in_channels"] == 3 and cfg["normalize"] == "imagenet"
    assert cfg["roi_size"] == [224, 224] and cfg["poly_power"] == 0.0 and cfg["val_interval"] == 1
    assert cfg["validate#datalist"]["section"] == "validation"  # model selection on the validation split, not test
    assert cfg.get_parsed_content("num_classes") == 1
    assert cfg.get_parsed_content("loss").sigmoid is True
    optimizer = cfg.get_parsed_content("optimizer")
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 1.0e-4
    assert len(cfg.get_parsed_content("train#dataloader")) == 1  # 5 training images / batch 16
    soft = _workflow(TRAIN, "train", dataset_dir=str(isic / "prep"), head="softmax").parser
    assert soft.get_parsed_content("num_classes") == 2
    loss = soft.get_parsed_content("loss")
    assert isinstance(loss, BoundaryDoULoss) and loss.sigmoid is False


def test_paper_row_matches_table2_everywhere():
    row = yaml.safe_load(open(os.path.join(CFG, "isic2018", "evaluate.yaml")))["validate#handlers"][-1]["paper"]
    assert row["dsc"] == PAPER_MSA2NET_ISIC2018["dsc"] == 0.9129
    assert (row["se"], row["sp"], row["acc"]) == (0.8840, 0.9557, 0.9640)
    assert (PAPER_MSA2NET_ISIC2018["se"], PAPER_MSA2NET_ISIC2018["sp"], PAPER_MSA2NET_ISIC2018["acc"]) == (
        0.8840,
        0.9557,
        0.9640,
    )


# ---------------------------------------------------------------- metrics


def test_pooled_vs_per_image_hand_case(tmp_path):
    """Two images of different sizes; one has no lesion (its SE is undefined and left out of the mean)."""
    t1 = np.zeros((4, 5))
    t1[0, :4] = 1  # 4 lesion pixels
    p1 = np.zeros((4, 5))
    p1[0, :3], p1[1, 0] = 1, 1  # TP 3, FP 1, FN 1, TN 15
    t2, p2 = np.zeros((3, 3)), np.zeros((3, 3))
    p2[2, 2] = 1  # TP 0, FP 1, FN 0, TN 8
    report = BinarySegmentationReport(str(tmp_path), paper=PAPER_MSA2NET_ISIC2018)
    for p, t in ((p1, t1), (p2, t2)):
        report.metrics.update(p, t)
        report.names.append("x")
    s = report.write()
    tp, fp, fn, tn = 3, 2, 1, 23
    pooled = s["pooled"]
    assert pooled["dsc"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) == pytest.approx(6 / 9)
    assert pooled["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert pooled["acc"] == pytest.approx((tp + tn) / 29)
    assert pooled["se"] == pytest.approx(3 / 4) and pooled["sp"] == pytest.approx(23 / 25)
    mean = s["per_image_mean"]
    assert mean["se"] == pytest.approx(3 / 4)  # image 2's SE = 0/0 is NaN, skipped
    assert mean["dsc"] == pytest.approx((6 / 8 + 0.0) / 2)  # image 2: DSC 0 (a false positive, no lesion)
    assert mean["sp"] == pytest.approx((15 / 16 + 8 / 9) / 2)
    md = (tmp_path / "summary.md").read_text()
    assert "| MSA²Net (paper, Table 2) | 0.9129 | – | 0.9640 | 0.8840 | 0.9557 |" in md
    assert "| this run, pooled pixels (2 images) | 0.6667 | 0.5000 |" in md


# ---------------------------------------------------------------- end to end through the bundle CLI


def _bundle(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def _cfg(files):
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


@pytest.mark.slow
def test_train_evaluate_infer_sigmoid(isic, tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "run" / "model.pt"
    common = ["--dataset_dir", str(isic / "prep"), "--output_dir", str(out), "--ckpt_path", str(ckpt)]
    tiny = ["--epochs", "1", "--batch_size", "2", "--num_workers", "0", "--show_progress", "False"]
    log = _bundle(["training", "--config_file", _cfg(TRAIN), *common, *tiny])
    assert "Epoch: 1/1, Iter: 3/3" in log and "val_mean_dice" in log  # 5 training images at batch 2
    assert ckpt.exists() and (out / "checkpoints" / "checkpoint_final.pt").exists()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["head.weight"].shape[0] == 1 and state["encoder.model.stem.conv1.weight"].shape[1] == 3

    log = _bundle(["evaluating", "--config_file", _cfg(EVAL), *common, "--num_workers", "0", "--save_masks", "True"])
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["pooled"]["n_images"] == 2 and metrics["paper"]["dsc"] == 0.9129
    with open(out / "eval" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    split = json.loads((isic / "prep" / "split.json").read_text())
    assert sorted(r["image"] for r in rows) == [i + ".jpg" for i in split["test"]]
    tp, fp, tn, fn = (sum(int(r[k]) for r in rows) for k in ("tp", "fp", "tn", "fn"))
    assert tp + fp + tn + fn == 2 * 224 * 224  # scored at network size
    assert metrics["pooled"]["dsc"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert "MSA²Net (paper, Table 2) | 0.9129" in (out / "eval" / "summary.md").read_text()
    for i in split["test"]:  # --save_masks: original size
        h, w = SIZES[int(i[-7:])]
        assert np.asarray(Image.open(out / "eval" / "masks" / f"{i}_mask.png")).shape == (h, w)
    # --eval_size original: every original pixel counted once
    _bundle(["evaluating", "--config_file", _cfg(EVAL), *common, "--num_workers", "0", "--eval_size", "original"])
    with open(out / "eval" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    pixels = {r["image"]: sum(int(r[k]) for k in ("tp", "fp", "tn", "fn")) for r in rows}
    assert pixels == {i + ".jpg": np.prod(SIZES[int(i[-7:])]) for i in split["test"]}

    # inference on a folder of JPG + PNG (RGBA) of various sizes → masks and overlays at the original size
    src = tmp_path / "new"
    os.makedirs(src)
    img, _ = make_lesion(131, 377, 42)
    Image.fromarray(img).save(src / "a.jpg")
    rgba = np.concatenate([make_lesion(260, 199, 43)[0], np.full((260, 199, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(src / "b.png")
    pred_dir = tmp_path / "pred"
    args = ["inference", "--config_file", _cfg(INFER), "--input", str(src), "--output_dir", str(pred_dir)]
    args += ["--ckpt_path", str(ckpt), "--num_workers", "0"]
    _bundle(args)
    for name, shape in (("a", (131, 377)), ("b", (260, 199))):
        mask = np.asarray(Image.open(pred_dir / f"{name}_mask.png"))
        assert mask.shape == shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.asarray(Image.open(pred_dir / f"{name}_overlay.png")).shape == (*shape, 3)
    assert "nothing to do" in _bundle(args)  # outputs exist: skipped unless --overwrite True


@pytest.mark.slow
def test_train_softmax_head(isic, tmp_path):
    out, ckpt = tmp_path / "run", tmp_path / "run" / "model.pt"
    args = ["training", "--config_file", _cfg(TRAIN), "--dataset_dir", str(isic / "prep"), "--output_dir", str(out)]
    args += ["--ckpt_path", str(ckpt), "--head", "softmax", "--epochs", "1", "--batch_size", "4", "--num_workers", "0"]
    log = _bundle([*args, "--show_progress", "False", "--augment", "False"])
    assert "Epoch: 1/1, Iter: 2/2" in log
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["head.weight"].shape[0] == 2


def test_training_and_validation_caches_hold_images(isic, tmp_path):
    """The cached item is the decoded, resized image (not the file path): only augmentation runs per visit."""
    wf = _workflow(TRAIN, "train", dataset_dir=str(isic / "prep"), output_dir=str(tmp_path), num_workers=0)
    wf.initialize()
    for ds_id in ("train#dataset", "validate#dataset"):
        item = wf.parser.get_parsed_content(ds_id)._cache[0]
        assert type(item["image"]).__name__ == "MetaTensor" and tuple(item["image"].shape) == (3, 224, 224), ds_id
        assert type(item["label"]).__name__ == "MetaTensor", ds_id


@pytest.mark.parametrize("files, item", [(TRAIN, "train#datalist"), (EVAL, "validate#datalist")])
def test_a_missing_isic_datalist_names_the_isic_script(files, item, tmp_path):
    """ISIC errors point at the ISIC preparation script, not at the CT one the overlay inherits."""
    from bundle.errors import root_input_error

    wf = _workflow(files, "train", bundle_root=ROOT, dataset_dir=str(tmp_path / "none"), output_dir=str(tmp_path))
    with pytest.raises(Exception) as err:
        wf.parser.get_parsed_content(item)
    message = root_input_error(err.value)
    assert "scripts/data/prepare_isic2018.py writes one" in message and "prepare_synapse" not in message


@pytest.mark.parametrize("files, entries", [(["configs/train.yaml"], {"model", "geometry"}), (TRAIN, {"model"})])
def test_the_published_model_holds_what_the_best_model_holds(files, entries, tmp_path):
    """The overlay overrides the best-model saver by its id (validate#best_model_saver), whose save_dict the
    --publish_model saver shares: models/isic2018_model.pt holds the weights only, as <output_dir>/model.pt does
    (the published ISIC file used to carry the CT geometry), and the CT files both hold the geometry."""
    from monai.handlers import CheckpointSaver

    wf = _workflow(files, "train", bundle_root=str(tmp_path), output_dir=str(tmp_path / "run"), publish_model=True)
    savers = [h for h in wf.parser.get_parsed_content("validate#handlers") if isinstance(h, CheckpointSaver)]
    assert [s.save_dir for s in savers] == [str(tmp_path / "run"), str(tmp_path / "models")]
    assert [set(s.save_dict) for s in savers] == [entries, entries]


def test_isic_training_keeps_its_best_model_in_its_run_folder(tmp_path):
    """ckpt_path is the run's own (evaluation reads it there); --publish_model True also writes the file
    configs/isic2018/inference.yaml reads, models/isic2018_model.pt."""
    train = _workflow(TRAIN, "train", bundle_root=str(tmp_path), output_dir=str(tmp_path / "runs" / "a")).parser
    infer = _workflow(INFER, "infer", bundle_root=str(tmp_path)).parser
    assert train.get_parsed_content("ckpt_path") == str(tmp_path / "runs" / "a" / "model.pt")
    assert train.get_parsed_content("publish_model") is False
    assert train.get_parsed_content("publish_path") == infer.get_parsed_content("ckpt_path")
    assert infer.get_parsed_content("ckpt_path") == str(tmp_path) + "/models/isic2018_model.pt"
