"""configs/evaluate.yaml end to end (in process, a toy conv as the network): the report's protocol numbers equal
medpy on TransUNet's slice loop, LCC rows, and a TTA + 2-checkpoint ensemble equal to a direct computation."""

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT, official_test_single_volume
from monai.bundle import ConfigWorkflow
from scipy.ndimage import zoom

from bundle.transforms.ct import ct_volume_transforms
from bundle.transforms.postprocess import keep_largest_component

medpy_binary = pytest.importorskip("medpy.metric.binary")

CFG = os.path.join(ROOT, "configs")
TOY = {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 9, "kernel_size": 3, "padding": 1}


def _conv(seed):
    torch.manual_seed(seed)
    net = torch.nn.Conv2d(1, 9, 3, padding=1).eval()
    with torch.no_grad():
        net.weight.mul_(20)  # sharper logits: several classes over the slice, not one
    return net


def _evaluate(ct_dataset, out, **override):
    wf = ConfigWorkflow(
        config_file=[os.path.join(CFG, "train.yaml"), os.path.join(CFG, "evaluate.yaml")],
        meta_file=os.path.join(CFG, "metadata.json"),
        logging_file=os.path.join(CFG, "logging.conf"),
        workflow_type="train",
        bundle_root=ROOT,
        dataset_dir=str(ct_dataset),
        datalist=str(ct_dataset / "dataset.json"),
        output_dir=str(out),
        num_workers=0,
        show_progress=False,
        device="cpu",
        **{"network_def": TOY, **override},
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    report = out / "eval" / "report"
    rows = list(csv.DictReader(open(report / "metrics_long.csv")))
    values = {(r["postprocess"], int(r["label"]), r["mode"], r["metric"]): float(r["value"]) for r in rows}
    return values, json.load(open(report / "summary.json")), (report / "table1.md").read_text()


def _case(ct_dataset):
    d = ct_volume_transforms()(
        {"image": str(ct_dataset / "images/vol0.nii.gz"), "label": str(ct_dataset / "images/vol0_label.nii.gz")}
    )
    return d["image"][0].numpy(), d["label"][0].numpy().astype(np.int64)


def _check_protocol(values, post, pred, truth):
    for c in range(1, 9):
        p, t = pred == c, truth == c
        if p.any() and t.any():
            dc, hd = medpy_binary.dc(p, t), medpy_binary.hd95(p, t)
        else:
            dc, hd = (1.0, 0.0) if p.any() else (0.0, 0.0)  # the published edge cases
        assert values[(post, c, "protocol", "dice")] == pytest.approx(dc), (post, c)
        assert values[(post, c, "protocol", "hd95")] == pytest.approx(hd), (post, c)


def test_evaluate_report_equals_protocol_and_lcc_rows(ct_dataset, tmp_path):
    net = _conv(0)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    values, summary, md = _evaluate(
        ct_dataset, tmp_path / "run", ckpt_path=str(tmp_path / "model.pt"), lcc=True, save_pred=True
    )
    image, truth = _case(ct_dataset)
    pred = official_test_single_volume(image, net)
    saved = nib.load(tmp_path / "run" / "eval" / "pred" / "vol0_seg.nii.gz")  # --save_pred: the raw label map
    assert np.array_equal(np.asarray(saved.dataobj), pred)
    assert np.allclose(saved.affine, nib.load(ct_dataset / "images" / "vol0.nii.gz").affine)
    assert len(set(np.unique(pred)) & set(np.unique(truth)) - {0}) >= 1  # some organ is hit: a real comparison
    _check_protocol(values, "raw", pred, truth)
    _check_protocol(values, "LCC", np.asarray(keep_largest_component(pred[None]))[0], truth)
    assert summary["run"]["resample"] == "protocol" and summary["run"]["lcc"] is True
    assert summary["run"]["checkpoints"] == [str(tmp_path / "model.pt")]
    assert "| Ours (protocol, raw)" in md and "| Ours (protocol, LCC)" in md
    assert (tmp_path / "run" / "eval" / "val_mean_dice_raw.csv").exists()  # MONAI's per-case CSVs still written


def test_evaluate_tta_ensemble_equals_direct_average(ct_dataset, tmp_path):
    nets = [_conv(1), _conv(2)]
    paths = [str(tmp_path / f"m{i}.pt") for i in range(2)]
    for n, p in zip(nets, paths):
        torch.save(n.state_dict(), p)
    # ckpt_path does not exist: with ckpt_paths the CheckpointLoader must stay disabled
    values, summary, _ = _evaluate(
        ct_dataset, tmp_path / "run", ckpt_path=str(tmp_path / "absent.pt"), ckpt_paths=paths, tta=True
    )
    image, truth = _case(ct_dataset)
    h, w, d = image.shape
    pred = np.zeros(image.shape, np.uint8)
    for z in range(d):
        x = (
            torch.from_numpy(zoom(image[..., z], (224 / h, 224 / w), order=3).astype(np.float32))[None, None] - 0.5
        ) / 0.5
        with torch.no_grad():
            probs = [torch.softmax(n(x.flip(f)), 1).flip(f) for n in nets for f in ([], [-1], [-2], [-2, -1])]
        labels = torch.stack(probs).mean(0).argmax(1)[0].numpy()
        pred[..., z] = zoom(labels, (h / 224, w / 224), order=0)
    assert len(set(np.unique(pred)) & set(np.unique(truth)) - {0}) >= 1
    assert not np.array_equal(pred, official_test_single_volume(image, nets[0]))  # the average is not one net
    _check_protocol(values, "raw", pred, truth)
    assert summary["run"]["tta"] is True and summary["run"]["checkpoints"] == paths
    assert "postprocessed" not in summary  # lcc off by default


def test_inference_config_ensemble_tta_lcc(ct_dataset, tmp_path):
    """configs/inference.yaml with ckpt_paths + tta + lcc writes LCC(argmax(bilinear(log mean softmax)))."""
    import torch.nn.functional as F

    nets = [_conv(3), _conv(4)]
    paths = [str(tmp_path / f"m{i}.pt") for i in range(2)]
    for n, p in zip(nets, paths):
        torch.save(n.state_dict(), p)
    src = ct_dataset / "images" / "vol1.nii.gz"
    wf = ConfigWorkflow(
        config_file=os.path.join(CFG, "inference.yaml"),
        meta_file=os.path.join(CFG, "metadata.json"),
        logging_file=os.path.join(CFG, "logging.conf"),
        workflow_type="infer",
        bundle_root=ROOT,
        input=str(src),
        output_dir=str(tmp_path / "pred"),
        ckpt_path=str(tmp_path / "absent.pt"),
        ckpt_paths=paths,
        tta=True,
        lcc=True,
        network_def=TOY,
        num_workers=0,
        show_progress=False,
        device="cpu",
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    written = np.asarray(nib.load(tmp_path / "pred" / "vol1_seg.nii.gz").dataobj)
    image = ct_volume_transforms(keys=["image"])({"image": str(src)})["image"][0]
    h, w, d = image.shape
    x = (F.interpolate(image.permute(2, 0, 1)[:, None], size=(224, 224), mode="bicubic") - 0.5) / 0.5
    with torch.no_grad():
        probs = torch.stack([torch.softmax(n(x.flip(f)), 1).flip(f) for n in nets for f in ([], [-1], [-2], [-2, -1])])
    scores = F.interpolate(torch.log(probs.mean(0).clamp_min(1e-12)), size=(h, w), mode="bilinear")
    raw = scores.argmax(1).permute(1, 2, 0).numpy().astype(np.uint8)
    expected = np.asarray(keep_largest_component(raw[None]))[0]
    assert not np.array_equal(raw, expected)  # the LCC removed something, so the switch is seen
    assert np.array_equal(written, expected)


@pytest.fixture
def liver_dataset(tmp_path):
    """One synthetic case whose label map holds only the liver, as label 1 (a 2-class task)."""
    from bundle.data.synthetic import write_synthetic_case

    image, label = write_synthetic_case(str(tmp_path / "ct.nii.gz"), str(tmp_path / "organs.nii.gz"), shape=(40, 36, 3))
    organs = nib.load(label)
    liver = (np.asarray(organs.dataobj) == 5).astype(np.uint8)
    nib.save(nib.Nifti1Image(liver, organs.affine), str(tmp_path / "liver.nii.gz"))
    case = {"image": image, "label": str(tmp_path / "liver.nii.gz")}
    with open(tmp_path / "dataset.json", "w") as f:
        json.dump({"training": [case], "validation": [case], "test": [case]}, f)
    return tmp_path


def test_evaluate_names_the_configs_classes_and_explains_both_protocol_rules(liver_dataset, tmp_path):
    """A 2-class (liver) model is reported as the liver alone, with the liver's Dice as the mean (not 1/8 of it
    beside seven Synapse organs at 0), and the table says how organs missing on either side were scored."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1).eval()
    with torch.no_grad():
        net.weight.mul_(20)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    toy = dict(TOY, out_channels=2)
    common = dict(ckpt_path=str(tmp_path / "model.pt"), num_classes=2, network_def=toy)
    values, summary, md = _evaluate(liver_dataset, tmp_path / "run", label_names=["liver"], **common)
    d = ct_volume_transforms(num_classes=2)({"image": str(liver_dataset / "ct.nii.gz"),
                                             "label": str(liver_dataset / "liver.nii.gz")})  # fmt: skip
    pred = official_test_single_volume(d["image"][0].numpy(), net)
    truth = d["label"][0].numpy().astype(np.int64)
    liver = medpy_binary.dc(pred == 1, truth == 1)
    assert 0.01 < liver < 0.99  # a real comparison, not an empty or perfect mask (0.047 measured)
    assert list(summary["protocol"]["per_organ"]) == ["liver"]
    assert summary["protocol"]["mean_dice"] == pytest.approx(liver)
    assert "## Protocol mode (1 cases)" in md and "| Method | liver | DSC" in md
    assert "Synapse" not in md and "paper, Table 1" not in md and "spleen" not in md.lower()
    assert "an organ **predicted but absent from the reference scores DSC 100 %**" in md
    assert "Here, of 1 case-organ pairs: 0 predicted but absent (scored 100 %), 0 missed, 0 absent from both" in md

    with pytest.raises(Exception) as err:  # num_classes changed, names left at Synapse's 8
        _evaluate(liver_dataset, tmp_path / "run2", **common)
    from bundle.errors import root_input_error

    assert "label_names lists 8 (spleen, right kidney" in root_input_error(err.value)
    assert "--label_names \"['liver']\" for --num_classes 2" in root_input_error(err.value)
