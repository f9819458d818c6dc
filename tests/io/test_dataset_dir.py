"""`--dataset_dir <folder of images>` for inference, as model-zoo bundles are called (beside `--input`): the CT
config, the TorchScript config and the 2D (ISIC2018, microscopy) configs; a folder with a dataset.json keeps the
datalist behaviour."""

import json
import os
import shutil

import nibabel as nib
import pytest
from conftest import ROOT
from monai.bundle import ConfigParser, ConfigWorkflow

from bundle.errors import InputError
from bundle.io.datalist import dataset_dir_as_input
from bundle.io.image2d import list_images
from bundle.io.volume import list_volumes

CFG = os.path.join(ROOT, "configs")


@pytest.fixture()
def volumes(ct_dataset, tmp_path):
    """A bare folder (no dataset.json) with two volumes."""
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for i in range(2):
        shutil.copy(ct_dataset / "images" / f"vol{i}.nii.gz", folder / f"case{i}.nii.gz")
    return folder


def test_list_volumes_dataset_dir(ct_dataset, volumes, tmp_path):
    default = str(volumes / "dataset.json")
    items = list_volumes(datalist=default, dataset_dir=str(volumes), base_dir=str(volumes))
    assert items == [{"image": str(volumes / "case0.nii.gz")}, {"image": str(volumes / "case1.nii.gz")}]
    # a folder holding a dataset.json: its datalist (test section), as before
    with_json = str(ct_dataset / "dataset.json")
    items = list_volumes(datalist=with_json, dataset_dir=str(ct_dataset), base_dir=str(ct_dataset))
    assert items == [{"image": str(ct_dataset / "images" / "vol0.nii.gz")}]
    # --input wins; an explicit datalist that does not exist is an error, not a folder listing
    one = str(volumes / "case1.nii.gz")
    assert list_volumes(one, datalist=default, dataset_dir=str(volumes)) == [{"image": one}]
    with pytest.raises(ValueError, match="datalist .*other.json does not exist.*--dataset_dir"):
        list_volumes(datalist=str(tmp_path / "other.json"), dataset_dir=str(volumes))
    assert not dataset_dir_as_input(None, str(tmp_path / "other.json"), str(volumes))
    assert not dataset_dir_as_input(None, str(tmp_path / "x" / "dataset.json"), str(tmp_path / "x"))  # no folder
    # outputs that exist are skipped as with --input
    out = tmp_path / "out"
    out.mkdir()
    (out / "case0_seg.nii.gz").write_bytes(b"")
    assert list_volumes(datalist=default, dataset_dir=str(volumes), output_dir=str(out)) == [
        {"image": str(volumes / "case1.nii.gz")}
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=f"dataset_dir {empty} holds no dataset.json and no volume"):
        list_volumes(datalist=str(empty / "dataset.json"), dataset_dir=str(empty))


def test_inference_config_dataset_dir(volumes, tmp_path):
    """configs/inference.yaml given only dataset_dir (no input, no datalist) segments the folder's volumes."""
    import torch
    from conftest import TINY_NET, TinySegNet

    torch.manual_seed(0)
    torch.save(TinySegNet().state_dict(), tmp_path / "tiny.pt")
    wf = ConfigWorkflow(
        config_file=os.path.join(CFG, "inference.yaml"),
        meta_file=os.path.join(CFG, "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=ROOT,
        dataset_dir=str(volumes),
        output_dir=str(tmp_path / "out"),
        ckpt_path=str(tmp_path / "tiny.pt"),
        num_workers=0,
        show_progress=False,
        sw_batch_size=4,
        network_def=dict(TINY_NET),
    )
    wf.initialize()
    wf.run()
    assert sorted(os.listdir(tmp_path / "out")) == [
        "case0_seg.nii.gz",
        "case1_seg.nii.gz",
        "failures.json",
        "provenance.json",
    ]
    for i in range(2):
        written, src = nib.load(tmp_path / "out" / f"case{i}_seg.nii.gz"), nib.load(volumes / f"case{i}.nii.gz")
        assert written.shape == src.shape and (written.affine == src.affine).all()


def _parsed(files, key, **override):
    parser = ConfigParser()
    parser.read_config([os.path.join(CFG, f) for f in files])
    parser.update({"bundle_root": ROOT, **override})
    return parser.get_parsed_content(key)


def test_torchscript_config_dataset_dir(volumes):
    assert [d["image"] for d in _parsed(["inference_ts.yaml"], "datalist", dataset_dir=str(volumes))] == [
        str(volumes / "case0.nii.gz"),
        str(volumes / "case1.nii.gz"),
    ]
    one = str(volumes / "case1.nii.gz")  # --input still wins
    assert _parsed(["inference_ts.yaml"], "datalist", dataset_dir=str(volumes), input=one) == [{"image": one}]


def test_2d_configs_dataset_dir(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (images / name).write_bytes(b"x")
    expected = [{"image": str(images / "a.jpg")}, {"image": str(images / "b.png")}]
    assert list_images(datalist=str(images / "dataset.json"), dataset_dir=str(images)) == expected
    for files in (["inference.yaml", "isic2018/inference.yaml"], ["microscopy/inference.yaml"]):
        out = str(tmp_path / "out")
        assert _parsed(files, "datalist_items", dataset_dir=str(images), output_dir=out) == expected, files
    # with a dataset.json the datalist is used (ISIC2018 / microscopy preparation scripts write one)
    with open(images / "dataset.json", "w") as f:
        json.dump({"test": [{"image": "b.png", "label": "b.png"}]}, f)
    assert list_images(datalist=str(images / "dataset.json"), dataset_dir=str(images), base_dir=str(images)) == [
        {"image": str(images / "b.png")}
    ]
    with pytest.raises(InputError, match="holds no dataset.json and no image"):
        list_images(datalist=str(tmp_path / "dataset.json"), dataset_dir=str(tmp_path))
