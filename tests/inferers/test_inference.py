"""Axial slice inferer (chunked argmax, resize in/out) and the atomic NIfTI writer, with a stand-in network."""

import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from bundle.data.synthetic import write_dicom_series
from bundle.errors import InputError
from bundle.inferers.axial import AxialSliceInferer
from bundle.io.volume import SaveLabelNiftid, list_volumes, output_path
from bundle.transforms.ct import ct_volume_transforms


class _Threshold(torch.nn.Module):
    """Stand-in 2D net: class 5 where the normalised input is bright, records input shapes."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        logits = torch.zeros(x.shape[0], 9, *x.shape[2:])
        logits[:, 5] = (x[:, 0] > 0.0).float() * 10
        logits[:, 0] = 5
        return logits


def test_inferer_chunks_and_original_size():
    net = _Threshold()
    vol = torch.zeros(1, 1, 50, 40, 7)
    vol[..., 10:30, 5:20, :] = 0.9
    out = AxialSliceInferer(roi_size=(224, 224), sw_batch_size=3)(vol, net)
    assert out.shape == (1, 1, 50, 40, 7) and out.dtype == torch.uint8
    assert net.shapes == [(3, 1, 224, 224), (3, 1, 224, 224), (1, 1, 224, 224)]
    assert (out[0, 0, 12:28, 7:18] == 5).all() and (out[0, 0, :8] == 0).all()


def test_save_roundtrip_shape_affine_and_skip(ct_dataset, tmp_path):
    src = str(ct_dataset / "images/vol0.nii.gz")
    data = ct_volume_transforms(keys=["image"])({"image": src})
    pred = AxialSliceInferer(sw_batch_size=2)(data["image"][None], _Threshold())[0]
    assert isinstance(pred, MetaTensor)
    saver = SaveLabelNiftid(output_dir=str(tmp_path))
    saver({"pred": pred})
    dst = output_path(src, str(tmp_path))
    written, original = nib.load(dst), nib.load(src)
    assert written.shape == original.shape and written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, original.affine)
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(original.affine)
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]  # atomic: no leftovers
    mtime = os.path.getmtime(dst)
    saver({"pred": pred})
    assert os.path.getmtime(dst) == mtime  # skipped without overwrite
    assert list_volumes(str(ct_dataset / "images"), output_dir=str(tmp_path)) == [
        {"image": str(ct_dataset / "images/vol0_label.nii.gz")},
        {"image": str(ct_dataset / "images/vol1.nii.gz")},
        {"image": str(ct_dataset / "images/vol1_label.nii.gz")},
    ]


def test_list_volumes_datalist_and_list(ct_dataset):
    items = list_volumes(datalist=str(ct_dataset / "dataset.json"), data_list_key="test")
    assert items == [{"image": os.path.join(str(ct_dataset), "images/vol0.nii.gz")}]
    files = [str(ct_dataset / "images/vol0.nii.gz"), str(ct_dataset / "images/vol1.nii.gz")]
    assert [d["image"] for d in list_volumes(files)] == files
    assert output_path("/x/series_dir/", "/o") == "/o/series_dir_seg.nii.gz"


def test_nrrd_through_itk_reader_keeps_grid(tmp_path):
    sitk = __import__("pytest").importorskip("SimpleITK")
    arr = np.zeros((3, 20, 24), np.int16)  # SimpleITK order (z, y, x)
    arr[:, 5:12, 6:15] = 200
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((10.0, -20.0, 30.0))
    src = str(tmp_path / "vol.nrrd")
    sitk.WriteImage(img, src)
    pre = ct_volume_transforms(keys=["image"])
    data = pre({"image": src})
    data["pred"] = AxialSliceInferer(sw_batch_size=2)(data["image"][None], _Threshold())[0]
    data = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)(data)  # as inference.yaml
    SaveLabelNiftid(output_dir=str(tmp_path / "out"))(data)
    written = nib.load(output_path(src, str(tmp_path / "out")))
    assert written.shape == (24, 20, 3)  # (x, y, z), axial last
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    assert np.allclose(written.affine[:3, :3], lps_to_ras @ np.diag([0.8, 0.9, 2.5]))
    assert np.allclose(written.affine[:3, 3], lps_to_ras @ np.array([10.0, -20.0, 30.0]))
    assert (np.asarray(written.dataobj)[6:15, 5:12] == 5).all()


def test_list_volumes_input_wins_and_subfolders(ct_dataset, tmp_path):
    src = str(ct_dataset / "images/vol0.nii.gz")
    assert list_volumes(src, datalist=str(ct_dataset / "dataset.json")) == [{"image": src}]
    assert list_volumes(ct_dataset / "images/vol0.nii.gz") == [{"image": src}]  # a pathlib.Path is one input
    # a folder holding volume sub-folders (images/) is not mistaken for DICOM series, nor is it "nothing to do"
    with pytest.raises(InputError, match=r"holds no volume .*volume files in sub-folders are not searched, DICOM"):
        list_volumes(str(ct_dataset))
    # two inputs named alike would write one mask: refused before anything runs
    twin = tmp_path / "other" / "vol0.nii.gz"
    twin.parent.mkdir()
    twin.write_bytes(open(src, "rb").read())
    with pytest.raises(InputError, match=r"would both be written to .*vol0_seg.nii.gz: rename one"):
        list_volumes([src, str(twin)], output_dir=str(tmp_path / "out"))
    series = write_dicom_series(str(ct_dataset / "images/vol0.nii.gz"), str(tmp_path / "patient1" / "series1"))
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert list_volumes(str(tmp_path)) == [{"image": series}]  # found under sub-folders, named by its own folder
