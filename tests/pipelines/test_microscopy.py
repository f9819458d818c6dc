"""Microscopy pipeline (SA2-Net recipe): folds, layouts, XML masks, loss formula, metrics, ensembles, bundle runs."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from monai.data import MetaTensor
from monai.handlers import CheckpointSaver
from monai.transforms import Invertd
from PIL import Image

from bundle.data.microscopy import (
    build_datalist,
    find_glas,
    find_monuseg,
    find_uctransnet,
    fold_items,
    kfold_assignment,
    xml_to_mask,
)
from bundle.errors import InputError
from bundle.evaluation.reports import PerImageScores
from bundle.evaluation.tables import summarize_folds
from bundle.inferers.ensemble import ProbabilityEnsemble, load_ensemble
from bundle.networks.factory import build_network
from bundle.training.losses import DeepSupervisionDiceBCELoss
from bundle.transforms.microscopy import microscopy_transforms

CFG = os.path.join(ROOT, "configs", "microscopy")

# scikit-learn 1.9.1: [sorted(val) for _, val in KFold(5, shuffle=True, random_state=999).split(np.arange(n))]
SKLEARN_KFOLD_999 = {
    10: [[2, 6], [4, 8], [3, 7], [1, 9], [0, 5]],
    7: [[2, 3], [5, 6], [1], [4], [0]],
    30: [
        [3, 14, 21, 23, 24, 29],
        [4, 6, 9, 10, 12, 18],
        [2, 7, 11, 15, 17, 27],
        [13, 16, 19, 20, 22, 25],
        [0, 1, 5, 8, 26, 28],
    ],
}


# ---------------------------------------------------------------------------------------------------- folds, layouts


@pytest.mark.parametrize("n", sorted(SKLEARN_KFOLD_999))
def test_kfold_assignment_matches_sklearn(n):
    folds = kfold_assignment(n, 5, 999)
    assert [[i for i in range(n) if folds[i] == k] for k in range(5)] == SKLEARN_KFOLD_999[n]


def test_kfold_assignment_rejects_too_few_images():
    with pytest.raises(ValueError, match="at least 5"):
        kfold_assignment(4, 5)


def _rgb(path, h, w, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _glas(root, n_train=7, n_test_a=2, n_test_b=1, order=1):
    """Fake Warwick-QU release: instance-labelled *_anno.bmp masks (ids 1..i), images of different sizes."""
    os.makedirs(root, exist_ok=True)
    names = [("train", n_train), ("testA", n_test_a), ("testB", n_test_b)]
    for prefix, n in names[::order]:
        for i in range(1, n + 1)[::order]:
            h, w = 30 + i, 40 - i
            _rgb(os.path.join(root, f"{prefix}_{i}.bmp"), h, w, i)
            mask = np.zeros((h, w), np.uint8)
            mask[2:8, 3:9] = i  # instance id i
            mask[10:12, 10:20] = i + 1
            Image.fromarray(mask).save(os.path.join(root, f"{prefix}_{i}_anno.bmp"))
    return root


def test_glas_layout_pool_test_and_binary_masks(tmp_path):
    pairs = find_glas(_glas(str(tmp_path / "Warwick_QU")))
    assert [os.path.basename(p[0]) for p in pairs["test"]] == ["testA_1.bmp", "testA_2.bmp", "testB_1.bmp"]
    assert len(pairs["pool"]) == 7
    path = build_datalist(pairs, str(tmp_path / "out"), "GlaS", layout="glas")
    data = json.load(open(path))
    assert data["seed"] == 999 and data["num_folds"] == 5
    mask = np.asarray(Image.open(tmp_path / "out" / data["training"][2]["label"]))
    assert set(np.unique(mask)) == {0, 255} and int((mask > 0).sum()) == 36 + 20
    # folds in sorted-name order: train_1, train_2, ..., train_7 ↔ sklearn's n = 7 assignment
    assert [i["image"] for i in data["training"]] == [f"imagesTr/train_{i}.bmp" for i in range(1, 8)]
    assert [[j for j, i in enumerate(data["training"]) if i["fold"] == k] for k in range(5)] == SKLEARN_KFOLD_999[7]


def test_folds_reproducible_disjoint_and_test_never_used(tmp_path):
    a = build_datalist(find_glas(_glas(str(tmp_path / "a"))), str(tmp_path / "out_a"), "GlaS")
    b = build_datalist(find_glas(_glas(str(tmp_path / "b"), order=-1)), str(tmp_path / "out_b"), "GlaS")
    da, db = json.load(open(a)), json.load(open(b))
    assert da["training"] == db["training"] and da["test"] == db["test"]  # file creation order does not matter
    pool = {os.path.basename(i["image"]) for i in fold_items(a, 0, "training") + fold_items(a, 0, "validation")}
    test = {os.path.basename(i["image"]) for i in fold_items(a, 0, "test")}
    seen = []
    for k in range(5):
        tr = {os.path.basename(i["image"]) for i in fold_items(a, k, "training")}
        va = {os.path.basename(i["image"]) for i in fold_items(a, k, "validation")}
        assert tr.isdisjoint(va) and tr | va == pool and not (tr | va) & test
        assert all(os.path.isabs(i["image"]) for i in fold_items(a, k, "validation"))
        seen += sorted(va)
    assert sorted(seen) == sorted(pool)  # every pool image validates exactly once
    with pytest.raises(ValueError, match="fold must be in 0..4"):
        fold_items(a, 5, "validation")


def test_datalist_refuses_leakage(tmp_path):
    pairs = find_glas(_glas(str(tmp_path / "g")))
    pairs["test"].append(pairs["pool"][0])
    with pytest.raises(ValueError, match="both in the training pool and the test"):
        build_datalist(pairs, str(tmp_path / "out"), "GlaS")
    good = build_datalist(find_glas(str(tmp_path / "g")), str(tmp_path / "out2"), "GlaS")
    data = json.load(open(good))
    data["test"].append({"image": data["training"][0]["image"], "label": data["training"][0]["label"]})
    json.dump(data, open(good, "w"))
    fold = data["training"][0]["fold"]
    with pytest.raises(ValueError, match="both a validation and a test case"):
        fold_items(good, fold, "validation")


def _write_xml(path, polygons):
    regions = "".join(
        f'<Region Id="{i}" Type="0"><Attributes/><Vertices>'
        + "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in poly)
        + "</Vertices></Region>"
        for i, poly in enumerate(polygons, 1)
    )
    with open(path, "w") as f:
        f.write(
            '<?xml version="1.0"?><Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Regions>'
            f"<RegionAttributeHeaders/>{regions}</Regions></Annotation></Annotations>"
        )


def test_monuseg_xml_polygons_to_mask(tmp_path):
    xml = str(tmp_path / "a.xml")
    # a 5×4 rectangle (columns 2..6, rows 3..6) and a right triangle with legs along row 10 and column 10
    _write_xml(xml, [[(2, 3), (6, 3), (6, 6), (2, 6)], [(10, 10), (14, 10), (10, 14)]])
    mask = xml_to_mask(xml, (20, 24))
    assert mask.shape == (20, 24) and mask.dtype == np.uint8
    expected = np.zeros((20, 24), np.uint8)
    expected[3:7, 2:7] = 1
    for r in range(10, 15):  # pixel centres with (col - 10) + (row - 10) <= 4
        expected[r, 10 : 15 - (r - 10)] = 1
    np.testing.assert_array_equal(mask, expected)
    bad = str(tmp_path / "b.xml")
    _write_xml(bad, [])
    with pytest.raises(ValueError, match="no <Region>"):
        xml_to_mask(bad, (5, 5))


def test_monuseg_release_layout(tmp_path):
    import tifffile

    train, test = tmp_path / "MoNuSeg 2018 Training Data", tmp_path / "MoNuSegTestData"
    os.makedirs(train / "Tissue Images")
    os.makedirs(train / "Annotations")
    os.makedirs(test)
    for i in range(5):
        tifffile.imwrite(train / "Tissue Images" / f"TCGA-{i}.tif", np.zeros((12, 16, 3), np.uint8))
        _write_xml(str(train / "Annotations" / f"TCGA-{i}.xml"), [[(1, 1), (3, 1), (3, 2), (1, 2)]])
    tifffile.imwrite(test / "TCGA-T.tif", np.zeros((12, 16, 3), np.uint8))
    _write_xml(str(test / "TCGA-T.xml"), [[(0, 0), (15, 0), (15, 11), (0, 11)]])
    path = build_datalist(find_monuseg(str(train), str(test)), str(tmp_path / "out"), "MoNuSeg")
    data = json.load(open(path))
    assert len(data["training"]) == 5 and data["test"][0]["image"] == "imagesTs/TCGA-T.tif"
    m = np.asarray(Image.open(tmp_path / "out" / data["training"][0]["label"]))
    assert m.shape == (12, 16) and int((m > 0).sum()) == 6
    assert int((np.asarray(Image.open(tmp_path / "out" / data["test"][0]["label"])) > 0).sum()) == 12 * 16
    os.remove(train / "Annotations" / "TCGA-3.xml")
    with pytest.raises(ValueError, match="TCGA-3.xml"):
        find_monuseg(str(train))


def test_uctransnet_layout_and_val_folder(tmp_path):
    for folder, n in (("Train_Folder", 5), ("Val_Folder", 2), ("Test_Folder", 1)):
        os.makedirs(tmp_path / folder / "img")
        os.makedirs(tmp_path / folder / "labelcol")
        for i in range(n):
            _rgb(str(tmp_path / folder / "img" / f"{folder[:2]}{i}.png"), 16, 16, i)
            Image.fromarray(np.full((16, 16), 255, np.uint8)).save(
                tmp_path / folder / "labelcol" / f"{folder[:2]}{i}.png"
            )
    assert len(find_uctransnet(str(tmp_path))["pool"]) == 5  # Val_Folder ignored, as the official code
    assert len(find_uctransnet(str(tmp_path), include_val_folder=True)["pool"]) == 7
    os.remove(tmp_path / "Train_Folder" / "labelcol" / "Tr0.png")
    with pytest.raises(ValueError, match="no mask for"):
        find_uctransnet(str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------- loss


def _official_head(prob, t):
    """Direct transcription of the official WeightedDiceLoss + WeightedBCE (weights 0.5/0.5) on probabilities."""
    b = prob.shape[0]
    p, tt = 0.5 * prob.reshape(b, -1), 0.5 * t.reshape(b, -1)
    dice = np.mean(1 - (2 * (p * tt).sum(1) + 1e-5) / ((p * p).sum(1) + (tt * tt).sum(1) + 1e-5))
    pf, tf = prob.reshape(-1), t.reshape(-1)
    bce = -(tf * np.log(pf) + (1 - tf) * np.log(1 - pf))
    pos, neg = tf > 0.5, tf < 0.5
    wbce = (0.5 * pos * bce / (pos.sum() + 1e-12) + 0.5 * neg * bce / (neg.sum() + 1e-12)).sum()
    return dice, wbce


def test_deep_supervision_loss_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    heads = [torch.randn(3, 1, 6, 5, generator=g, dtype=torch.float64) * 2 for _ in range(4)]
    target = (torch.rand(3, 1, 6, 5, generator=g) > 0.7).double()
    target[1] = 0  # an image without foreground
    expected = 0.0
    for h in heads:
        dice, bce = _official_head(torch.sigmoid(h).numpy(), target.numpy())
        expected += 0.5 * dice + 0.5 * bce
    got = DeepSupervisionDiceBCELoss()(heads, target)
    assert math.isclose(float(got), expected, rel_tol=1e-5)
    # one tensor = one head; (B, H, W) targets; custom weights
    single = DeepSupervisionDiceBCELoss()(heads[0], target[:, 0])
    d0, b0 = _official_head(torch.sigmoid(heads[0]).numpy(), target.numpy())
    assert math.isclose(float(single), 0.5 * d0 + 0.5 * b0, rel_tol=1e-5)
    weighted = DeepSupervisionDiceBCELoss(dice_weight=1.0, bce_weight=0.0, head_weights=[1, 0, 0, 2])(heads, target)
    d3, _ = _official_head(torch.sigmoid(heads[3]).numpy(), target.numpy())
    assert math.isclose(float(weighted), d0 + 2 * d3, rel_tol=1e-5)


def test_loss_hand_values_and_errors():
    # perfect confident prediction: Dice term = 1 - (0.5·n + 1e-5)/(0.5·n + 1e-5) = 0, BCE ≈ 0
    t = torch.zeros(1, 1, 4, 4)
    t[..., :2, :2] = 1
    logits = (t * 2 - 1) * 30
    assert float(DeepSupervisionDiceBCELoss()(logits, t)) < 1e-6
    # all logits 0 (p = 0.5) on an empty mask: Dice term 1 − 1e-5/(0.25·16·0.25 + 1e-5) ≈ 1; BCE = 0.5·ln 2
    zero = torch.zeros(1, 1, 4, 4)
    expected = 0.5 * (1 - 1e-5 / (1.0 + 1e-5)) + 0.5 * (0.5 * math.log(2))
    assert math.isclose(float(DeepSupervisionDiceBCELoss()(zero, zero)), expected, rel_tol=1e-6)
    with pytest.raises(ValueError, match="one logit channel"):
        DeepSupervisionDiceBCELoss()(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="head_weights"):
        DeepSupervisionDiceBCELoss(head_weights=[1, 1])([zero, zero, zero], zero)


# ------------------------------------------------------------------------------------------------------------ metrics


class _Out:
    """Stand-in for an Ignite engine carrying one decollated evaluation output."""

    def __init__(self, items):
        self.state = type("S", (), {"output": items})()


def _mask(h, w, box=None):
    m = np.zeros((1, h, w), np.float32)
    if box:
        r0, r1, c0, c1 = box
        m[0, r0:r1, c0:c1] = 1
    return torch.from_numpy(m)


def test_per_image_scores_on_hand_made_masks(tmp_path):
    s = PerImageScores(str(tmp_path))
    pairs = [
        (_mask(4, 4, (0, 1, 0, 4)), _mask(4, 4, (0, 2, 0, 3))),  # |P| 4, |G| 6, I 3: Dice 0.6, IoU 3/7
        (_mask(4, 4), _mask(4, 4, (0, 2, 0, 2))),  # missed everything: 0, 0
        (_mask(4, 4), _mask(4, 4)),  # both empty: empty_score (1)
        (_mask(3, 5, (0, 3, 0, 5)), _mask(3, 5, (0, 3, 0, 5))),  # perfect, other size: 1, 1
    ]
    for p, t in pairs:
        s.update(_Out([{"pred": p, "label": t}]))
    out = s.write()
    assert [round(x["dice"], 6) for x in out["per_image"]] == [0.6, 0.0, 1.0, 1.0]
    assert [round(x["iou"], 6) for x in out["per_image"]] == [round(3 / 7, 6), 0.0, 1.0, 1.0]
    assert math.isclose(out["dice"], (0.6 + 0 + 1 + 1) / 4) and math.isclose(out["iou"], (3 / 7 + 2) / 4)
    assert json.load(open(tmp_path / "scores.json"))["n_images"] == 4
    nan = PerImageScores(str(tmp_path), empty_score=float("nan"))
    for p, t in pairs:
        nan.update(_Out([{"pred": p, "label": t}]))
    assert math.isclose(nan.compute()["dice"], (0.6 + 0 + 1) / 3)  # the empty/empty image is left out
    with pytest.raises(ValueError, match="differ in size"):
        s.update(_Out([{"pred": _mask(4, 4), "label": _mask(5, 4)}]))


def test_summarize_folds_mean_std_ddof1(tmp_path):
    files = []
    for k, (d, j) in enumerate([(0.8, 0.7), (0.9, 0.8), (0.7, 0.6)]):
        files.append(str(tmp_path / f"f{k}.json"))
        json.dump({"dice": d, "iou": j}, open(files[-1], "w"))
    s = summarize_folds(files)
    assert math.isclose(s["dice_mean"], 0.8) and math.isclose(s["dice_std"], 0.1)  # ddof 1: sqrt(0.02 / 2)
    assert math.isclose(s["iou_mean"], 0.7) and math.isclose(s["iou_std"], 0.1)
    assert math.isnan(summarize_folds(files[:1])["dice_std"])


# ----------------------------------------------------------------------------------------- ensembles, sizes, transforms


class _Const(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(value)))

    def forward(self, x):
        return self.value.expand(x.shape[0], 1, *x.shape[2:])


def test_probability_ensemble_averages_probabilities(tmp_path):
    ens = ProbabilityEnsemble([_Const(0.0), _Const(4.0)])
    out = ens(torch.zeros(2, 3, 5, 7))
    expected = (0.5 + 1 / (1 + math.exp(-4.0))) / 2  # mean of sigmoids, not sigmoid of the mean logit (0.881)
    assert out.shape == (2, 1, 5, 7) and torch.allclose(out, torch.full_like(out, expected))
    torch.save({"model": _Const(-2.0).state_dict()}, tmp_path / "a.pt")  # bundle CheckpointSaver format
    torch.save(_Const(2.0).state_dict(), tmp_path / "b.pt")  # bare state dict
    loaded = load_ensemble(_Const(0.0), [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")])
    assert torch.allclose(loaded(torch.zeros(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 0.5))
    with pytest.raises(ValueError, match="does not exist"):
        load_ensemble(_Const(0.0), [str(tmp_path / "missing.pt")])


def test_sa2net_checkpoint_loads_without_aux_heads(tmp_path):
    train_net = build_network("sa2net", in_channels=1, base_channels=4, deep_supervision=True)
    torch.save({"model": train_net.state_dict()}, tmp_path / "m.pt")
    infer_net = build_network("sa2net", in_channels=1, base_channels=4, deep_supervision=False)
    ens = load_ensemble(infer_net, str(tmp_path / "m.pt"))
    x = torch.randn(1, 1, 32, 48)
    assert torch.allclose(ens(x), torch.sigmoid(train_net.eval()(x)), atol=1e-6)
    with pytest.raises(ValueError, match="'sa2net' or 'msa2net'"):
        build_network("unet")


def test_microscopy_checkpoints_carry_their_settings_and_a_mismatch_is_refused(tmp_path):
    """The settings a checkpoint was trained with travel in it; inference set otherwise (another --input_mode ran
    silently at Dice 0.881 instead of 0.910) is refused with the options to pass, before the weights are compared.
    A checkpoint without settings but of another width or channel count names --base_channels / --in_channels."""
    from bundle.io.checkpoint import TrainedSettings

    trained = dict(network_name="sa2net", in_channels=1, num_classes=1, base_channels=8, variant="paper",
                   input_mode="native", roi_size=128, normalize=None)  # fmt: skip
    net = build_network("sa2net", in_channels=1, base_channels=8)
    torch.save({"model": net.state_dict(), "settings": TrainedSettings(**trained).state_dict()}, tmp_path / "m.pt")
    same = load_ensemble(build_network("sa2net", in_channels=1, base_channels=8), str(tmp_path / "m.pt"),
                         settings=TrainedSettings(**trained))  # fmt: skip
    assert isinstance(same, ProbabilityEnsemble)
    for change, expected in (
        ({"input_mode": "resize"}, "--input_mode native but this run is set to --input_mode resize"),
        ({"base_channels": 64, "in_channels": 3}, "--in_channels 1 --base_channels 8 but this run is set to "
                                                  "--in_channels 3 --base_channels 64"),
        ({"normalize": "imagenet"}, "--normalize $None but this run is set to --normalize imagenet"),
    ):  # fmt: skip
        asked = {**trained, **change}
        other = build_network("sa2net", in_channels=asked["in_channels"], base_channels=asked["base_channels"])
        with pytest.raises(InputError, match=re.escape(expected)):
            load_ensemble(other, str(tmp_path / "m.pt"), settings=TrainedSettings(**asked))
    torch.save({"model": net.state_dict()}, tmp_path / "old.pt")  # no settings: the weights tell
    with pytest.raises(
        InputError, match=r"an SA2-Net built with other settings .* set --base_channels 8 --in_channels 1"
    ):
        load_ensemble(build_network("sa2net", in_channels=3, base_channels=64), str(tmp_path / "old.pt"))


def test_transforms_resize_and_native_and_restore(tmp_path):
    img = np.zeros((30, 50), np.uint16)
    img[5:10, 5:20] = 1000
    import tifffile

    tifffile.imwrite(tmp_path / "g.tif", img)
    Image.fromarray(((img > 0) * 255).astype(np.uint8)).save(tmp_path / "g.png")
    item = {"image": str(tmp_path / "g.tif"), "label": str(tmp_path / "g.png")}
    resize = microscopy_transforms(mode="resize", size=32, channels=3, normalize="minmax")
    out = resize(dict(item))
    assert tuple(out["image"].shape) == (3, 32, 32) and float(out["image"].max()) == 1.0
    assert set(torch.unique(out["label"]).tolist()) == {0.0, 1.0}
    prob = MetaTensor(torch.rand(1, 32, 32))
    invert = Invertd(keys="pred", transform=resize, orig_keys="image", nearest_interp=False)  # as the configs
    restored = invert({"image": out["image"], "pred": prob})["pred"]
    assert tuple(restored.shape) == (1, 30, 50)
    crops = microscopy_transforms(mode="native", channels=1, crop_size=32, crops_per_image=3, augment=True)(dict(item))
    assert len(crops) == 3 and all(tuple(c["image"].shape) == (1, 32, 32) for c in crops)  # 30 rows padded to 32
    native = microscopy_transforms(keys=["image"], mode="native", channels=1)({"image": item["image"]})
    assert tuple(native["image"].shape) == (1, 30, 50)
    assert not native["image"].applied_operations  # native mode: nothing to invert (the configs disable Invertd)


# -------------------------------------------------------------------------------------------------- configs and runs


def _dataset(root, n_pool=5, empty_fold=None):
    """Tiny RGB images of different sizes with a bright square; optional all-empty masks in one fold."""
    src = root / "src"
    for folder, n in (("Train_Folder", n_pool), ("Test_Folder", 2)):
        os.makedirs(src / folder / "img")
        os.makedirs(src / folder / "labelcol")
        for i in range(n):
            h, w = 36 + 3 * i, 44 - 2 * i
            m = np.zeros((h, w), np.uint8)
            m[6:20, 8:26] = 255
            rng = np.random.default_rng(i)
            im = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
            im[m > 0] += 150
            Image.fromarray(im).save(src / folder / "img" / f"{folder[:2]}{i}.png")
            Image.fromarray(m).save(src / folder / "labelcol" / f"{folder[:2]}{i}.png")
    path = build_datalist(find_uctransnet(str(src)), str(root / "data"), "tiny")
    if empty_fold is not None:
        for item in json.load(open(path))["training"]:
            if item["fold"] == empty_fold:
                Image.fromarray(np.zeros((5, 5), np.uint8)).resize(Image.open(root / "data" / item["image"]).size).save(
                    root / "data" / item["label"]
                )
    return root / "data"


def test_configs_parse_and_keep_test_out_of_training(tmp_path):
    from monai.bundle import ConfigWorkflow

    data = _dataset(tmp_path)
    common = dict(
        meta_file=os.path.join(CFG, "metadata.json"),
        logging_file=os.path.join(CFG, "logging.conf"),
        bundle_root=ROOT,
        dataset_dir=str(data),
        output_dir=str(tmp_path / "out"),
    )
    train = ConfigWorkflow(config_file=os.path.join(CFG, "train.yaml"), workflow_type="train", **common)
    train.initialize()
    assert train.check_properties() in ([], None)
    p = train.parser
    assert p.get_parsed_content("optimizer").defaults["lr"] == 1.0e-3 and p["batch_size"] == 4
    assert p["early_stop_patience"] == 50 and p["network_name"] == "sa2net" and p["deep_supervision"] is True
    tr = {i["image"] for i in p.get_parsed_content("train#datalist")}
    va = {i["image"] for i in p.get_parsed_content("validate#datalist")}
    test = {os.path.join(str(data), i["image"]) for i in json.load(open(data / "dataset.json"))["test"]}
    assert tr and va and not tr & va and not (tr | va) & test
    # the official per-epoch learning rates (T_0 = 10 stepped twice per epoch, docs/official_code.md §8), then a restart
    sched, opt = p.get_parsed_content("train#lr_scheduler"), p.get_parsed_content("optimizer")
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    np.testing.assert_allclose(lrs, [1.0e-3, 9.141e-4, 6.891e-4, 4.109e-4, 1.859e-4, 1.0e-3], atol=1e-7)
    # model selection and early stopping read the validation evaluator's metric only
    saver = [h for h in p.get_parsed_content("validate#handlers") if isinstance(h, CheckpointSaver)][0]
    assert saver._key_metric_checkpoint is not None and saver._interval_checkpoint is None  # best only, not last
    train.finalize()
    ckpt = str(tmp_path / "model.pt")  # evaluate / inference build their (ensemble) network from checkpoints
    torch.save({"model": build_network(base_channels=4).state_dict()}, ckpt)
    for files, wtype in ((["train.yaml", "evaluate.yaml"], "train"), (["inference.yaml"], "infer")):
        files = [os.path.join(CFG, f) for f in files]
        wf = ConfigWorkflow(config_file=files, workflow_type=wtype, ckpt_path=ckpt, base_channels=4, **common)
        wf.initialize()
        assert wf.check_properties() in ([], None)
        wf.finalize()


def _bundle(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


TINY = ["--roi_size", "32", "--base_channels", "4", "--num_workers", "0", "--cache_rate", "0"]


@pytest.mark.slow
def test_train_evaluate_ensemble_and_infer_end_to_end(tmp_path):
    data = _dataset(tmp_path)
    train_cfg, eval_cfg = os.path.join(CFG, "train.yaml"), os.path.join(CFG, "evaluate.yaml")
    common = ["--dataset_dir", str(data), *TINY]
    for fold in (0, 1):
        out = tmp_path / f"fold{fold}"
        _bundle(
            "training",
            "--config_file",
            train_cfg,
            "--output_dir",
            str(out),
            "--fold",
            str(fold),
            "--epochs",
            "2",
            *common,
        )
        assert (out / "model.pt").is_file() and (out / "checkpoints" / "checkpoint_final.pt").is_file()
    fold_ckpts = str([str(tmp_path / f"fold{k}" / "model.pt") for k in (0, 1)])
    ens_dir = tmp_path / "ensemble"
    log = _bundle(
        "evaluating",
        "--config_file",
        str([train_cfg, eval_cfg]),
        "--output_dir",
        str(tmp_path / "fold0"),
        "--ckpt_paths",
        fold_ckpts,
        "--eval_dir",
        str(ens_dir),
        *common,
    )
    scores = json.load(open(ens_dir / "scores.json"))
    assert scores["n_images"] == 2 and "per-image Dice" in log and 0.0 <= scores["dice"] <= 1.0
    for name, (h, w) in (("Te0", (36, 44)), ("Te1", (39, 42))):  # masks at the original size
        assert np.asarray(Image.open(ens_dir / "masks" / f"{name}_mask.png")).shape == (h, w)
    pred_dir = tmp_path / "pred"
    _bundle(
        "inference",
        "--config_file",
        os.path.join(CFG, "inference.yaml"),
        "--input",
        str(data / "imagesTs"),
        "--output_dir",
        str(pred_dir),
        "--ckpt_paths",
        fold_ckpts,
        "--roi_size",
        "32",
        "--base_channels",
        "4",
    )
    for name, (h, w) in (("Te0", (36, 44)), ("Te1", (39, 42))):
        mask = np.asarray(Image.open(pred_dir / f"{name}_mask.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        # the same ensemble and pipeline as evaluating: identical masks
        np.testing.assert_array_equal(mask, np.asarray(Image.open(ens_dir / "masks" / f"{name}_mask.png")))
    # the checkpoint knows its settings: inference with another input mode is refused in one line
    saved = torch.load(tmp_path / "fold0" / "model.pt", map_location="cpu", weights_only=True)["settings"]
    assert (saved["base_channels"], saved["roi_size"], saved["input_mode"]) == (4, 32, "resize")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", os.path.join(CFG, "inference.yaml"),
         "--input", str(data / "imagesTs"), "--output_dir", str(tmp_path / "pred2"), "--ckpt_paths", fold_ckpts,
         "--roi_size", "32", "--base_channels", "4", "--input_mode", "native"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("InputError: ")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "was trained with --input_mode resize but this run is set to --input_mode native" in errors[0]


@pytest.mark.slow
def test_early_stopping_on_validation_and_best_is_not_last(tmp_path):
    # fold 0's validation masks are empty, so validation Dice stays 0: patience 1 stops after the 2nd epoch, and the
    # kept model is epoch 1's (the best), not the last one
    data = _dataset(tmp_path, n_pool=5, empty_fold=0)
    out = tmp_path / "run"
    log = _bundle(
        "training",
        "--config_file",
        os.path.join(CFG, "train.yaml"),
        "--dataset_dir",
        str(data),
        "--output_dir",
        str(out),
        "--fold",
        "0",
        "--epochs",
        "6",
        "--early_stop_patience",
        "1",
        "--input_mode",
        "native",
        "--crops_per_image",
        "2",
        *TINY,
    )
    assert "Epoch[2] Complete" in log and "Epoch[3] Complete" not in log
    best = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    final = torch.load(out / "checkpoints" / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    best = best.get("model", best)
    assert any(not torch.equal(best[k], final["model"][k]) for k in best if best[k].is_floating_point())


def test_training_and_validation_caches_hold_images(tmp_path):
    """The cached item is the decoded image (not the file path): only cropping/augmentation runs per visit."""
    from monai.bundle import ConfigWorkflow

    data = _dataset(tmp_path)
    wf = ConfigWorkflow(
        config_file=os.path.join(CFG, "train.yaml"),
        workflow_type="train",
        meta_file=os.path.join(CFG, "metadata.json"),
        logging_file=False,
        bundle_root=ROOT,
        dataset_dir=str(data),
        output_dir=str(tmp_path / "out"),
        num_workers=0,
    )
    wf.initialize()
    for ds_id in ("train#dataset", "validate#dataset"):
        item = wf.parser.get_parsed_content(ds_id)._cache[0]
        assert type(item["image"]).__name__ == "MetaTensor" and item["image"].ndim == 3, ds_id
        assert type(item["label"]).__name__ == "MetaTensor", ds_id


def test_summarize_folds_command(tmp_path):
    """The command configs/microscopy/evaluate.yaml and docs/microscopy.md give for the fold table exists and runs."""
    import subprocess
    import sys

    files = []
    for i, (d, j) in enumerate([(0.8, 0.7), (0.9, 0.8)]):
        files.append(str(tmp_path / f"f{i}.json"))
        json.dump({"dice": d, "iou": j}, open(files[-1], "w"))
    doc = open(os.path.join(ROOT, "docs/microscopy.md")).read()
    assert "python scripts/evaluation/summarize_folds.py" in doc and "bundle.transforms.microscopy summarize" not in doc
    proc = subprocess.run([sys.executable, "scripts/evaluation/summarize_folds.py", *files], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0 and "Dice 85.00 ± 7.07  IoU 75.00 ± 7.07  (2 folds)" in proc.stdout
    proc = subprocess.run([sys.executable, "scripts/evaluation/summarize_folds.py", str(tmp_path / "nope.json")],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.startswith("InputError: ") and "Traceback" not in proc.stderr
