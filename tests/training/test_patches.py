"""Training at native resolution (``slice_window: sliding``): whole slices at the pixel size in the slice table,
network-sized patches cut from them with foreground oversampling (bundle/training/patches.py), and train.yaml's run:
patches in training, sliding windows in validation, the mode saved in the checkpoint and applied by inference."""

import os

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY_NET
from monai.bundle import ConfigWorkflow

from bundle.data.synthetic import write_synthetic_case
from bundle.errors import InputError
from bundle.training.patches import PatchSampler
from bundle.training.slice_table import SliceBatches, SliceTable, check_augment_backend
from bundle.transforms.ct import ct_volume_transforms
from bundle.transforms.geometry import checkpoint_geometry, inplane_spacing, to_network_grid

CFG = os.path.join(ROOT, "configs")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Two volumes of different in-plane sizes (0.8 × 0.7 mm pixels)."""
    root = tmp_path_factory.mktemp("patches")
    out = []
    for i, shape in enumerate([(50, 44, 3), (40, 60, 2)]):
        img, lab = write_synthetic_case(str(root / f"c{i}.nii.gz"), str(root / f"c{i}_l.nii.gz"), shape, i)
        out.append({"image": img, "label": lab})
    return out


def test_sliding_table_holds_every_slice_whole_at_the_pixel_size(cases):
    """At 0.5 mm the 40 × 30.8 mm and 32 × 42 mm slices are 80 × 62 and 64 × 84 grids, padded to 80 × 84."""
    table = SliceTable(cases, ct_volume_transforms(), size=32, pixel_size=0.5, slice_window="sliding")
    assert table.image.shape == (5, 1, 80, 84) and table.label.shape == (5, 80, 84)
    assert table.extent.tolist() == [[80, 62]] * 3 + [[64, 84]] * 2
    assert table.nbytes == 5 * (80 * 84 * 3 + 4 + 8)
    vol = ct_volume_transforms()(cases[1])
    spacing = torch.tensor([inplane_spacing(vol["image"].affine)], dtype=torch.float64)
    for z in range(2):
        x = torch.as_tensor(vol["image"][..., z])[None].float()
        expected = to_network_grid(x, spacing, 0.5, (64, 84), "bicubic")[0][0, 0]
        np.testing.assert_allclose(table.image[3 + z, 0, :64].float(), expected, atol=1e-3)  # float16
        assert not table.image[3 + z, :, 64:].any() and not table.label[3 + z, 64:].any()  # padding, never sampled
    assert table.label.max() == 5  # labels sampled nearest


def test_patches_are_the_table_pixels_at_their_corners_inside_each_slice(cases):
    table = SliceTable(cases, ct_volume_transforms(), size=32, pixel_size=0.5, slice_window="sliding")
    sampler = PatchSampler(32, foreground_fraction=0.5)
    rows = torch.tensor([0, 4, 2, 3, 1, 4, 0, 3])
    corners = sampler.corners(table.label, table.extent, rows, torch.Generator().manual_seed(7))
    image, label = sampler(table.image, table.label, table.extent, rows, torch.Generator().manual_seed(7))
    assert image.shape == (8, 1, 32, 32) and label.shape == (8, 32, 32)
    for i, (row, (r, c)) in enumerate(zip(rows.tolist(), corners.tolist())):
        assert 0 <= r <= table.extent[row, 0] - 32 and 0 <= c <= table.extent[row, 1] - 32
        assert torch.equal(image[i], table.image[row, :, r : r + 32, c : c + 32])
        assert torch.equal(label[i], table.label[row, r : r + 32, c : c + 32])


def _one_labelled_pixel(n=600, size=200, at=(150, 60)):
    """``n`` rows of ``size``² blank slices, each with one labelled pixel at ``at``; one row without a label."""
    image = torch.zeros(n, 1, size, size)
    label = torch.zeros(n, size, size, dtype=torch.uint8)
    label[:-1, at[0], at[1]] = 3
    extent = torch.full((n, 2), size, dtype=torch.int32)
    return image, label, extent


def test_foreground_patches_are_centred_on_a_labelled_pixel():
    image, label, extent = _one_labelled_pixel(n=5, at=(150, 60))
    sampler = PatchSampler(64, foreground_fraction=1.0)
    corners = sampler.corners(label, extent, torch.arange(5), torch.Generator().manual_seed(0))
    assert corners[:4].tolist() == [[118, 28]] * 4  # centred: 150 - 32, 60 - 32
    assert 0 <= corners[4].min() and corners[4].max() <= 200 - 64  # the unlabelled slice: a random patch
    near_edge = label.clone()
    near_edge[:, 150, 60], near_edge[:, 190, 5] = 0, 1
    corners = sampler.corners(near_edge, extent, torch.arange(4), torch.Generator().manual_seed(0))
    assert corners.tolist() == [[136, 0]] * 4  # clamped inside the slice, the pixel still in the patch


def test_a_third_of_the_patches_are_drawn_on_a_labelled_pixel():
    """One labelled pixel per 128² slice, 32² patches: a uniform patch holds it with probability p (counted below,
    0.095); with the fraction f = 1/3 the share is f + (1 - f) p, within 4 standard errors over 2,000 patches."""
    size, s, at, n = 128, 32, (100, 40), 2000
    image, label, extent = _one_labelled_pixel(n=n + 1, size=size, at=at)
    span = size - s + 1
    p_uniform = sum(r <= at[0] < r + s for r in range(span)) * sum(c <= at[1] < c + s for c in range(span)) / span**2
    assert p_uniform == pytest.approx(0.0952, abs=1e-4)
    for fraction in (0.0, 1 / 3):
        corners = PatchSampler(s, fraction).corners(label, extent, torch.arange(n), torch.Generator().manual_seed(1))
        r, c = corners[:, 0], corners[:, 1]
        holds = ((r <= at[0]) & (at[0] < r + s) & (c <= at[1]) & (at[1] < c + s)).float().mean().item()
        expected = fraction + (1 - fraction) * p_uniform
        assert abs(holds - expected) < 4 * (expected * (1 - expected) / n) ** 0.5, (fraction, holds, expected)


def test_epochs_of_patches_depend_only_on_seed_and_epoch(cases):
    table = SliceTable(cases, ct_volume_transforms(), size=32, pixel_size=0.5, slice_window="sliding")
    runs = []
    for _ in range(2):
        batches = SliceBatches(table, batch_size=2, seed=5, augment=True, foreground_fraction=0.5)
        batches.set_epoch(3)
        runs.append([(b["image"], b["label"]) for b in batches])
    assert [b[0].shape for b in runs[0]] == [(2, 1, 32, 32), (2, 1, 32, 32), (1, 1, 32, 32)]
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(*runs))
    batches.set_epoch(4)
    assert not torch.equal(next(iter(batches))["image"], runs[0][0][0])


def test_bad_options_are_refused_with_one_line(cases):
    with pytest.raises(InputError, match=r"foreground_patch_fraction 1.5 is not a fraction in \[0, 1\]"):
        PatchSampler(32, 1.5)
    whole = SliceTable(cases[:1], ct_volume_transforms(), size=32)
    with pytest.raises(InputError, match=r"foreground_patch_fraction -0.1 is not a fraction"):
        SliceBatches(whole, foreground_fraction=-0.1)  # unused on whole slices, still refused
    with pytest.raises(InputError, match=r"slice_window sliding draws its patches from the slice table"):
        check_augment_backend("monai", "sliding")
    assert check_augment_backend("monai", "whole") == "monai"


# ------------------------------------------------------------------------------------------ train.yaml's run
def test_train_yaml_trains_on_patches_validates_with_windows_and_inference_applies_the_mode(ct_dataset, tmp_path):
    """--pixel_size 0.5 --slice_window sliding (a 32² stand-in network): batches are 32² patches, validation runs
    sliding windows, the best model's geometry says sliding, and inference.yaml applies it."""
    out, ckpt = tmp_path / "run", tmp_path / "run" / "model.pt"
    wf = ConfigWorkflow(
        config_file=os.path.join(CFG, "train.yaml"),
        meta_file=os.path.join(CFG, "metadata.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=ROOT,
        dataset_dir=str(ct_dataset),
        output_dir=str(out),
        ckpt_path=str(ckpt),
        network_def=dict(TINY_NET),
        roi_size=[32, 32],
        pixel_size=0.5,
        slice_window="sliding",
        epochs=1,
        batch_size=2,
        slices_per_epoch=4,
        val_interval=1,
        num_workers=0,
        show_progress=False,
        device="cpu",
    )
    wf.initialize()
    loader, inferer = wf.parser.get_parsed_content("train#dataloader"), wf.parser.get_parsed_content("validate#inferer")
    assert loader.patches is not None and loader.table.extent is not None
    assert next(iter(loader))["image"].shape == (2, 1, 32, 32)
    assert inferer.slice_window == "sliding" and inferer.windows.roi_size == (32, 32)
    wf.run()
    wf.finalize()
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["geometry"]
    assert saved == {"axcodes": "PLS", "pixel_size": 0.5, "crop_body": False, "slice_window": "sliding"}
    infer = ConfigWorkflow(
        config_file=os.path.join(CFG, "inference.yaml"),
        meta_file=os.path.join(CFG, "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=ROOT,
        input=str(ct_dataset / "images" / "vol1.nii.gz"),
        output_dir=str(tmp_path / "pred"),
        ckpt_path=str(ckpt),
        network_def=dict(TINY_NET),
        roi_size=[32, 32],
        num_workers=0,
        show_progress=False,
    )
    infer.initialize()
    applied = infer.parser.get_parsed_content("inferer")
    assert applied.slice_window == "sliding" and applied.pixel_size == 0.5
    infer.run()
    assert (tmp_path / "pred" / "vol1_seg.nii.gz").exists()
    assert checkpoint_geometry(str(ckpt)).slice_window == "sliding"
