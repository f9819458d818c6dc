"""MONAI Label's stock ``monaibundle`` app serves the bundle, and its ``/infer`` equals ``run inference``.

The server test runs only where MONAI Label is installed (``pip install -e '.[monailabel]'`` then
``pip install --no-deps monailabel==0.8.5``, docs/monailabel.md); elsewhere it is skipped with that reason. The
config and layout checks below it need no MONAI Label and run everywhere.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT
from monai.bundle import ConfigParser

from bundle.data.synthetic import write_synthetic_case
from bundle.errors import InputError

_spec = importlib.util.spec_from_file_location(
    "monailabel_app", os.path.join(ROOT, "scripts/release/monailabel_app.py")
)
app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(app)

needs_monailabel = pytest.mark.skipif(
    importlib.util.find_spec("monailabel") is None or importlib.util.find_spec("pydicom_seg_rb") is None,
    reason="MONAI Label not installed: pip install -e '.[monailabel]' && pip install --no-deps monailabel==0.8.5",
)


def _inference_parser(**overrides):
    parser = ConfigParser()
    parser.read_config(os.path.join(ROOT, "configs/inference.yaml"))
    parser["bundle_root"] = ROOT
    for key, value in overrides.items():
        parser[key] = value
    return parser


@pytest.mark.parametrize("lcc", [False, True])
def test_post_transforms_are_the_postprocessing_without_the_file_writer(lcc):
    """MONAI Label takes ``post_transforms`` over ``postprocessing``: the same objects (so ``Invertd`` inverts the
    very ``preprocessing`` instance that ran), minus ``SaveLabelNiftid`` (MONAI Label writes the result itself)."""
    parser = _inference_parser(lcc=lcc)
    post = parser.get_parsed_content("postprocessing")
    served = parser.get_parsed_content("post_transforms")
    assert [type(t).__name__ for t in post.transforms][-1] == "SaveLabelNiftid"
    expected = ["Invertd"] + (["KeepLargestComponentPerOrgand"] if lcc else [])
    assert [type(t).__name__ for t in served] == expected
    assert all(a is b for a, b in zip(served, post.transforms))
    assert served[0].transform is parser.get_parsed_content("preprocessing")


def test_metadata_names_monai_label():
    meta = json.load(open(os.path.join(ROOT, "configs/metadata.json")))
    assert meta["supported_apps"] == {"monai-label": "0.8.5"}
    # what MONAI Label reads from it: the first input/output keys and the label names of the output channels
    assert next(iter(meta["network_data_format"]["inputs"])) == "image"
    assert next(iter(meta["network_data_format"]["outputs"])) == "pred"


def test_layout_refuses_a_missing_checkpoint(tmp_path):
    with pytest.raises(InputError, match=r"checkpoint .*nope.pt does not exist: train first"):
        app.layout(str(tmp_path / "app"), ckpt=str(tmp_path / "nope.pt"))
    assert not (tmp_path / "app").exists()


def test_server_command_is_offline():
    cmd = app.server_command("apps/monaibundle", "studies", port=8123)
    joined = " ".join(cmd)
    assert "-m monailabel.main start_server --app apps/monaibundle --studies studies" in joined
    assert "--host 127.0.0.1 --port 8123 --conf models msa2net_synapse_ct_segmentation" in joined
    for key, value in (("zoo_source", "github"), ("sam2", "false"), ("skip_trainers", "true")):
        assert f"--conf {key} {value}" in joined
    assert app.server_env({"PYTHONPATH": "x"})["PYTHONPATH"] == os.pathsep.join([str(app.COMPAT), "x"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_monailabel
@pytest.mark.slow
def test_monaibundle_app_infer_equals_run_inference(tmp_path, request):
    import monailabel

    meta = json.load(open(os.path.join(ROOT, "configs/metadata.json")))
    assert monailabel.__version__ == meta["supported_apps"]["monai-label"]
    studies = tmp_path / "studies"
    studies.mkdir()
    # stored RAS, so the canonical PLS reorientation and its inverse both run on the server
    affine = np.array([[0.8, 0, 0, -20.0], [0, 0.7, 0, 14.0], [0, 0, 3.0, 60.0], [0, 0, 0, 1]])
    write_synthetic_case(str(studies / "ct.nii.gz"), str(tmp_path / "ct_label.nii.gz"), (40, 36, 3), affine=affine)
    torch.manual_seed(0)
    from bundle.networks import MSA2Net
    from bundle.transforms.geometry import Geometry

    net = MSA2Net(in_channels=1, out_channels=9, variant="paper", encoder_weights=None)
    ckpt = tmp_path / "model.pt"
    request.addfinalizer(lambda: ckpt.unlink(missing_ok=True))  # 300 MB; pytest keeps its last temp folders
    torch.save({"model": net.state_dict(), "geometry": Geometry().state_dict()}, ckpt)  # as training saves it
    del net
    model_dir = app.layout(str(tmp_path / "app"), ckpt=str(ckpt), link=True)

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = app.server_env()
    env["MONAI_LABEL_SESSION_PATH"] = str(tmp_path / "sessions")
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        app.server_command(str(tmp_path / "app"), str(studies), port=port),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            info = app.wait_ready(url, timeout=300, proc=proc)
        except Exception:
            log.flush()
            print(open(tmp_path / "server.log").read()[-4000:])
            raise
        served = info["models"][app.NAME]
        channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        assert served["labels"] == {name: int(i) for i, name in channels.items() if i != "0"}  # Slicer's segments
        got = app.infer("ct", url=url, out=str(tmp_path / "ct_monailabel.nrrd"))  # as 3D Slicer asks
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode is not None

    ref_dir = tmp_path / "ref"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml"]
    cmd += ["--input", str(studies / "ct.nii.gz"), "--output_dir", str(ref_dir), "--ckpt_path", str(ckpt)]
    cmd += ["--show_progress", "False"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = str(ref_dir / "ct_seg.nii.gz")

    result = app.compare(got, ref)
    assert result["same_shape"] and result["shape"] == [40, 36, 3]
    assert result["affine_max_abs_diff"] < 1e-4
    assert result["agreement"] >= 0.999, result
    from monai.transforms import LoadImage

    labels = np.unique(np.asarray(LoadImage(image_only=True)(ref)))
    assert len(labels) >= 3, labels  # a random network: many classes, so agreement is not trivially one label
    assert sorted(os.listdir(model_dir)) == ["LICENSE", "bundle", "configs", "models"]  # nothing written there
