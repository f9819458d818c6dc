"""Bad input gets an InputError that names the file and the fix (bundle/io/volume.py, docs/operations.md)."""

import json
import os
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, make_volume
from PIL import Image

from bundle.errors import InputError, check_cli_overrides, root_input_error
from bundle.io.atomic import check_writable_dir
from bundle.io.checkpoint import check_checkpoint
from bundle.io.datalist import load_datalist
from bundle.io.validation import ValidateVolumed
from bundle.transforms.ct import ct_volume_transforms, slice_transforms

# stored PLS, the canonical order: the array reaches the network as stored
AFFINE = np.array([[0.0, -0.7, 0.0, 0.0], [-0.8, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _load(image, label=None, num_classes=9):
    data = {"image": str(image)} if label is None else {"image": str(image), "label": str(label)}
    keys = list(data)
    try:
        return ct_volume_transforms(keys, num_classes=num_classes)(data)
    except Exception as err:  # MONAI wraps transform errors: the InputError must be in the chain
        message = root_input_error(err)
        if message is None:
            raise
        raise InputError(message) from None


def _nii(path, arr, affine=AFFINE):
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


@pytest.fixture
def case(tmp_path):
    return make_volume(str(tmp_path / "img.nii.gz"), str(tmp_path / "lab.nii.gz"), shape=(24, 20, 3))


# ------------------------------------------------------------------------------------------------ datalists
def test_datalist_missing_file(tmp_path, case):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"training": [{"image": "img.nii.gz", "label": "nope.nii.gz"}]}))
    with pytest.raises(InputError, match=r"training\[0\]\['label'\] = 'nope.nii.gz' does not exist.*fix the path"):
        load_datalist(str(path), "training")


def test_datalist_empty_missing_section_and_not_json(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"training": []}))
    with pytest.raises(InputError, match=r"d.json: section 'training' is empty"):
        load_datalist(str(path), "training")
    assert load_datalist(str(path), "training", allow_empty=True) == []
    with pytest.raises(InputError, match=r"has no 'validation' section \(found \['training'\]\)"):
        load_datalist(str(path), "validation")
    path.write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        load_datalist(str(path))
    with pytest.raises(InputError, match="does not exist: give an existing decathlon JSON"):
        load_datalist(str(tmp_path / "absent.json"))


def test_datalist_wrong_keys(tmp_path, case):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"training": [{"img": "img.nii.gz", "seg": "lab.nii.gz"}]}))
    with pytest.raises(InputError, match=r"has keys \['img', 'seg'\] but needs \['image', 'label'\].*rename 'img'"):
        load_datalist(str(path))
    path.write_text(json.dumps({"training": [{"image": "img.nii.gz", "label": "lab.nii.gz"}]}))
    (item,) = load_datalist(str(path))
    assert item["image"] == case[0] and item["label"] == case[1]


def test_output_dir_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match=r"output_dir .*file/out is not writable.*--output_dir"):
        check_writable_dir(str(blocker / "out"))
    assert check_writable_dir(str(tmp_path / "new" / "out")) == str(tmp_path / "new" / "out")
    assert os.listdir(tmp_path / "new" / "out") == []  # the probe file is gone


# ------------------------------------------------------------------------------------------------ volumes
def test_good_case_passes(case):
    out = _load(*case)
    assert tuple(out["image"].shape) == (1, 24, 20, 3) and tuple(out["label"].shape) == (1, 24, 20, 3)
    assert float(out["image"].min()) >= 0 and float(out["image"].max()) <= 1


def test_corrupt_and_truncated_nifti(tmp_path, case):
    raw = open(case[0], "rb").read()
    for name, blob in [("trunc.nii.gz", raw[: int(len(raw) * 0.9)]), ("junk.nii.gz", b"not an image")]:
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(InputError, match=rf"image .*{name} cannot be read .*truncated, corrupt"):
            _load(tmp_path / name)
    with pytest.raises(InputError, match=r"label .*missing.nii.gz does not exist"):
        _load(case[0], tmp_path / "missing.nii.gz")


def test_a_folder_of_pictures_is_named_for_what_it_is(tmp_path):
    """A folder of PNGs given to the CT config is neither "truncated" nor "corrupt": it is 2D pictures."""
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / f"slice{i}.png")
    with pytest.raises(InputError) as err:
        _load(folder)
    message = str(err.value)
    assert re.search(r".*slices is a folder of 3 2D pictures \(.png, e.g. slice0.png\), not a DICOM series", message)
    assert "configs/isic2018/inference.yaml" in message and "truncated" not in message


def test_2d_4d_multichannel_and_rgb(tmp_path):
    with pytest.raises(InputError, match=r"is 2D \(24, 20\): a 3D CT volume"):
        _load(_nii(tmp_path / "a.nii.gz", np.zeros((24, 20), np.float32)))
    with pytest.raises(InputError, match=r"has 2 channels/time points.*split a 4D series"):
        _load(_nii(tmp_path / "b.nii.gz", np.zeros((24, 20, 3, 2), np.float32)))
    with pytest.raises(InputError, match=r"has 3 channels/time points"):
        _load(_nii(tmp_path / "c.nii.gz", np.zeros((24, 20, 3, 3), np.float32)))
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "photo.png")
    with pytest.raises(InputError, match=r"photo.png is a 2D RGB picture.*this config segments 3D CT"):
        _load(tmp_path / "photo.png")


def test_label_grid_and_values(tmp_path, case):
    img, lab = case
    arr = np.asarray(nib.load(lab).dataobj)
    _nii(tmp_path / "short.nii.gz", arr[:, :, :2], nib.load(lab).affine)
    with pytest.raises(
        InputError, match=r"label .*short.nii.gz has shape \(24, 20, 2\) but its image .* \(24, 20, 3\)"
    ):
        _load(img, tmp_path / "short.nii.gz")
    moved = nib.load(lab).affine.copy()
    moved[0, 3] += 5.0
    _nii(tmp_path / "moved.nii.gz", arr, moved)
    with pytest.raises(InputError, match=r"moved.nii.gz has affine .* resample the label onto the image"):
        _load(img, tmp_path / "moved.nii.gz")
    raw = arr.copy()
    raw[0, 0, 0], raw[1, 0, 0] = 11, 13  # raw BTCV ids
    _nii(tmp_path / "btcv.nii.gz", raw, nib.load(lab).affine)
    with pytest.raises(InputError, match=r"has values \[11, 13\] outside 0..8: map raw BTCV ids"):
        _load(img, tmp_path / "btcv.nii.gz")
    _nii(tmp_path / "soft.nii.gz", arr.astype(np.float32) * 0.5, nib.load(lab).affine)
    with pytest.raises(InputError, match="non-integer values: resample labels with nearest"):
        _load(img, tmp_path / "soft.nii.gz")


def test_label_in_another_orientation_gets_resampled_never_a_header_copy(tmp_path):
    """Image stored LPS, its label LAS (same patient): copying the image's header into the label would flip it front
    to back. The refusal offers only resampling, and the command it prints gives a label the bundle accepts, with
    every organ where it was."""
    from bundle.data.synthetic import write_synthetic_case

    lps = np.diag([-0.8, -0.7, 3.0, 1.0])
    img, lab = write_synthetic_case(str(tmp_path / "ct.nii.gz"), str(tmp_path / "ct_lps_label.nii.gz"),
                                    shape=(24, 20, 3), affine=lps)  # fmt: skip
    labels = np.asarray(nib.load(lab).dataobj)
    las = lps.copy()
    las[1, 1], las[1, 3] = 0.7, -0.7 * (labels.shape[1] - 1)  # y axis reversed, same voxels in the world
    flipped = _nii(tmp_path / "label_las.nii.gz", labels[:, ::-1].copy(), las)
    assert "".join(nib.aff2axcodes(las)) == "LAS" and not np.array_equal(labels[:, ::-1], labels)
    with pytest.raises(InputError) as err:
        _load(img, flipped)
    message = str(err.value)
    assert "different orientations (label LAS, image LPS)" in message and "resample the label onto the image" in message
    assert "copy the image's header into" not in message.replace("never copy the image's header into", "")
    command = re.search(r'python -c "(.+?)"', message).group(1)
    subprocess.run([sys.executable, "-c", command], check=True)
    resampled = tmp_path / "label_las_resampled.nii.gz"
    out = _load(img, resampled)
    np.testing.assert_array_equal(np.asarray(out["label"])[0], np.asarray(_load(img, lab)["label"])[0])


def test_nan_inf_sanitised_with_warning_or_refused(tmp_path):
    arr = np.full((24, 20, 3), 40.0, np.float32)
    arr[0, 0, 0], arr[1, 0, 0], arr[2, 0, 0] = np.nan, np.inf, -np.inf
    arr[3, 0, 0] = -500.0
    with pytest.warns(UserWarning, match=r"3 NaN/inf voxels .* replaced"):
        out = _load(_nii(tmp_path / "nan.nii.gz", arr))["image"]
    assert torch.isfinite(out).all()
    # NaN and -inf → the finite minimum (-500 HU → 0 after the window), +inf → the maximum (40 HU)
    hu40 = (40.0 + 125.0) / 400.0
    assert float(out[0, 0, 0, 0]) == 0.0 and float(out[0, 2, 0, 0]) == 0.0
    assert float(out[0, 1, 0, 0]) == pytest.approx(hu40)
    arr[:, :11] = np.nan  # 55 % > max_nonfinite_fraction 0.5
    with pytest.raises(InputError, match=r"55% of the voxels are NaN/inf: the file is broken"):
        _load(_nii(tmp_path / "mostly_nan.nii.gz", arr))


def test_anisotropic_spacing_warns(tmp_path):
    arr = np.zeros((24, 20, 3), np.float32)
    with pytest.warns(UserWarning, match=r"in-plane spacing 0.5 × 2 mm is very anisotropic"):
        _load(_nii(tmp_path / "a.nii.gz", arr, np.diag([0.5, 2.0, 3.0, 1.0])))
    with pytest.warns(UserWarning, match=r"slice spacing 12 mm vs in-plane 0.7 mm"):
        _load(_nii(tmp_path / "b.nii.gz", arr, np.diag([0.7, 0.7, 12.0, 1.0])))


def test_tiny_volume_fewer_slices_than_batches(tmp_path):
    from bundle.inferers.axial import AxialSliceInferer

    img, lab = make_volume(str(tmp_path / "i.nii.gz"), str(tmp_path / "l.nii.gz"), shape=(24, 20, 1))
    vol = _load(img, lab)
    samples = slice_transforms(size=32, slices_per_volume=4, augment=False)(vol)
    assert len(samples) == 4 and tuple(samples[0]["image"].shape) == (1, 32, 32)

    def net(x):
        return torch.zeros(x.shape[0], 9, *x.shape[2:])

    pred = AxialSliceInferer(roi_size=(32, 32), sw_batch_size=16)(vol["image"][None], net)
    assert tuple(pred.shape) == (1, 1, 24, 20, 1)


def test_uint8_image_warns(tmp_path):
    with pytest.warns(UserWarning, match="is uint8: CT is expected in Hounsfield units"):
        _load(_nii(tmp_path / "u8.nii.gz", np.zeros((24, 20, 3), np.uint8)))


def test_validate_volumed_skips_label_check_without_num_classes(tmp_path, case):
    img, lab = case
    raw = np.asarray(nib.load(lab).dataobj).copy()
    raw[0, 0, 0] = 13
    _nii(tmp_path / "btcv.nii.gz", raw, nib.load(lab).affine)
    out = _load(img, tmp_path / "btcv.nii.gz", num_classes=None)
    assert float(out["label"].max()) == 13
    assert ValidateVolumed(keys=["image"])({"other": 1}) == {"other": 1}


# ------------------------------------------------------------------------------------------------ orientation
@pytest.mark.parametrize("order", [(2, 0, 1), (0, 2, 1)])
def test_non_axial_storage_is_sliced_axially_and_inverted_exactly(tmp_path, order):
    """A volume stored with the superior–inferior axis first/second (sagittal/coronal acquisition) and y flipped is
    reoriented to PLS (slices last) without resampling, and Invertd gives the stored array and affine back."""
    from monai.transforms import Invertd

    rng = np.random.default_rng(0)
    axial = rng.normal(0, 50, (24, 20, 5)).astype(np.float32)  # (x, y, z) with z = S–I
    affine = np.diag([0.8, 0.7, 3.0, 1.0])
    affine[:3, 3] = [-10.0, 5.0, 20.0]
    stored = np.transpose(axial, order)  # stored axis n holds world axis order[n]
    stored_affine = np.eye(4)
    stored_affine[:3, :3] = affine[:3, :3][:, list(order)]
    stored_affine[:3, 3] = affine[:3, 3]
    stored_affine[1, :3] *= -1  # and flip y
    path = _nii(tmp_path / "sag.nii.gz", stored, stored_affine)
    pre = ct_volume_transforms(keys=["image"])
    img = pre({"image": path})["image"]
    assert tuple(img.shape) == (1, 20, 24, 5)  # rows = A–P axis (y), columns = L–R axis (x), 5 axial slices last
    assert nib.aff2axcodes(np.asarray(img.affine)) == ("P", "L", "S")
    back = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True)(
        {"image": img, "pred": img.clone()}
    )["pred"]
    assert tuple(back.shape[1:]) == stored.shape
    np.testing.assert_allclose(np.asarray(back.affine), stored_affine, atol=1e-6)
    assert torch.equal(back[0], torch.as_tensor(np.clip((stored + 125) / 400, 0, 1), dtype=torch.float32))


def test_pls_storage_is_untouched(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.normal(0, 50, (12, 10, 3)).astype(np.float32)
    affine = np.array([[0, -0.7, 0, 0], [-0.8, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]], dtype=np.float64)
    img = ct_volume_transforms(keys=["image"])({"image": _nii(tmp_path / "pls.nii.gz", arr, affine)})["image"]
    assert torch.equal(img[0], torch.as_tensor(np.clip((arr + 125) / 400, 0, 1), dtype=torch.float32))


# ------------------------------------------------------------------------------------------------ checkpoints
class _Net(torch.nn.Module):
    def __init__(self, classes=9, width=4):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, width, 3)
        self.head = torch.nn.Conv2d(width, classes, 1)


def test_checkpoint_class_count_network_and_garbage(tmp_path):
    torch.save(_Net(classes=14).state_dict(), tmp_path / "c14.pt")
    with pytest.raises(InputError, match=r"c14.pt was trained for 14 classes .* builds 9 .*--num_classes 14"):
        check_checkpoint(str(tmp_path / "c14.pt"), {"model": _Net()})
    from bundle.inferers.ensemble import load_checkpoints

    with pytest.raises(InputError, match=r"c14.pt was trained for 14 classes"):
        load_checkpoints(_Net(), [str(tmp_path / "c14.pt")])
    torch.save(_Net(width=8).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(InputError, match=r"wide.pt is for another network or variant .* with other shapes.*--variant"):
        check_checkpoint(str(tmp_path / "wide.pt"), {"model": _Net()})
    torch.save({"backbone.backbone.stem.weight": torch.zeros(1)}, tmp_path / "official.pth")
    with pytest.raises(InputError, match=r"official MSA²Net checkpoint .* scripts/model/convert_official.py"):
        check_checkpoint(str(tmp_path / "official.pth"), {"model": _Net()})
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match=r"notes.pt is not a PyTorch checkpoint"):
        check_checkpoint(str(tmp_path / "notes.pt"), {"model": _Net()})
    with pytest.raises(InputError, match=r"absent.pt does not exist: give an existing file"):
        check_checkpoint(str(tmp_path / "absent.pt"), {"model": _Net()})
    torch.save(_Net().state_dict(), tmp_path / "best.pt")  # bare state dict: fine for the model, not for resume
    assert set(check_checkpoint(str(tmp_path / "best.pt"), {"model": _Net()})) == {"model"}
    opt = torch.optim.SGD(_Net().parameters(), lr=0.1)
    with pytest.raises(InputError, match=r"lacks \['model', 'optimizer'\].*full training checkpoint"):
        check_checkpoint(str(tmp_path / "best.pt"), {"model": _Net(), "optimizer": opt})


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_checkpoint_refused_weights_only(tmp_path):
    torch.save({"model": _Net().state_dict(), "extra": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(
        InputError, match=r"evil.pt holds pickled Python objects \(posix.system\) that a weights-only load refuses"
    ):
        check_checkpoint(str(tmp_path / "evil.pt"), {"model": _Net()})


def test_checked_loader_real_msa2net_variant_and_classes(tmp_path):
    """A checkpoint of another MSA2Net variant / class count is refused before any weight changes."""
    from ignite.engine import Engine

    from bundle.io.checkpoint import CheckedCheckpointLoader
    from bundle.networks import MSA2Net

    paper = MSA2Net(in_channels=1, out_channels=9, variant="paper", encoder_weights=None)
    released = MSA2Net(in_channels=1, out_channels=9, variant="released", encoder_weights=None)
    torch.save(released.state_dict(), tmp_path / "released.pt")
    before = {k: v.clone() for k, v in paper.state_dict().items()}
    loader = CheckedCheckpointLoader(load_path=str(tmp_path / "released.pt"), load_dict={"model": paper})
    with pytest.raises(InputError, match=r"another network or variant than the config's MSA2Net"):
        loader(Engine(lambda e, b: None))
    assert all(torch.equal(before[k], v) for k, v in paper.state_dict().items())
    state = paper.state_dict()
    state["head.weight"], state["head.bias"] = state["head.weight"][:4], state["head.bias"][:4]
    torch.save(state, tmp_path / "c4.pt")
    with pytest.raises(InputError, match=r"trained for 4 classes .* --num_classes 4"):
        check_checkpoint(str(tmp_path / "c4.pt"), {"model": paper})


# ------------------------------------------------------------------------------------------------ command line
def test_typo_override_refused():
    argv = ["/x/monai/bundle/__main__.py", "run", "training", "--config_file", "configs/train.yaml"]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        check_cli_overrides(
            argv + ["--epochs", "2", "--network_def#variant", "paper", "--train::dataset#cache_rate", "0"]
        )
        with pytest.raises(InputError, match=r"unknown config id --epohcs .*did you mean --epochs\?"):
            check_cli_overrides(argv + ["--epohcs", "5"])
        with pytest.raises(InputError, match=r"unknown config id --network_def#varient"):
            check_cli_overrides(argv + ["--network_def#varient", "paper"])
        check_cli_overrides(argv + ["--train#handlers#0#_disabled_", "True"])  # component keys on existing ids
        with pytest.raises(InputError, match=r"--train#handlerz#0#_disabled_"):
            check_cli_overrides(argv + ["--train#handlerz#0#_disabled_", "True"])
        check_cli_overrides(["pytest", "--epohcs", "5"])  # not a monai.bundle command line: no check
        # a lower-case boolean would arrive as the string "false", which is true
        infer = ["/x/monai/bundle/__main__.py", "run", "inference", "--config_file", "configs/inference.yaml"]
        check_cli_overrides(infer + ["--tta", "False", "--lcc=True", "--input", "false.nii.gz"])
        with pytest.raises(InputError, match=r"--tta false .*would take 'false' as a non-empty string.*--tta False"):
            check_cli_overrides(infer + ["--tta", "false"])
        with pytest.raises(InputError, match=r"--overwrite true .*write --overwrite True"):
            check_cli_overrides(infer + ["--overwrite=true"])
        # the ISIC overlay replaces the CT inferer: CT-only options would do nothing, so they are refused
        isic = infer[:-1] + ["['configs/inference.yaml','configs/isic2018/inference.yaml']"]
        check_cli_overrides(isic + ["--threshold", "0.4", "--ckpt_path", "m.pt"])
        with pytest.raises(InputError, match=r"unknown config id --threshhold .*did you mean --threshold\?"):
            check_cli_overrides(isic + ["--threshhold", "0.4"])  # a list of config files is checked too
        check_cli_overrides(infer + ["--ckpt_paths", "['a.pt','b.pt']"])  # the CT config uses it
        for option in ("--tta", "--ckpt_paths", "--axcodes", "--output_type"):
            with pytest.raises(InputError, match=rf"{option} does nothing in this run: .*isic2018.*drop it"):
                check_cli_overrides(isic + [option, "x"])
        trt = infer[:-1] + ["['configs/inference.yaml','configs/inference_trt.yaml']"]
        check_cli_overrides(trt + ["--trt_precision", "fp32", "--tta", "True"])
        with pytest.raises(InputError, match=r"--backend does nothing in this run: .*inference_trt.*drop it"):
            check_cli_overrides(trt + ["--backend", "onnx"])  # the overlay runs the TensorRT-wrapped network
    finally:
        os.chdir(cwd)


@pytest.mark.slow
def test_cli_prints_one_clear_line(ct_dataset, tmp_path):
    """Through `python -m monai.bundle run`: a missing datalist file ends with the InputError line, exit code 1."""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"training": [{"image": "images/vol0.nii.gz", "label": "images/gone.nii.gz"}]}))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml"]
    cmd += ["--dataset_dir", str(ct_dataset), "--datalist", str(bad), "--output_dir", str(tmp_path / "o")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-2:]
    assert last[0].startswith("InputError: datalist ") and "images/gone.nii.gz' does not exist" in last[0], last
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(cmd[:-6] + ["--epohcs", "3"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "InputError: unknown config id --epohcs" in proc.stderr


@pytest.mark.slow
def test_a_bad_label_in_a_dataloader_worker_is_reported_once(ct_dataset, tmp_path):
    """Evaluation with the default DataLoader workers and a label holding value 11: the message once, no worker
    tracebacks (they used to fill ~200 lines, four times over, before the message)."""
    from conftest import TinySegNet

    data = tmp_path / "data"
    data.mkdir()
    lab = nib.load(ct_dataset / "images" / "vol0_label.nii.gz")
    bad = np.asarray(lab.dataobj).copy()
    bad[0, 0, 0] = 11
    _nii(data / "bad_label.nii.gz", bad, lab.affine)
    case = {"image": str(ct_dataset / "images" / "vol0.nii.gz"), "label": str(data / "bad_label.nii.gz")}
    (data / "dataset.json").write_text(json.dumps({"test": [case, case]}))
    torch.save(TinySegNet().state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "tiny.yaml").write_text("network_def:\n  _target_: conftest.TinySegNet\n")
    configs = f"['configs/train.yaml','configs/evaluate.yaml','{tmp_path / 'tiny.yaml'}']"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", configs, "--dataset_dir",
           str(data), "--ckpt_path", str(tmp_path / "tiny.pt"), "--output_dir", str(tmp_path / "out"),
           "--num_workers", "2", "--show_progress", "False"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and output.count("has values [11] outside 0..8") == 1, output[-3000:]
    assert "Traceback" not in output and "DataLoader worker" not in output
    assert proc.stderr.strip().splitlines()[-2].startswith("InputError: label ")


def test_error_hook_prints_one_line_for_input_errors(capsys, monkeypatch):
    from bundle.errors import install_error_hook

    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: calls.append(a))
    install_error_hook()
    try:
        try:
            raise InputError("image x.nii.gz is 2D: fix it")
        except InputError as err:
            raise RuntimeError("applying transform <ValidateVolumed>") from err
    except RuntimeError as wrapped:
        sys.excepthook(RuntimeError, wrapped, wrapped.__traceback__)
    assert capsys.readouterr().err.startswith("InputError: image x.nii.gz is 2D: fix it\n") and calls == []
    project = InputError("input /x does not exist: give an existing file or folder.")
    assert root_input_error(RuntimeError("Failed to instantiate")) is None
    wrapped = RuntimeError("Failed to instantiate")
    wrapped.__cause__ = project
    assert root_input_error(wrapped) == "input /x does not exist: give an existing file or folder."
    assert root_input_error(ValueError("bundle/x.py: looks like ours")) is None  # recognised by type, not by text
    bug = KeyError("x")
    sys.excepthook(KeyError, bug, None)  # not an input error: the normal hook prints the traceback
    assert len(calls) == 1 and calls[0][1] is bug


def test_training_config_refuses_unwritable_output_dir_before_building_anything(ct_dataset, tmp_path):
    from monai.bundle import ConfigWorkflow

    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a file where a folder should be (root ignores permission bits, not this)
    cfg = os.path.join(ROOT, "configs")
    wf = ConfigWorkflow(
        config_file=os.path.join(cfg, "train.yaml"),
        meta_file=os.path.join(cfg, "metadata.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=ROOT,
        dataset_dir=str(ct_dataset),
        output_dir=str(blocker / "run"),
    )
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    assert re.match(r"ckpt_dir .*a_file/run/checkpoints is not writable .*--ckpt_dir", root_input_error(err.value))
    assert not os.path.exists(tmp_path / "a_file" / "run")


def test_the_checkpoint_check_maps_the_file_and_the_loader_reads_it_once(tmp_path, monkeypatch):
    """CheckedCheckpointLoader checks names and shapes from a memory map, so an inference run reads the weights once
    (by MONAI's load), not twice; a missing ensemble member names --ckpt_paths."""
    from monai.handlers import CheckpointLoader

    from bundle.inferers.ensemble import load_checkpoints
    from bundle.io import checkpoint

    net = torch.nn.Conv2d(1, 2, 3)
    path = tmp_path / "w.pt"
    torch.save({"model": net.state_dict()}, path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(bool(kwargs.get("mmap")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    monkeypatch.setattr(
        CheckpointLoader, "__call__", lambda self, engine: torch.load(self.load_path, weights_only=True)
    )
    checkpoint.CheckedCheckpointLoader(load_path=str(path), load_dict={"model": net})(engine=None)
    assert calls == [True, False]  # the check maps, the load reads
    with pytest.raises(InputError, match=r"nope\.pt does not exist: give an existing file with --ckpt_paths"):
        load_checkpoints(net, [str(tmp_path / "nope.pt")])


def test_load_image_is_quiet_and_uses_the_reader_given(tmp_path, caplog):
    """Scripts read images through bundle.io.volume.load_image: no note about MONAI's missing GPU DICOM decoder
    (nvImageCodec; two lines per LoadImage on a CPU machine), and a reader that cannot read the file is an error,
    not a silent fall back to another reader."""
    import logging
    import warnings

    from monai.data import PydicomReader

    from bundle.io.volume import load_image

    image, _ = make_volume(str(tmp_path / "ct.nii.gz"), str(tmp_path / "lab.nii.gz"))
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        img = load_image(image)
    assert tuple(img.shape) == (40, 36, 3) and np.allclose(img.numpy(), nib.load(image).get_fdata())
    notes = [str(w.message) for w in seen] + [r.getMessage() for r in caplog.records]
    assert not [n for n in notes if "nvImageCodec" in n or "NvImgCodec" in n], notes
    with pytest.raises(Exception, match="DICOM File Meta Information header"):
        load_image(image, reader=PydicomReader())  # a NIfTI file is no DICOM: pydicom's InvalidDicomError
