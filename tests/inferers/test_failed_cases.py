"""A folder inference with failed cases ends without a Python traceback: one line per failed case and the summary on
stderr, exit code 1, the good cases written; MSA2NET_TRACEBACK=1 still shows the traceback. The same holds for an
InputError raised inside an engine (a checkpoint of another class count)."""

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT

TESTS = os.path.join(ROOT, "tests")
OVERLAY = """network_def:
  _target_: conftest.TinySegNet
  in_channels: "@in_channels"
  out_channels: "@num_classes"
"""


@pytest.fixture()
def folder_run(tmp_path):
    """Inputs (2 good, a truncated file, a 2D image), a tiny checkpoint and the command that segments them."""
    from conftest import TinySegNet, make_volume

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "c"):
        make_volume(str(src / f"{name}.nii.gz"), str(tmp_path / f"{name}_lab.nii.gz"), shape=(24, 20, 3))
    raw = (src / "a.nii.gz").read_bytes()
    (src / "b_truncated.nii.gz").write_bytes(raw[: int(len(raw) * 0.9)])
    nib.save(nib.Nifti1Image(np.zeros((24, 20), np.float32), np.eye(4)), src / "d_slice.nii.gz")
    torch.manual_seed(0)
    torch.save(TinySegNet().state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "tiny.yaml").write_text(OVERLAY)

    def run(*extra, traceback=False, folder=("--dataset_dir", str(src)), ckpt="tiny.pt"):
        cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
               f"['configs/inference.yaml','{tmp_path / 'tiny.yaml'}']", *folder, "--output_dir", str(tmp_path / "out"),
               "--ckpt_path", str(tmp_path / ckpt), "--num_workers", "0", "--show_progress", "False", *extra]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
        env["MSA2NET_TRACEBACK"] = "1" if traceback else "0"
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    return run, src, tmp_path / "out"


def test_failed_cases_one_line_each_no_traceback(folder_run):
    run, src, out = folder_run
    proc = run()
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr  # neither the error hook nor StatsHandler's log shows one
    err = proc.stderr.splitlines()
    start = next(i for i, ln in enumerate(err) if ln.startswith("InputError: "))
    assert err[start] == f"InputError: 2 of 4 cases failed (details in {out / 'failures.json'}):"
    failed = err[start + 1 : start + 3]
    assert all(ln.startswith("  failed: ") for ln in failed) and err[start + 3].startswith("(MSA2NET_TRACEBACK=1")
    assert str(src / "b_truncated.nii.gz") in failed[0] and "cannot be read" in failed[0]
    assert str(src / "d_slice.nii.gz") in failed[1] and "is 2D" in failed[1]
    assert sorted(os.listdir(out)) == ["a_seg.nii.gz", "c_seg.nii.gz", "failures.json", "provenance.json"]
    proc = run(traceback=True, folder=("--input", str(src)))  # the same folder given the other way
    assert proc.returncode == 1 and "Traceback" in proc.stdout + proc.stderr
    assert "CasesFailed: 2 of 2 cases failed" in proc.stderr  # the good ones exist now and are skipped


def test_engine_input_error_printed_once_without_traceback(folder_run):
    run, src, out = folder_run
    proc = run("--num_classes", "5", folder=("--input", str(src / "a.nii.gz")))
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    # once: neither StatsHandler nor Ignite's engines repeat the message the error hook prints
    assert (proc.stdout + proc.stderr).count("trained for 9 classes") == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("InputError: ")]
    assert len(errors) == 1 and "set --num_classes 9" in errors[0]
    proc = run(folder=("--input", str(src / "a.nii.gz")), ckpt="missing.pt")
    assert proc.returncode == 1 and (proc.stdout + proc.stderr).count("does not exist: give an existing file") == 1
