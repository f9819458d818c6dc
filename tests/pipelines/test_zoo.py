"""Model-zoo readiness: every zoo CI check passes, the MONAI-only TorchScript config equals the eager one, and the
packaged zip installs with ``monai.bundle download`` and runs inference from outside the repository."""

import json
import os
import re
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
    eager_log = _run([
        sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml",
        "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "eager"), "--show_progress", "False", *common,
    ])  # fmt: skip
    # inference_ts.yaml needs neither this package nor timm: run it from a folder outside the repository
    ts_log = _run([
        sys.executable, "-c", f"import os; ROOT = {ROOT!r}; " + NO_EDITABLE, "run", "inference",
        "--config_file", os.path.join(ROOT, "configs/inference_ts.yaml"), "--ts_path", str(tmp_path / "model.ts"),
        "--output_dir", str(tmp_path / "ts"), *common,
    ], cwd=tmp_path)  # fmt: skip
    for log in (eager_log, ts_log):  # MONAI's note that its GPU DICOM decoder is missing, silenced in both configs
        assert "input summary of monai.bundle.scripts.run" in log  # the run's own output was captured
        assert "nvImageCodec" not in log and "NvImgCodec" not in log
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


def _tiny_ts(path, metadata=None):
    """A scripted TinySegNet (1 → 9 channels) as a .ts, with ``metadata`` as its metadata.json (as ckpt_export)."""
    from conftest import TinySegNet

    torch.manual_seed(0)
    extra = {"metadata.json": json.dumps(metadata)} if metadata is not None else {}
    torch.jit.save(torch.jit.script(TinySegNet(1, 9).eval()), str(path), _extra_files=extra)
    return path


def _inference_ts(tmp_path, *args):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference_ts.yaml",
           "--output_dir", str(tmp_path / "out"), "--num_workers", "0", *args]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _geometry_meta(pixel_size=None, crop_body=False):
    image = {"axcodes": "PLS", "pixel_size_mm": pixel_size, "crop_body": crop_body}
    return {"network_data_format": {"inputs": {"image": image}}}


@pytest.mark.parametrize("problem", ["missing_ts", "mistyped_input", "png_folder", "empty_folder", "geometry"])
def test_inference_ts_refuses_what_it_cannot_do_in_one_line(tmp_path, problem):
    """No input the user named ends with exit 0 and no mask: each refusal is one line naming the file and the fix."""
    ts = _tiny_ts(tmp_path / "model.ts", _geometry_meta())
    image, _ = write_synthetic_case(str(tmp_path / "ct.nii.gz"), str(tmp_path / "ct_label.nii.gz"), shape=(30, 20, 2))
    pngs = tmp_path / "slices"
    pngs.mkdir()
    for i in range(2):
        (pngs / f"slice{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "empty").mkdir()
    args, expected = {
        "missing_ts": (["--ts_path", str(tmp_path / "nope.ts"), "--input", image], "model .*nope.ts does not exist"),
        "mistyped_input": (["--ts_path", str(ts), "--input", image + "x"], r"input .*ct.nii.gzx does not exist"),
        "png_folder": (["--ts_path", str(ts), "--input", str(pngs)],
                       r"slices holds no volume .* not a DICOM series folder \(2 entries, e.g. slice0.png\)"),
        "empty_folder": (["--ts_path", str(ts), "--input", str(tmp_path / "empty")], r"not a DICOM series .*empty"),
        "geometry": (["--ts_path", str(_tiny_ts(tmp_path / "geo.ts", _geometry_meta(3.0, True))), "--input", image],
                     r"geo.ts was trained with pixel_size 3.0 mm, crop_body True .* run configs/inference.yaml"),
    }[problem]  # fmt: skip
    proc = _inference_ts(tmp_path, *args)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("inference_ts: ")]
    assert len(lines) == 1 and re.search(expected, lines[0]), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_inference_ts_segments_a_dicom_series_folder(tmp_path):
    """A DICOM series folder (the zoo's standard path given a scanner export) is segmented onto its own grid, with
    the labels the same .ts gives the NIfTI it was written from; the storage order comes from the .ts."""
    from bundle.data.synthetic import write_dicom_series

    ts = _tiny_ts(tmp_path / "model.ts", _geometry_meta())
    lps = np.diag([-0.8, -0.7, 3.0, 1.0])
    image, _ = write_synthetic_case(str(tmp_path / "ct.nii.gz"), str(tmp_path / "ct_label.nii.gz"), shape=(40, 36, 3),
                                    affine=lps)  # fmt: skip
    series = write_dicom_series(image, str(tmp_path / "ct_dicom"))
    for given in (series, image):
        proc = _inference_ts(tmp_path, "--ts_path", str(ts), "--input", given)
        assert proc.returncode == 0, proc.stderr[-3000:]
    from_dicom = nib.load(tmp_path / "out" / "ct_dicom_seg.nii.gz")
    from_nifti = nib.load(tmp_path / "out" / "ct_seg.nii.gz")
    assert from_dicom.shape == (40, 36, 3)
    np.testing.assert_allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    a, b = np.asarray(from_dicom.dataobj), np.asarray(from_nifti.dataobj)
    # the DICOM copy stores HU as int16 (the NIfTI holds floats): a few border voxels may tip (measured 5 of 4320)
    assert len(np.unique(b)) > 1 and (a == b).mean() > 0.995


@pytest.mark.slow
def test_export_states_the_checkpoint_geometry_and_packaging_refuses_a_ts_that_does_not(tmp_path):
    """Weights trained with pixel_size 3 mm and crop_body (as the demo's): MONAI's ckpt_export called as zoo users
    call it (no --key_in_ckpt) exports them without 50 KB of key lists but writes the official geometry into the
    .ts; the packager refuses that .ts with the fix; scripts/model/export_torchscript.py writes a .ts that states
    the truth, and the zip's metadata.json states it too."""
    torch.manual_seed(0)
    net = MSA2Net(in_channels=1, out_channels=9)
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict(), "geometry": {"axcodes": "PLS", "pixel_size": 3.0, "crop_body": True}}, ckpt)

    zoo_ts = tmp_path / "zoo.ts"
    log = _run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(zoo_ts),
                "--ckpt_file", str(ckpt), "--meta_file", "configs/metadata.json",
                "--config_file", "configs/inference.yaml"])  # fmt: skip
    assert len(log) < 5000 and "Missing key" not in log
    exported = torch.jit.load(str(zoo_ts), map_location="cpu").state_dict()
    assert all(torch.equal(exported[k], v) for k, v in net.state_dict().items())

    package = [
        sys.executable,
        "scripts/release/package_bundle.py",
        "--out",
        str(tmp_path / "dist"),
        "--weights",
        str(ckpt),
    ]
    proc = subprocess.run([*package, "--ts", str(zoo_ts)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert re.search(
        r"zoo.ts states axcodes PLS, whole-slice resize, crop_body False, slice_window whole but the weights .* were "
        r"trained with axcodes PLS, pixel_size 3 mm, crop_body True, slice_window whole: re-export it with",
        proc.stderr,
    ), proc.stderr
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())

    ts = tmp_path / "model.ts"
    _run([sys.executable, "scripts/model/export_torchscript.py", "--ckpt", str(ckpt), "--out", str(ts)])
    files = {"metadata.json": ""}
    torch.jit.load(str(ts), map_location="cpu", _extra_files=files)
    stated = json.loads(files["metadata.json"])["network_data_format"]["inputs"]["image"]
    assert (stated["axcodes"], stated["pixel_size_mm"], stated["crop_body"]) == ("PLS", 3.0, True)

    _run([*package, "--include_ts", "False"])
    import zipfile

    (zip_path,) = (tmp_path / "dist").glob("*.zip")
    with zipfile.ZipFile(zip_path) as zf:
        meta = json.loads(zf.read(f"{NAME}/configs/metadata.json"))
        assert not any(n.endswith("model.ts") for n in zf.namelist())
    image = meta["network_data_format"]["inputs"]["image"]
    assert (image["pixel_size_mm"], image["crop_body"]) == (3.0, True) and "3 mm pixels" in meta["image_classes"]
