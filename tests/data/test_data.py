"""Data preparation on tiny fake layouts: raw BTCV (13 labels) and TransUNet's train_npz/ + test_vol_h5/."""

import json
import os
import subprocess
import sys

import h5py
import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT

from bundle.data.synapse import BTCV_TO_SYNAPSE, TRANSUNET_TEST_CASES, prepare_btcv, remap_labels, split_cases
from bundle.data.transunet import import_transunet
from bundle.errors import InputError


def test_remap_btcv_ids():
    label = np.arange(14).reshape(1, 1, 14)
    out = remap_labels(label, BTCV_TO_SYNAPSE)
    assert out.dtype == np.uint8
    assert out.ravel().tolist() == [0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0]


def test_transunet_split():
    split = split_cases(range(1, 41))
    assert split["test"] == list(TRANSUNET_TEST_CASES)
    assert len(split["training"]) == 28 and not set(split["training"]) & set(TRANSUNET_TEST_CASES)


def _fake_btcv(root, cases):
    os.makedirs(root / "img")
    os.makedirs(root / "label")
    affine = np.diag([0.7, 0.7, 2.5, 1])
    for c in cases:
        nib.save(nib.Nifti1Image(np.full((8, 6, 4), -100, np.int16), affine), root / "img" / f"img{c:04d}.nii.gz")
        lab = np.zeros((8, 6, 4), np.uint8)
        lab.ravel()[:14] = np.arange(14)
        nib.save(nib.Nifti1Image(lab, affine), root / "label" / f"label{c:04d}.nii.gz")


def test_prepare_btcv_cli(tmp_path):
    src, dst = tmp_path / "raw", tmp_path / "synapse"
    _fake_btcv(src, [1, 5, 22])
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "scripts/data/prepare_synapse.py"),
            "btcv",
            "--src",
            str(src),
            "--dst",
            str(dst),
        ],
        check=True,
        cwd=str(tmp_path),
    )
    datalist = json.load(open(dst / "dataset.json"))
    assert [d["image"] for d in datalist["test"]] == ["imagesTr/case0001.nii.gz", "imagesTr/case0022.nii.gz"]
    assert [d["image"] for d in datalist["training"]] == ["imagesTr/case0005.nii.gz"]
    assert datalist["validation"] == datalist["test"]
    lab = nib.load(dst / "labelsTr/case0005.nii.gz")
    assert lab.get_data_dtype() == np.uint8
    assert np.asarray(lab.dataobj).ravel()[:14].tolist() == [0, 1, 2, 3, 4, 0, 5, 6, 7, 0, 0, 8, 0, 0]
    assert np.allclose(lab.affine, nib.load(src / "img/img0005.nii.gz").affine)


def test_prepare_btcv_rejects_unpaired(tmp_path):
    _fake_btcv(tmp_path, [1])
    os.remove(tmp_path / "label" / "label0001.nii.gz")
    with pytest.raises(ValueError, match="image or a label but not both"):
        prepare_btcv(str(tmp_path), str(tmp_path / "out"))


def test_import_transunet(tmp_path):
    src, dst = tmp_path / "Synapse", tmp_path / "out"
    os.makedirs(src / "train_npz")
    os.makedirs(src / "test_vol_h5")
    rng = np.random.default_rng(0)
    for z in (0, 2, 1):  # written out of order: slices are restacked by index
        lab = np.full((16, 12), z, np.uint8)
        np.savez(
            src / "train_npz" / f"case0005_slice{z:03d}.npz", image=rng.random((16, 12), dtype=np.float32), label=lab
        )
    with h5py.File(src / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["image"] = np.linspace(0, 1, 3 * 16 * 12, dtype=np.float32).reshape(3, 16, 12)
        f["label"] = np.arange(3, dtype=np.uint8)[:, None, None].repeat(16, 1).repeat(12, 2)
    datalist = json.load(open(import_transunet(str(src), str(dst))))
    assert datalist["training"] == [{"image": "imagesTr/case0005.nii.gz", "label": "labelsTr/case0005.nii.gz"}]
    train_lab = np.asarray(nib.load(dst / "labelsTr/case0005.nii.gz").dataobj)
    assert train_lab.shape == (16, 12, 3) and train_lab[0, 0].tolist() == [0, 1, 2]
    img = nib.load(dst / "imagesTs/case0001.nii.gz").get_fdata()
    lab = np.asarray(nib.load(dst / "labelsTs/case0001.nii.gz").dataobj)
    assert img.shape == lab.shape == (16, 12, 3)
    assert lab[0, 0].tolist() == [0, 1, 2]  # (D, H, W) → (H, W, D)
    assert img.min() == pytest.approx(-125) and img.max() == pytest.approx(275)  # [0, 1] → HU
    # the pipeline's canonical orientation (PLS) leaves the imported slices as the official loader reads them
    from bundle.transforms.ct import ct_volume_transforms

    with h5py.File(src / "test_vol_h5" / "case0001.npy.h5", "r") as f:
        official = np.asarray(f["image"])  # (D, H, W), in [0, 1]
    seen = ct_volume_transforms(keys=["image"])({"image": str(dst / "imagesTs/case0001.nii.gz")})["image"][0]
    np.testing.assert_allclose(np.moveaxis(seen.numpy(), -1, 0), official, atol=1e-6)


def test_demo_rejects_wrong_hash(tmp_path):
    from bundle.data.demos import fetch_sdist

    fake = tmp_path / "totalsegmentator-2.18.0.tar.gz"
    fake.write_bytes(b"not the sdist")
    with pytest.raises(ValueError, match="sha256"):
        fetch_sdist(str(tmp_path), str(fake))


@pytest.mark.parametrize(
    "command",
    [
        ["prepare_synapse.py", "btcv", "--src", "{missing}"],
        ["prepare_synapse.py", "transunet", "--src", "{missing}"],
        ["prepare_isic2018.py", "--src", "{missing}"],
        ["prepare_microscopy.py", "glas", "--src", "{missing}"],
        ["prepare_microscopy.py", "monuseg", "--train", "{missing}"],
        ["prepare_microscopy.py", "uctransnet", "--src", "{missing}"],
    ],
    ids=lambda c: "_".join(c[:2]).replace(".py", ""),
)
def test_data_scripts_refuse_bad_input_in_one_line(tmp_path, command):
    """The preparation scripts share the CLI's error handling (bundle.errors.run_script): one InputError line naming
    the folder, exit code 1, no traceback (they printed ~24 lines of one)."""
    import subprocess
    import sys

    from conftest import ROOT

    args = [a.format(missing=tmp_path / "missing") for a in command]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "data", args[0]), *args[1:], "--dst", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("InputError: ")]
    assert len(lines) == 1 and str(tmp_path / "missing") in lines[0], proc.stderr[-2000:]


def test_demo_scores_every_organ_the_dicom_reference_holds(tmp_path):
    """The demo's DICOM figure names its organs: every organ present in the reference is scored (the series' small
    pancreas too) with its voxel count; the prediction is compared in world space although stored in another order."""
    from bundle.evaluation.demo import reference_dice

    truth = np.zeros((8, 6, 4), np.uint8)  # TotalSegmentator ids: 1 spleen, 5 liver, 7 pancreas
    truth[1:3, 1:3, :] = 1
    truth[4:8, 2:6, :] = 5
    truth[0, 5, 0] = 7  # one voxel of pancreas
    las = np.diag([-1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(truth, las), str(tmp_path / "ref.nii.gz"))
    pred = remap_labels(truth.astype(np.int64), {1: 1, 5: 5, 7: 0}).astype(np.uint8)  # synapse ids, pancreas missed
    lps = las.copy()
    lps[1, 1], lps[1, 3] = -1.0, 5.0  # stored front to back: the same voxels in the world
    nib.save(nib.Nifti1Image(pred[:, ::-1].copy(), lps), str(tmp_path / "pred.nii.gz"))
    scores, voxels = reference_dice(str(tmp_path / "pred.nii.gz"), str(tmp_path / "ref.nii.gz"))
    assert scores == {"spleen": 1.0, "liver": 1.0, "pancreas": 0.0}
    assert voxels == {"spleen": 16, "liver": 64, "pancreas": 1}
    shifted = lps.copy()
    shifted[0, 3] = 3.0  # one voxel off in x: refused, not scored
    nib.save(nib.Nifti1Image(pred, shifted), str(tmp_path / "off.nii.gz"))
    with pytest.raises(InputError, match="do not cover the same voxels"):
        reference_dice(str(tmp_path / "off.nii.gz"), str(tmp_path / "ref.nii.gz"))


def test_demo_overlay_draws_one_row_per_case(tmp_path):
    """plot_case_rows: CT | reference | prediction per case, 1200 px wide at 100 dpi, written atomically."""
    import matplotlib.image as mpimg

    from bundle.evaluation.plots import plot_case_rows

    rng = np.random.default_rng(0)
    vol = rng.normal(0, 100, (32, 32, 4)).astype(np.float32)
    lab = np.zeros((32, 32, 4), np.uint8)
    lab[8:20, 8:20, 2] = 5
    out = plot_case_rows([("a", vol, lab, lab), ("b", vol, lab, np.zeros_like(lab))], tmp_path / "rows.png")
    h, w = mpimg.imread(out).shape[:2]
    assert w == 1200 and h == round((4.2 * 2 + 0.6) * 100)
    assert os.listdir(tmp_path) == ["rows.png"]
