"""MONAI Label's stock ``monaibundle`` app serves the bundle, and its ``/infer`` equals ``run inference``.

The server test runs only where MONAI Label is installed (``pip install -e '.[monailabel]'`` then
``pip install --no-deps monailabel==0.8.5``, docs/monailabel.md); elsewhere it is skipped with that reason. The
config and layout checks below it need no MONAI Label and run everywhere.
"""

import glob
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from conftest import ROOT
from monai.bundle import ConfigParser

from bundle.data.orthanc import orthanc_missing
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


def test_preprocessing_runs_with_the_loaders_image_only_off(tmp_path):
    """``BundleInferTask.pre_transforms`` sets ``image_only = False`` on the loader of every ``LoadImaged`` in
    ``preprocessing``: the bundle's loader must then still put the image (not an ``(image, meta)`` tuple) under
    its key, or every ``/infer`` fails with "AttributeError: 'tuple' object has no attribute 'shape'"."""
    from monai.data import MetaTensor
    from monai.transforms import LoadImaged

    write_synthetic_case(str(tmp_path / "ct.nii.gz"), str(tmp_path / "lab.nii.gz"), (40, 36, 3))
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pt")  # no geometry: the official one
    pre = _inference_parser(ckpt_path=str(tmp_path / "model.pt")).get_parsed_content("preprocessing")
    loaders = [t for t in pre.transforms if isinstance(t, LoadImaged)]
    assert loaders
    for t in loaders:  # what MONAI Label 0.8.5 does (monailabel/tasks/infer/bundle.py)
        t._loader.image_only = False
    out = pre({"image": str(tmp_path / "ct.nii.gz")})
    assert isinstance(out["image"], MetaTensor) and out["image"].shape[0] == 1 and out["image"].ndim == 4
    assert out["image_meta_dict"]["filename_or_obj"].endswith("ct.nii.gz")


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
    env = app.server_env({"PYTHONPATH": "x", "PATH": "/usr/bin"}, python="/venv/bin/python")
    assert env["PYTHONPATH"] == os.pathsep.join([str(app.COMPAT), "x"])
    assert env["PATH"] == os.pathsep.join(["/venv/bin", "/usr/bin"])  # dcmqi's itkimage2segimage, pip-installed


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


# ------------------------------------------------------------------------------------- MONAI Label on a PACS
def _stop(proc, log):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def hospital_study(demo_dicom_series, tmp_path_factory):
    """The demo's real CT series as a hospital study (UIDs, a 3-image localizer series): folder, study, CT series."""
    import pydicom
    from pydicom.uid import generate_uid

    from bundle.data.dicom_study import write_study

    # a study of its own: the session's Orthanc also holds tests/pipelines/test_pacs.py's study of the same series
    study_uid = generate_uid(entropy_srcs=["tests/pipelines/test_monailabel.py"])
    dest = str(tmp_path_factory.mktemp("ml_study") / "study")
    study = write_study(demo_dicom_series, dest, study_uid=study_uid, description="CT Body")
    ct = pydicom.dcmread(os.path.join(study, "CT", "IM0001.dcm"), stop_before_pixels=True)
    files = sorted(glob.glob(os.path.join(study, "**", "*.dcm"), recursive=True))
    return study, files, str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID)


def test_debian_orthanc_sends_jpeg2000_only_as_stored(hospital_study, orthanc):
    """MONAI Label 0.8.5 retrieves a series with dicomweb-client's default request (no transfer syntax: Explicit VR
    Little Endian). Debian's Orthanc 1.10 cannot decode the CT's JPEG 2000 without its GDCM plugin: HTTP 500
    (docs/monailabel.md §8), while the bundle's own as-stored request succeeds."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    _, files, study_uid, ct_uid = hospital_study
    assert orthanc.upload(files) == 23
    web = DICOMwebClient(orthanc.dicomweb)
    with pytest.raises(requests.HTTPError, match="500 Server Error"):
        web.retrieve_series(study_uid, ct_uid)  # monailabel/datastore/utils/dicom.py dicom_web_download_series
    assert len(web.retrieve_series(study_uid, ct_uid, media_types=(("application/dicom", "*"),))) == 20


def test_serve_refuses_an_unreachable_dicomweb_url(tmp_path):
    with pytest.raises(InputError, match=r"the DICOMweb server http://127.0.0.1:9/dicom-web does not answer a QIDO"):
        app.check_dicomweb("http://127.0.0.1:9/dicom-web", app.server_env(), timeout=5)
    env = dict(app.server_env(), PATH=str(tmp_path))  # no dcmqi there
    with pytest.raises(InputError, match="itkimage2segimage is not installed: pip install dcmqi"):
        app.check_dicomweb("http://127.0.0.1:9/dicom-web", env)
    assert app.is_dicomweb("https://pacs/dicom-web") and not app.is_dicomweb("studies")
    assert app.dicomweb_env({})["MONAI_LABEL_DICOMWEB_CACHE_EXPIRY"] == "60"
    assert app.dicomweb_env({"MONAI_LABEL_DICOMWEB_CACHE_EXPIRY": "5"})["MONAI_LABEL_DICOMWEB_CACHE_EXPIRY"] == "5"


def test_label_info_codes_each_organ_present_in_value_order(tmp_path):
    """What ``save`` sends: one entry per value present, ascending (MONAI Label pairs entries with values by
    position), each with the dcmqi attribute coding the organ (laterality for the kidneys); values outside 1..8 and
    a missing file or server are one line."""
    import nibabel as nib

    lab = np.zeros((6, 6, 2), np.uint8)
    lab[0, 0, 0], lab[1, 1, 0], lab[2, 2, 1], lab[3, 3, 1] = 5, 3, 3, 1  # liver, left kidney, spleen; no 2
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "lab.nii.gz")
    info = app.label_info(str(tmp_path / "lab.nii.gz"))
    assert [(e["name"], e["idx"], e["segmentAttribute"]["labelID"]) for e in info] == [
        ("spleen", 1, 1), ("left_kidney", 3, 3), ("liver", 5, 5)]  # fmt: skip
    codes = [e["segmentAttribute"]["SegmentedPropertyTypeCodeSequence"]["CodeValue"] for e in info]
    assert codes == ["78961009", "64033007", "10200004"]
    assert info[1]["segmentAttribute"]["SegmentedPropertyTypeModifierCodeSequence"]["CodeMeaning"] == "Left"
    assert "SegmentedPropertyTypeModifierCodeSequence" not in info[0]["segmentAttribute"]
    assert {e["segmentAttribute"]["SegmentAlgorithmName"] for e in info} == {"MSA2Net"}
    assert info[0]["model_name"] == "MSA2Net"
    lab[0, 0, 1] = 9
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "bad.nii.gz")
    with pytest.raises(InputError, match=r"bad.nii.gz has values \[9\] that name no organ of this bundle \(1..8\)"):
        app.label_info(str(tmp_path / "bad.nii.gz"))
    with pytest.raises(InputError, match="label map .*nope.nrrd does not exist"):
        app.save("1.2.3", str(tmp_path / "nope.nrrd"))
    with pytest.raises(InputError, match="no MONAI Label server answers at http://127.0.0.1:9"):
        app.save("1.2.3", str(tmp_path / "lab.nii.gz"), url="http://127.0.0.1:9")


def _quadrant_app(root):
    """The app serving :class:`conftest.QuadrantNet` (fast, and any flip or transpose changes its classes) in the
    bundle's configs; returns the app folder and the config override for ``run inference``."""
    import yaml
    from conftest import QUADRANT_NET, QuadrantNet

    bundle_root = root / "bundle_root"
    for d in app.BUNDLE_DIRS:
        shutil.copytree(os.path.join(ROOT, d), bundle_root / d, ignore=app.SKIP)
    config = bundle_root / "configs" / "inference.yaml"
    parsed = yaml.safe_load(config.read_text())
    parsed["network_def"] = dict(QUADRANT_NET)
    config.write_text(yaml.safe_dump(parsed, sort_keys=False))
    torch.save(QuadrantNet().state_dict(), root / "model.pt")
    (root / "net.yaml").write_text(yaml.safe_dump({"network_def": dict(QUADRANT_NET)}))
    app.layout(str(root / "app"), ckpt=str(root / "model.pt"), bundle_root=str(bundle_root))
    return root / "app", root / "net.yaml"


def _segments(web, study_uid):
    """Every SEG of the study on the PACS, as highdicom objects (retrieved as stored)."""
    import highdicom as hd

    out = []
    for series in web.search_for_series(study_uid, search_filters={"Modality": "SEG"}):
        (ds,) = web.retrieve_series(
            study_uid, series["0020000E"]["Value"][0], media_types=(("application/dicom", "*"),)
        )
        out.append(hd.seg.Segmentation.from_dataset(ds))
    return out


def _seg_labels(seg, study, mask_affine, shape):
    """The SEG's segments painted back on the local mask's grid: {segment label: boolean volume}."""
    import pydicom

    inv = np.linalg.inv(mask_affine)
    out = {d.SegmentLabel: np.zeros(shape, bool) for d in seg.SegmentSequence}
    for path in sorted(glob.glob(os.path.join(study, "CT", "*.dcm"))):
        src = pydicom.dcmread(path, stop_before_pixels=True)
        frames = seg.get_pixels_by_source_instance(  # dcmqi does not write SpatialLocationsPreserved
            [src.SOPInstanceUID], combine_segments=False, ignore_spatial_locations=True
        )[
            0
        ]  # (rows, columns, segments)
        lps = np.asarray(src.ImagePositionPatient, dtype=float)
        k = int(round((inv @ np.array([-lps[0], -lps[1], lps[2], 1.0]))[2]))
        for i, d in enumerate(seg.SegmentSequence):
            out[d.SegmentLabel][:, :, k] = frames[..., i].T > 0
    return out


needs_gdcm = pytest.mark.skipif(
    orthanc_missing(transcode=True) is not None,
    reason="Orthanc with its DICOMweb and GDCM plugins is not installed (apt-get install orthanc orthanc-dicomweb "
    "orthanc-gdcm)",
)


@needs_monailabel
@needs_gdcm
@pytest.mark.slow
def test_monai_label_on_the_pacs(hospital_study, tmp_path):
    """The stock app with ``--studies <Orthanc's DICOMweb root>``: the CT series is listed (and so is the
    localizer), ``/infer`` on it equals ``run inference`` voxel for voxel, and a final label saved through MONAI Label
    reaches Orthanc as a SEG on the CT series: organ codes with ``save`` (the workaround), Spleen for every segment
    and names by position with the request 3D Slicer sends."""
    import nibabel as nib
    import requests
    from dicomweb_client.api import DICOMwebClient

    from bundle.data.orthanc import LocalOrthanc
    from bundle.data.synapse import ORGANS
    from bundle.io.dicom_seg import SNOMED

    study, files, study_uid, ct_uid = hospital_study
    app_dir, net_yaml = _quadrant_app(tmp_path)
    with LocalOrthanc(str(tmp_path / "orthanc"), transcode=True) as pacs:
        assert pacs.upload(files) == 23
        web = DICOMwebClient(pacs.dicomweb)
        (loc,) = [
            s["0020000E"]["Value"][0] for s in web.search_for_series(study_uid) if s["0020000E"]["Value"][0] != ct_uid
        ]
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = app.dicomweb_env(app.server_env(), cache_s=1)
        app.check_dicomweb(pacs.dicomweb, env)
        env["PYTHONPATH"] += os.pathsep + os.path.join(ROOT, "tests")  # conftest.QuadrantNet
        env["MONAI_LABEL_SESSION_PATH"] = str(tmp_path / "sessions")
        env["MONAI_LABEL_DICOMWEB_CACHE_PATH"] = str(tmp_path / "cache")
        log = open(tmp_path / "server.log", "w")
        proc = subprocess.Popen(app.server_command(str(app_dir), pacs.dicomweb, port=port), env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            app.wait_ready(url, timeout=300, proc=proc)
            stats = json.loads(urllib.request.urlopen(url + "/datastore/?output=stats", timeout=60).read())
            assert stats["total"] == 2  # MONAI Label's filter is Modality=CT: the CT series and the localizer
            got = app.infer(ct_uid, url=url, out=str(tmp_path / "ct_monailabel.nrrd"))
            with pytest.raises(urllib.error.HTTPError, match="500"):
                app.infer(loc, url=url, out=str(tmp_path / "localizer.nrrd"))  # refused by the bundle's checks
            answer = app.save(ct_uid, got, url=url)  # coded: the workaround
            assert answer["image"] == ct_uid
            # the training list reads every SEG on the PACS back (pydicom_seg: pydicom-seg-rb through the shim)
            train = json.loads(urllib.request.urlopen(url + "/datastore/?output=train", timeout=300).read())
            assert [item["image"].endswith(ct_uid + ".nii.gz") for item in train] == [True]
            assert app.compare(train[0]["label"], got)["exact"]
            # what 3D Slicer sends: every segment's name in its order (here all eight organs), no codes; the
            # label map lacks right_kidney (2), so the names shift onto the wrong organs
            import SimpleITK as sitk

            img = sitk.ReadImage(got)
            arr = sitk.GetArrayFromImage(img)
            arr[arr == 2] = 0
            edited = sitk.GetImageFromArray(arr)
            edited.CopyInformation(img)
            slicer_path = str(tmp_path / "ct_slicer.nrrd")
            sitk.WriteImage(edited, slicer_path)
            info = [{"name": name, "idx": i} for i, name in enumerate(ORGANS, start=1)]
            with open(slicer_path, "rb") as f:
                resp = requests.put(url + "/datastore/label", params={"image": ct_uid, "tag": "final"},
                                    data={"params": json.dumps({"label_info": info})}, files={"label": ("x.nrrd", f)},
                                    timeout=300)  # fmt: skip
            assert resp.status_code == 200, resp.text
            time.sleep(1.5)  # the listing cache (1 s here)
            stats = json.loads(urllib.request.urlopen(url + "/datastore/?output=stats", timeout=60).read())
        except Exception:
            log.flush()
            print(open(tmp_path / "server.log").read()[-6000:])
            raise
        finally:
            _stop(proc, log)
        server_log = (tmp_path / "server.log").read_text()
        assert "the in-plane size must be" in server_log  # the localizer's refusal
        assert "(monailabel.datastore.utils.convert:211) - Result/Output File:" in server_log  # the SEG read back
        assert stats["completed"] == 2  # one count per SEG, not per image
        segs = _segments(web, study_uid)
    assert len(segs) == 2  # every final save is a new SEG series

    # the reference: run inference on the study folder (local files) with the same network
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
           f"['configs/inference.yaml','{net_yaml}']", "--input", study, "--output_dir", str(tmp_path / "ref"),
           "--ckpt_path", str(tmp_path / "model.pt"), "--num_workers", "0", "--show_progress", "False"]  # fmt: skip
    pyenv = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    done = subprocess.run(cmd, cwd=ROOT, env=pyenv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ref = str(tmp_path / "ref" / "CT_seg.nii.gz")
    result = app.compare(got, ref)
    assert result["shape"] == [512, 512, 20] and result["affine_max_abs_diff"] < 1e-3
    assert result["exact"], result  # /infer = run inference, voxel for voxel
    mask = nib.load(ref)
    data = np.asarray(mask.dataobj)
    assert set(np.unique(data)) == {0, 1, 2, 3, 4}  # QuadrantNet: orientation-sensitive classes

    assert all(s.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_uid for s in segs)
    coded = [s for s in segs if len(s.SegmentSequence) == 4]
    stock = [s for s in segs if len(s.SegmentSequence) == 3]
    assert len(coded) == 1 and len(stock) == 1
    # save (coded): each organ's SNOMED code (kidneys with laterality) and exactly the /infer mask's voxels
    painted = _seg_labels(coded[0], study, mask.affine, data.shape)
    for d in coded[0].SegmentSequence:
        name = d.SegmentDescription
        code, _, side = SNOMED[name]
        prop = d.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodeValue, prop.CodingSchemeDesignator) == (code, "SCT")
        if side:
            assert prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == side[0]
        np.testing.assert_array_equal(painted[d.SegmentLabel], data == ORGANS.index(name) + 1)
    # the stock request: every segment coded 78961009 (Spleen) whatever its name, and names by position
    painted = _seg_labels(stock[0], study, mask.affine, data.shape)
    codes = {d.SegmentedPropertyTypeCodeSequence[0].CodeValue for d in stock[0].SegmentSequence}
    assert codes == {"78961009"}
    assert [d.SegmentLabel for d in stock[0].SegmentSequence] == ["spleen", "right_kidney", "left_kidney"]
    np.testing.assert_array_equal(painted["right_kidney"], data == 3)  # left kidney's voxels, named right_kidney
