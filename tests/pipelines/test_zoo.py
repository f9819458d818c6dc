"""Model-zoo readiness: every zoo CI check passes, the MONAI-only TorchScript config equals the eager one, and the
packaged zip installs with ``monai.bundle download`` and runs inference from outside the repository."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ROOT

from bundle.data.synthetic import write_synthetic_case
from bundle.networks import MSA2Net

NAME = "msa2net_synapse_ct_segmentation"
# Runs `python -m monai.bundle …` with this checkout's editable install switched off, so `bundle.…` targets can
# only resolve from the bundle root that MONAI puts on sys.path, as in a user's environment without this repo.
NO_EDITABLE = (
    "import runpy, sys; "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
    "sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != ROOT]; "
    "sys.argv = ['monai.bundle', *sys.argv[1:]]; runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)"
)


def _run(cmd, cwd=ROOT, timeout=1800, env=None):
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="2")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


def _random_checkpoint(path):
    torch.manual_seed(0)
    torch.save(MSA2Net(in_channels=1, out_channels=9).state_dict(), path)
    return path


@pytest.mark.slow
def test_verify_bundle_passes_with_random_weights():
    out = _run([sys.executable, "scripts/release/verify_bundle.py", "--random_weights", "True"])
    for check in ("files", "version", "metadata", "net_in_out", "export", "onnx", "workflows", "hooks", "format"):
        assert f"PASS {check}" in out, out[-4000:]
    assert "ALL CHECKS PASSED" in out


@pytest.mark.slow
def test_inference_ts_equals_eager_config(tmp_path):
    """At 224² in-plane no resampling happens in either config, so labels differ only by TorchScript noise."""
    ckpt = _random_checkpoint(tmp_path / "model.pt")
    net = MSA2Net(in_channels=1, out_channels=9).eval()
    net.load_state_dict(torch.load(ckpt, weights_only=True))
    torch.jit.save(torch.jit.script(net), str(tmp_path / "model.ts"))
    image, _ = write_synthetic_case(str(tmp_path / "ct.nii.gz"), str(tmp_path / "ct_label.nii.gz"), shape=(224, 224, 3))
    common = ["--input", image, "--num_workers", "0"]
    _run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
          "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "eager"), "--show_progress", "False", *common])  # fmt: skip
    # inference_ts.yaml needs neither this package nor timm: run it from a folder outside the repository
    _run([sys.executable, "-c", f"import os; ROOT = {ROOT!r}; " + NO_EDITABLE, "run", "inference",
          "--config_file", os.path.join(ROOT, "configs/inference_ts.yaml"), "--ts_path", str(tmp_path / "model.ts"),
          "--output_dir", str(tmp_path / "ts"), *common], cwd=tmp_path)  # fmt: skip
    eager, ts = nib.load(tmp_path / "eager" / "ct_seg.nii.gz"), nib.load(tmp_path / "ts" / "ct_seg.nii.gz")
    assert ts.shape == eager.shape == (224, 224, 3) and ts.get_data_dtype() == np.uint8
    np.testing.assert_allclose(ts.affine, nib.load(image).affine, atol=1e-5)
    a, b = np.asarray(eager.dataobj), np.asarray(ts.dataobj)
    assert len(np.unique(a)) > 1  # a random network still predicts several classes: the comparison means something
    assert (a == b).mean() > 0.999


@pytest.mark.slow
def test_zip_downloads_and_runs_outside_the_repo(tmp_path):
    ckpt = _random_checkpoint(tmp_path / "model.pt")
    out = _run(
        [sys.executable, "scripts/release/package_bundle.py", "--out", str(tmp_path / "dist"), "--weights", str(ckpt)]
    )
    version = json.load(open(os.path.join(ROOT, "configs/metadata.json")))["version"]
    zip_path = tmp_path / "dist" / f"{NAME}_v{version}.zip"
    assert str(zip_path) in out and not list((tmp_path / "dist").glob("*.tmp"))

    hub = tmp_path / "hub"
    _run([sys.executable, "-m", "monai.bundle", "download", "--name", NAME, "--url", f"file://{zip_path}",
          "--bundle_dir", str(hub)], cwd=tmp_path)  # fmt: skip
    bundle_root = hub / NAME
    for f in ("configs/inference.json", "configs/train.json", "configs/metadata.json", "models/model.pt",
              "bundle/networks/msa2net.py", "docs/README.md", "LICENSE"):  # fmt: skip
        assert (bundle_root / f).is_file(), f

    image, _ = write_synthetic_case(str(tmp_path / "ct.nii.gz"), str(tmp_path / "ct_label.nii.gz"), shape=(50, 40, 2))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    log = _run(
        [sys.executable, "-c", f"import os; ROOT = {ROOT!r}; " + NO_EDITABLE, "run", "inference",
         "--config_file", str(bundle_root / "configs/inference.json"), "--bundle_root", str(bundle_root),
         "--input", image, "--output_dir", str(tmp_path / "seg"), "--num_workers", "0", "--show_progress", "False",
         "--inference", "['$print(\"BUNDLE_FROM\", __import__(\"bundle\").__file__)', '$@evaluator.run()']"],
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert f"BUNDLE_FROM {bundle_root}" in log  # the zip's code, not this checkout's
    seg, src = nib.load(tmp_path / "seg" / "ct_seg.nii.gz"), nib.load(image)
    assert seg.shape == src.shape and seg.get_data_dtype() == np.uint8
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)

    # monai.bundle.load builds the network from configs/inference.json and loads models/model.pt (the bundle root on
    # sys.path, as the zoo's docs ask for bundles with custom code)
    code = (
        f"import os, sys, torch, monai; ROOT = {ROOT!r}; "
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
        f"sys.path.insert(0, {str(bundle_root)!r}); "
        f"net = monai.bundle.load(name={NAME!r}, bundle_dir={str(hub)!r}, workflow_type='inference', device='cpu'); "
        f"ref = torch.load({str(ckpt)!r}, weights_only=True); "
        "same = all(torch.equal(v, ref[k]) for k, v in net.state_dict().items()); "
        "print('LOADED', type(net).__name__, same, sys.modules['bundle'].__file__)"
    )
    log = _run([sys.executable, "-c", code], cwd=tmp_path, env=env)
    assert f"LOADED MSA2Net True {bundle_root}" in log
