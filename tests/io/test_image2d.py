"""The generic 2D pipeline (bundle/transforms/image2d.py): load any size/format, resize, binarise, write masks back exactly."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Invertd
from PIL import Image

from bundle.errors import InputError
from bundle.evaluation.reports import BinarySegmentationReport
from bundle.io.image2d import SaveMask2Dd, list_images, mask_output_path, save_overlay_png
from bundle.transforms.image2d import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ReloadLabeld,
    image2d_augmentation,
    image2d_transforms,
)
from bundle.transforms.postprocess import LogitsToMaskd


def _rgb_and_mask(h=173, w=251, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 8 : h // 2, w // 5 : w // 2] = 255  # top-left lesion: a transpose would move it
    return img, mask


def _back(sample, transform, keys="pred", nearest=True):
    """The configs' Invertd of the preprocessing: ``keys`` back at the input image's own size."""
    return Invertd(keys=keys, transform=transform, orig_keys="image", nearest_interp=nearest)(sample)


def test_round_trip_png_original_size_and_orientation(tmp_path):
    img, mask = _rgb_and_mask()
    Image.fromarray(img).save(tmp_path / "x.png")
    Image.fromarray(mask).save(tmp_path / "x_seg.png")
    t = image2d_transforms()
    out = t({"image": str(tmp_path / "x.png"), "label": str(tmp_path / "x_seg.png")})
    assert out["image"].shape == (3, 224, 224) and out["label"].shape == (1, 224, 224)
    assert out["image"].dtype == torch.float32 and set(out["label"].unique().tolist()) == {0.0, 1.0}
    resize = out["image"].applied_operations[-1]  # what Invertd undoes: the size before, the interpolation
    assert resize["class"] == "Resize2Dd" and resize["orig_size"] == (173, 251)
    assert resize["extra_info"] == {"mode": "bilinear", "align_corners": False}
    assert out["label"].applied_operations[-1]["extra_info"]["mode"] == "nearest-exact"
    # rows stay rows: the lesion occupies rows 1/8..1/2 and columns 1/5..1/2 of the resized mask
    lab = out["label"][0].numpy()
    assert lab[40, 70] == 1 and lab[150, 70] == 0 and lab[40, 150] == 0
    # ImageNet normalisation per channel: mean of uniform [0, 1] noise ≈ 0.5
    means = out["image"].mean(dim=(1, 2)).numpy()
    np.testing.assert_allclose(means, (0.5 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD), atol=0.05)

    out["pred"] = out["label"].clone()
    SaveMask2Dd(output_dir=str(tmp_path / "out"), overlay=True)(_back(out, t))
    written = np.asarray(Image.open(tmp_path / "out" / "x_mask.png"))
    assert written.shape == (173, 251) and written.dtype == np.uint8
    assert set(np.unique(written)) == {0, 255}
    assert (written == mask).mean() > 0.99  # nearest down and up: only boundary pixels may move
    overlay = np.asarray(Image.open(tmp_path / "out" / "x_overlay.png"))
    assert overlay.shape == (173, 251, 3)
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]
    # with the truth (evaluation): an empty prediction leaves only the green truth contour
    out["pred"] = MetaTensor(torch.zeros(1, 224, 224))
    SaveMask2Dd(output_dir=str(tmp_path / "ev"), overlay=True, label_key="label")(_back(out, t, ["pred", "label"]))
    ov = np.asarray(Image.open(tmp_path / "ev" / "x_overlay.png")).reshape(-1, 3)
    green, blue = (ov == (0, 255, 0)).all(1).sum(), (ov == (0, 0, 255)).all(1).sum()
    assert green > 2 * (173 // 2 - 173 // 8) and blue == 0


def test_save_mask_skips_existing_unless_overwrite(tmp_path):
    img, mask = _rgb_and_mask(60, 80)
    Image.fromarray(img).save(tmp_path / "y.jpg")
    t = image2d_transforms(keys=("image",))
    sample = t({"image": str(tmp_path / "y.jpg")})
    sample["pred"] = MetaTensor(torch.zeros(1, 224, 224))
    dst = tmp_path / "o" / "y_mask.png"
    SaveMask2Dd(output_dir=str(tmp_path / "o"))(_back(sample, t))
    assert np.asarray(Image.open(dst)).max() == 0
    sample = _back({**sample, "pred": MetaTensor(torch.ones(1, 224, 224))}, t)
    SaveMask2Dd(output_dir=str(tmp_path / "o"))(sample)
    assert np.asarray(Image.open(dst)).max() == 0  # kept
    SaveMask2Dd(output_dir=str(tmp_path / "o"), overwrite=True)(sample)
    assert np.asarray(Image.open(dst)).min() == 255 and np.asarray(Image.open(dst)).shape == (60, 80)


def test_grayscale_rgba_palette_and_bmp(tmp_path):
    gray = np.tile(np.arange(100, dtype=np.uint8)[:, None], (1, 90))  # rows get brighter
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = image2d_transforms(keys=("image",), normalize=None)({"image": str(tmp_path / "g.png")})
    x = out["image"]
    assert x.shape == (3, 224, 224) and torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert x[0, -1, 0] > x[0, 0, 0] and abs(float(x[0, 0, -1] - x[0, 0, 0])) < 1e-6  # varies along rows only

    rgba = np.zeros((50, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = image2d_transforms(keys=("image",), normalize=None)({"image": str(tmp_path / "a.png")})["image"]
    assert x.shape == (3, 224, 224)
    np.testing.assert_allclose(x.mean(dim=(1, 2)).numpy(), [200 / 255, 0, 0], atol=1e-5)

    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8).repeat(20, 0).repeat(20, 1), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.save(tmp_path / "p.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "p.bmp")
    out = image2d_transforms()({"image": str(tmp_path / "p.bmp"), "label": str(tmp_path / "p.png")})
    assert out["label"].shape == (1, 224, 224) and float(out["label"].mean()) == pytest.approx(0.5, abs=0.01)


def test_tiff_16bit_planar_and_instance_labels(tmp_path):
    rng = np.random.default_rng(1)
    planar = rng.integers(0, 4000, (3, 64, 96), dtype=np.uint16)  # (C, H, W) with a narrow 16-bit range
    tifffile.imwrite(tmp_path / "m.tif", planar)
    inst = np.zeros((64, 96), np.uint16)
    inst[5:20, 5:20], inst[30:50, 60:90] = 3, 517  # instance ids → foreground
    tifffile.imwrite(tmp_path / "m_lab.tiff", inst)
    t = image2d_transforms(normalize="minmax")
    out = t({"image": str(tmp_path / "m.tif"), "label": str(tmp_path / "m_lab.tiff")})
    assert out["image"].shape == (3, 224, 224) and out["image"].applied_operations[-1]["orig_size"] == (64, 96)
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0 and float(out["image"].max()) > 0.9
    assert set(out["label"].unique().tolist()) == {0.0, 1.0}
    frac = float(out["label"].mean())
    assert frac == pytest.approx((15 * 15 + 20 * 30) / (64 * 96), abs=0.01)
    # dtype scaling: a 16-bit image is divided by 65535, not 255
    gray16 = np.full((30, 30), 65535 // 2, np.uint16)
    tifffile.imwrite(tmp_path / "h.tif", gray16)
    x = image2d_transforms(keys=("image",), normalize=None)({"image": str(tmp_path / "h.tif")})["image"]
    assert float(x.mean()) == pytest.approx(0.5, abs=1e-3)
    # written back from TIFF input: a PNG named after the TIFF, original size
    out["pred"] = out["label"]
    SaveMask2Dd(output_dir=str(tmp_path / "o"))(_back(out, t))
    back = np.asarray(Image.open(tmp_path / "o" / "m_mask.png"))
    assert back.shape == (64, 96) and ((back > 0) == (inst > 0)).mean() > 0.99


def _root_error(fn):
    """MONAI's Compose wraps a transform's error in RuntimeError('applying transform …'); return the ValueError."""
    with pytest.raises(Exception) as info:
        fn()
    err = info.value
    while err is not None and not isinstance(err, ValueError):
        err = err.__cause__
    return err


def test_errors_name_the_file(tmp_path):
    rgb, _ = _rgb_and_mask(30, 30)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((7, 30, 40), np.uint8))
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((30, 40, 5), np.uint8))
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    cases = [
        (dict(channels=1, normalize=None), "c.png", "c.png has 3 channels; the network takes 1"),
        ({}, "missing.png", "missing.png does not exist"),
        ({}, "stack.tif", "stack.tif has shape (7, 30, 40)"),
        ({}, "five.tif", "five.tif has shape (30, 40, 5)"),
        ({}, "bad.jpg", "cannot read"),
    ]
    for kwargs, name, message in cases:
        t = image2d_transforms(keys=("image",), **kwargs)
        err = _root_error(lambda: t({"image": str(tmp_path / name)}))
        assert isinstance(err, ValueError) and message in str(err) and name in str(err), str(err)
    with pytest.raises(ValueError, match="ImageNet normalisation needs 3 channels"):
        image2d_transforms(channels=1, normalize="imagenet")
    with pytest.raises(ValueError, match="normalize must be"):
        image2d_transforms(normalize="zscore")


def test_list_images(tmp_path):
    for name in ("b.JPG", "a.png", "c.tiff", "notes.txt", "d.bmp"):
        (tmp_path / name).write_bytes(b"x")
    os.makedirs(tmp_path / "sub")
    names = [os.path.basename(x["image"]) for x in list_images(str(tmp_path))]
    assert names == ["a.png", "b.JPG", "c.tiff", "d.bmp"]
    out = tmp_path / "out"
    os.makedirs(out)
    (out / "a_mask.png").write_bytes(b"x")
    assert [os.path.basename(x["image"]) for x in list_images(str(tmp_path), output_dir=str(out))][0] == "b.JPG"
    assert len(list_images(str(tmp_path), output_dir=str(out), overwrite=True)) == 4
    assert list_images(str(tmp_path / "a.png")) == [{"image": str(tmp_path / "a.png")}]
    assert len(list_images([str(tmp_path / "a.png"), str(tmp_path / "d.bmp")])) == 2
    with pytest.raises(ValueError, match=r"nope.png does not exist: give --input an existing image \(\.png"):
        list_images(str(tmp_path / "nope.png"))
    with pytest.raises(ValueError, match="not an image file"):
        list_images(str(tmp_path / "notes.txt"))
    with open(tmp_path / "dl.json", "w") as f:
        json.dump({"test": [{"image": "a.png", "label": "a.png"}]}, f)
    assert list_images(datalist=str(tmp_path / "dl.json")) == [{"image": str(tmp_path / "a.png")}]
    assert mask_output_path("/x/ISIC_0000001.jpg", "/o") == "/o/ISIC_0000001_mask.png"


def test_logits_to_mask_both_heads():
    logits = torch.tensor([[[-2.0, 0.1], [3.0, -0.1]]])
    assert LogitsToMaskd(head="sigmoid")({"pred": logits})["pred"].tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    two = torch.stack([torch.zeros(2, 2), logits[0]])  # softmax p1 > 0.5 ⇔ logit1 > logit0
    assert LogitsToMaskd(head="softmax")({"pred": two})["pred"].tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    with pytest.raises(ValueError, match="1 logit channel"):
        LogitsToMaskd(head="sigmoid")({"pred": two})
    with pytest.raises(ValueError, match="head must be"):
        LogitsToMaskd(head="tanh")


def test_augmentation_moves_image_and_mask_together():
    torch.manual_seed(0)
    aug = image2d_augmentation()
    aug.set_random_state(3)
    mask = torch.zeros(1, 64, 64)
    mask[0, 5:30, 10:40] = 1
    changed = 0
    for _ in range(20):
        out = aug({"image": mask.repeat(3, 1, 1) * 0.5 + 0.25, "label": mask.clone()})
        lab, img = out["label"], out["image"]
        assert set(lab.unique().tolist()) <= {0.0, 1.0}
        # photometric jitter keeps the lesion brighter than the background; geometry is shared
        agree = ((img[0] > img[0].mean()) == (lab[0] > 0.5)).float().mean()
        assert agree > 0.95
        changed += int(not torch.equal(lab, mask))
    assert changed >= 10


def test_overlay_colours(tmp_path):
    img = np.full((40, 50, 3), 128, np.uint8)
    truth, pred = np.zeros((40, 50)), np.zeros((40, 50))
    truth[10:30, 10:30], pred[5:15, 30:45] = 1, 1
    save_overlay_png(img, truth, str(tmp_path / "ov.png"), pred=pred)
    ov = np.asarray(Image.open(tmp_path / "ov.png"))
    assert ov.shape == (40, 50, 3)
    assert tuple(ov[10, 20]) == (0, 255, 0) and tuple(ov[20, 20]) == (128, 128, 128)  # edge vs inside
    assert tuple(ov[5, 35]) == (0, 0, 255)
    with pytest.raises(ValueError, match="overlay mask shape"):
        save_overlay_png(img, np.zeros((5, 5)), str(tmp_path / "bad.png"))


def test_binary_report_numbers(tmp_path):
    p1, t1 = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    p2, t2 = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]]), torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    report = BinarySegmentationReport(str(tmp_path), paper={"method": "paper", "dsc": 0.9129})
    engine = SimpleNamespace(state=SimpleNamespace(output=[{"pred": p1, "label": t1}, {"pred": p2, "label": t2}]))
    report.update(engine)
    summary = report.write()
    # pooled: TP 1, FP 1, FN 2, TN 4 → DSC 2/5, IoU 1/4, ACC 5/8, SE 1/3, SP 4/5
    pooled = summary["pooled"]
    assert pooled["dsc"] == pytest.approx(0.4) and pooled["iou"] == pytest.approx(0.25)
    assert pooled["acc"] == pytest.approx(5 / 8) and pooled["se"] == pytest.approx(1 / 3)
    assert pooled["sp"] == pytest.approx(0.8)
    # per image: DSC 2/3 and 0 → mean 1/3
    assert summary["per_image_mean"]["dsc"] == pytest.approx(1 / 3)
    md = (tmp_path / "summary.md").read_text()
    assert "| paper | 0.9129 | – |" in md and "pooled pixels (2 images) | 0.4000 | 0.2500 | 0.6250" in md
    rows = (tmp_path / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("image,tp,fp,tn,fn") and len(rows) == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["pooled"]["n_images"] == 2


def test_original_size_evaluation_inverts_the_prediction_and_rereads_the_truth(tmp_path):
    img, mask = _rgb_and_mask(97, 143)
    Image.fromarray(img).save(tmp_path / "r.jpg")
    Image.fromarray(mask).save(tmp_path / "r_seg.png")
    t = image2d_transforms()
    out = t({"image": str(tmp_path / "r.jpg"), "label": str(tmp_path / "r_seg.png")})
    out["pred"] = out["label"].clone()
    back = ReloadLabeld()(_back(out, t))  # configs/isic2018/evaluate.yaml --eval_size original
    assert back["pred"].shape == (1, 97, 143) and back["label"].shape == (1, 97, 143)
    np.testing.assert_array_equal(back["label"][0].numpy(), mask > 0)  # truth re-read, not resized twice
    assert (back["pred"][0].numpy() == (mask > 0)).mean() > 0.99
    Image.fromarray(mask[:50]).save(tmp_path / "r_seg.png")  # a mask of another size than its image
    with pytest.raises(InputError, match=r"r_seg.png is \(50, 143\) but its image .*r.jpg is \(97, 143\)"):
        ReloadLabeld()(out)


@pytest.mark.parametrize("h, w", [(173, 251), (97, 143), (60, 80), (300, 160), (224, 224)])
def test_invertd_restores_exactly_what_the_former_restore_steps_computed(tmp_path, h, w):
    """Invertd of Resize2Dd against the calls RestoreSized (probabilities: bilinear, align_corners False, no
    anti-aliasing), RestoreOriginalSized and SaveMask2Dd (masks: nearest-exact) made before it replaced them."""
    rng = np.random.default_rng(h * w)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    t = image2d_transforms(keys=("image",))
    sample = t({"image": str(tmp_path / "i.png")})
    prob = torch.from_numpy(rng.random((1, 224, 224), dtype=np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, (1, 224, 224)).astype(np.float32))  # ids 0..2, not only {0, 1}
    former_prob = F.interpolate(prob[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    former_mask = F.interpolate(labels[None], size=(h, w), mode="nearest-exact")[0].round().clamp(0, 255)
    got_prob = _back({**sample, "pred": MetaTensor(prob)}, t, nearest=False)["pred"]
    got_mask = _back({**sample, "pred": MetaTensor(labels)}, t, nearest=True)["pred"]
    assert isinstance(got_prob, MetaTensor) and got_prob.dtype == torch.float32 and not got_prob.applied_operations
    assert torch.equal(got_prob.as_tensor(), former_prob) and torch.equal(got_mask.as_tensor(), former_mask)
    assert got_mask.meta["filename_or_obj"] == str(tmp_path / "i.png")  # the writer names the output from it


def test_save_mask_refuses_a_prediction_of_another_size(tmp_path):
    img, _ = _rgb_and_mask(60, 80)
    Image.fromarray(img).save(tmp_path / "z.png")
    sample = image2d_transforms(keys=("image",))({"image": str(tmp_path / "z.png")})
    sample["pred"] = torch.ones(1, 224, 224)  # not inverted
    with pytest.raises(InputError, match=r"z.png is \(224, 224\) but the input is \(60, 80\): put Invertd"):
        SaveMask2Dd(output_dir=str(tmp_path / "o"))(sample)
    assert not (tmp_path / "o" / "z_mask.png").exists()
