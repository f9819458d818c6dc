"""scripts/evaluation/evaluate_folder.py: a folder of finished masks scored as `run evaluating` scores them (the
same report files and numbers), cases paired by name, unmatched / mis-shaped / mis-placed pairs refused."""

import csv
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT
from monai.bundle import ConfigWorkflow

from bundle.errors import InputError
from bundle.evaluation.folder import case_key, evaluate_folder, pair_cases

CFG = os.path.join(ROOT, "configs")
SCRIPT = os.path.join(ROOT, "scripts", "evaluation", "evaluate_folder.py")
TOY = {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 9, "kernel_size": 3, "padding": 1}


def _cli(*args, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)], cwd="/", env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def evaluated(ct_dataset, tmp_path_factory):
    """`run evaluating` (train.yaml + evaluate.yaml, a toy conv, both cases, --save_pred) and its label folder."""
    tmp = tmp_path_factory.mktemp("evaluated")
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 9, 3, padding=1)
    with torch.no_grad():
        net.weight.mul_(20)  # several classes per slice, so the numbers are not trivial
    torch.save(net.state_dict(), tmp / "model.pt")
    wf = ConfigWorkflow(
        config_file=[os.path.join(CFG, "train.yaml"), os.path.join(CFG, "evaluate.yaml")],
        meta_file=os.path.join(CFG, "metadata.json"),
        logging_file=False,
        workflow_type="train",
        bundle_root=ROOT,
        dataset_dir=str(ct_dataset),
        datalist=str(ct_dataset / "dataset_ddp.json"),  # its test section lists both cases
        output_dir=str(tmp / "run"),
        ckpt_path=str(tmp / "model.pt"),
        network_def=TOY,
        num_workers=0,
        show_progress=False,
        device="cpu",
        save_pred=True,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    labels = tmp / "labels"
    labels.mkdir()
    for i in range(2):
        shutil.copy(ct_dataset / "images" / f"vol{i}_label.nii.gz", labels)
    return tmp / "run" / "eval", labels


def test_folder_scores_equal_run_evaluating(evaluated, tmp_path):
    eval_dir, labels = evaluated
    pred = eval_dir / "pred"
    assert sorted(os.listdir(pred)) == ["vol0_seg.nii.gz", "vol1_seg.nii.gz"]
    proc = _cli("--pred", pred, "--label", labels, "--out", tmp_path / "rep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 cases in" in proc.stdout
    ref_dir, out = eval_dir / "report", tmp_path / "rep"
    ref, got = json.load(open(ref_dir / "summary.json")), json.load(open(out / "summary.json"))
    assert ref["num_cases"] == got["num_cases"] == 2
    assert [c["case"] for c in got["cases"]] == ["vol0_label", "vol1_label"]  # named after the label, as there
    for key in ("cases", "protocol", "clinical", "paper"):
        assert got[key] == ref[key], key
    assert 0.0 < got["protocol"]["mean_dice"] < 1.0  # a real, imperfect prediction
    assert got["run"] == {"pred_dir": str(pred), "label_dir": str(labels), "axcodes": "PLS"}
    # the per-case CSV is byte-identical; the Markdown differs only in the "Evaluated:" line
    assert (out / "metrics_long.csv").read_bytes() == (ref_dir / "metrics_long.csv").read_bytes()
    rows = list(csv.DictReader(open(out / "metrics_long.csv")))
    assert len(rows) == 2 * 8 * 6  # cases × organs × (2 protocol + 4 clinical metrics)
    strip = [lambda t: [ln for ln in t.splitlines() if not ln.startswith("Evaluated:")]]
    assert strip[0]((out / "table1.md").read_text()) == strip[0]((ref_dir / "table1.md").read_text())
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # atomic writes leave no temporary files


def test_case_keys_and_pairing(tmp_path):
    assert case_key("a/vol0_seg.nii.gz") == "vol0" and case_key("vol0_label.nrrd") == "vol0"
    assert case_key("case_01.nii") == "case_01" and case_key("x_gt.mha") == "x" and case_key("_seg.nii.gz") == "_seg"
    assert case_key("notes.txt") is None and case_key(".vol0_seg.nii.gz.x.tmp") is None
    assert case_key("vol0_seg.tmp.nii.gz") is None  # the inference writer's temporary file
    (tmp_path / "p").mkdir(), (tmp_path / "l").mkdir()
    for name in ("p/b_seg.nii.gz", "p/a_pred.nii.gz", "l/a.nii.gz", "l/b_label.nii.gz", "l/dataset.json"):
        (tmp_path / name).write_bytes(b"")
    assert [k for k, _, _ in pair_cases(str(tmp_path / "p"), str(tmp_path / "l"))] == ["a", "b"]


def _write(path, arr, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(arr, np.uint8), np.diag([0.8, 0.8, 3.0, 1.0]) if affine is None else affine),
             str(path))  # fmt: skip


def test_refuses_unmatched_duplicate_and_mismatched_pairs(tmp_path):
    pred, lab = tmp_path / "pred", tmp_path / "lab"
    pred.mkdir(), lab.mkdir()
    vol = np.zeros((16, 12, 3), np.uint8)
    vol[4:10, 3:8] = 5
    _write(pred / "a_seg.nii.gz", vol), _write(lab / "a.nii.gz", vol)
    _write(pred / "b_seg.nii.gz", vol), _write(lab / "c.nii.gz", vol)
    with pytest.raises(InputError) as err:
        evaluate_folder(str(pred), str(lab), str(tmp_path / "out"))
    msg = str(err.value)
    assert f"1 prediction(s) in {pred} without a label in {lab}: b_seg.nii.gz" in msg
    assert f"1 label(s) in {lab} without a prediction in {pred}: c.nii.gz" in msg
    os.remove(lab / "c.nii.gz")
    _write(lab / "b.nii.gz", vol[:, :10])  # other shape
    with pytest.raises(InputError, match=r"prediction .*b_seg.nii.gz has shape \(16, 12, 3\) but its label .*b.nii.gz"):
        evaluate_folder(str(pred), str(lab), str(tmp_path / "out"))
    _write(lab / "b.nii.gz", vol, affine=np.diag([0.8, 0.8, 5.0, 1.0]))  # same shape, other voxel size
    with pytest.raises(InputError, match=r"prediction .*b_seg.nii.gz has voxel-to-world matrix .* label .*b.nii.gz"):
        evaluate_folder(str(pred), str(lab), str(tmp_path / "out"))
    _write(lab / "b.nii.gz", vol * 3)  # label 15 with 9 classes
    with pytest.raises(InputError, match=r"label .*b.nii.gz has label values \[15\] outside 0..8"):
        evaluate_folder(str(pred), str(lab), str(tmp_path / "out"))
    _write(lab / "b.nii.gz", vol)
    _write(lab / "b_label.nii.gz", vol)  # an image and its label in one folder: both are case "b"
    with pytest.raises(InputError, match=r"b.nii.gz and b_label.nii.gz are both case 'b'"):
        evaluate_folder(str(pred), str(lab), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing written for a refused run
    os.remove(lab / "b_label.nii.gz")
    summary = evaluate_folder(str(pred), str(lab), str(tmp_path / "out"))
    assert summary["num_cases"] == 2 and summary["protocol"]["per_organ"]["liver"]["dice"] == 1.0


def test_cli_error_is_one_line_without_traceback(tmp_path):
    (tmp_path / "p").mkdir(), (tmp_path / "l").mkdir()
    vol = np.zeros((16, 12, 3), np.uint8)
    _write(tmp_path / "p" / "a_seg.nii.gz", vol), _write(tmp_path / "l" / "b.nii.gz", vol)
    proc = _cli("--pred", tmp_path / "p", "--label", tmp_path / "l", "--out", tmp_path / "out")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("InputError:")]
    assert len(errors) == 1 and "a_seg.nii.gz" in errors[0] and "b.nii.gz" in errors[0]
    proc = _cli("--pred", tmp_path / "p", "--label", tmp_path / "l", "--out", tmp_path / "out",
                env={"MSA2NET_TRACEBACK": "1"})  # fmt: skip
    assert proc.returncode == 1 and "Traceback" in proc.stderr
