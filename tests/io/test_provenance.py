"""A rerun into an output folder says which outputs it kept and from which checkpoint (provenance.json)."""

import json
import os
import subprocess
import sys

import torch
from conftest import ROOT, TinySegNet, make_volume

TESTS = os.path.join(ROOT, "tests")
OVERLAY = 'network_def: {_target_: conftest.TinySegNet, in_channels: "@in_channels", out_channels: "@num_classes"}\n'


def _run(tmp_path, ckpt, inputs, *extra):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
           f"['configs/inference.yaml','{tmp_path / 'tiny.yaml'}']", "--input", str(inputs), "--output_dir",
           str(tmp_path / "out"), "--ckpt_path", str(ckpt), "--num_workers", "0", "--show_progress", "False", *extra]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_rerun_reports_outputs_kept_from_other_weights(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_volume(str(src / "a.nii.gz"), str(tmp_path / "a_lab.nii.gz"), shape=(24, 20, 3))
    (tmp_path / "tiny.yaml").write_text(OVERLAY)
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(TinySegNet().state_dict(), tmp_path / f"tiny{seed}.pt")
    first = _run(tmp_path, tmp_path / "tiny0.pt", src)
    assert first.returncode == 0, first.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "provenance.json").read_text())
    entry = record["outputs"]["a_seg.nii.gz"]
    assert entry["input"].endswith("a.nii.gz") and entry["checkpoints"][0]["path"].endswith("tiny0.pt")
    assert len(entry["checkpoints"][0]["sha256"]) == 64 and entry["options"]["tta"] is False

    make_volume(str(src / "b.nii.gz"), str(tmp_path / "b_lab.nii.gz"), shape=(24, 20, 3), seed=1)
    second = _run(tmp_path, tmp_path / "tiny1.pt", src)
    assert second.returncode == 0, second.stderr[-2000:]
    log = second.stdout + second.stderr
    assert "kept 1 output(s) of earlier runs (0 from these weights and options); this run wrote 1" in log
    assert "1 kept output(s) come from other weights or options (e.g. a_seg.nii.gz: tiny0.pt sha256" in log
    record = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert record["outputs"]["a_seg.nii.gz"]["checkpoints"][0]["path"].endswith("tiny0.pt")  # kept, not rewritten
    assert record["outputs"]["b_seg.nii.gz"]["checkpoints"][0]["path"].endswith("tiny1.pt")
