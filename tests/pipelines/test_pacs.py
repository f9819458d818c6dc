"""A real PACS round trip: the demo's real DICOM series (with a localizer, as a hospital study) in a real Orthanc,
``run inference --dicomweb_url`` retrieves it over WADO-RS, segments the CT series only, stores the DICOM SEG with
STOW-RS, and QIDO/WADO find it again referencing the CT series, with the labels of the local-file run. Reruns store
no duplicate; a bad URL, study, series or a rejected store end in one line."""

import glob
import json
import os
import subprocess
import sys

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import yaml
from conftest import QUADRANT_NET, ROOT, QuadrantNet

from bundle.data.dicom_study import write_study
from bundle.errors import InputError

TESTS = os.path.join(ROOT, "tests")


@pytest.fixture(scope="module")
def quadrant(tmp_path_factory):
    root = tmp_path_factory.mktemp("quadrant_pacs")
    torch.save(QuadrantNet().state_dict(), root / "model.pt")
    (root / "net.yaml").write_text(yaml.safe_dump({"network_def": dict(QUADRANT_NET)}))
    return root


def _infer(quadrant, out, *args):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
           f"['configs/inference.yaml','{quadrant / 'net.yaml'}']", "--output_dir", str(out),
           "--ckpt_path", str(quadrant / "model.pt"), "--num_workers", "0", "--show_progress", "False", *args]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def study_on_pacs(demo_dicom_series, orthanc, tmp_path_factory):
    root = tmp_path_factory.mktemp("pacs_study")
    study = write_study(demo_dicom_series, str(root / "study"), series_number=2, description="CT Body 3.0")
    files = sorted(glob.glob(os.path.join(study, "**", "*.dcm"), recursive=True))
    assert orthanc.upload(files) == 23  # 20 CT slices + 3 localizer images
    ct = pydicom.dcmread(os.path.join(study, "CT", "IM0001.dcm"), stop_before_pixels=True)
    return study, str(ct.StudyInstanceUID), str(ct.SeriesInstanceUID)


def test_pacs_round_trip(study_on_pacs, orthanc, quadrant, tmp_path):
    from dicomweb_client.api import DICOMwebClient

    study, study_uid, ct_uid = study_on_pacs
    local = _infer(quadrant, tmp_path / "local", "--input", study)
    assert local.returncode == 0, local.stderr[-2000:]
    proc = _infer(quadrant, tmp_path / "pacs", "--dicomweb_url", orthanc.dicomweb, "--study_uid", study_uid,
                  "--output_type", "dicom_seg")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "stored SEG " in log and f"(referenced series {ct_uid})" in log
    web = DICOMwebClient(orthanc.dicomweb)
    segs = web.search_for_series(study_uid, search_filters={"Modality": "SEG"})
    assert len(segs) == 1
    seg_uid = segs[0]["0020000E"]["Value"][0]
    (seg_ds,) = web.retrieve_series(study_uid, seg_uid, media_types=(("application/dicom", "*"),))
    assert seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_uid
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    names = [d.SegmentLabel.replace(" ", "_") for d in seg.SegmentSequence]
    from bundle.data.synapse import ORGANS

    lut = np.zeros(len(names) + 1, np.uint8)
    lut[1:] = [ORGANS.index(n) + 1 for n in names]
    mask = nib.load(tmp_path / "local" / "CT_seg.nii.gz")
    data, inv = np.asarray(mask.dataobj), np.linalg.inv(mask.affine)
    for path in sorted(glob.glob(os.path.join(study, "CT", "*.dcm"))):
        src = pydicom.dcmread(path, stop_before_pixels=True)
        frame = seg.get_pixels_by_source_instance([src.SOPInstanceUID], combine_segments=True, relabel=False)[0]
        lps = np.asarray(src.ImagePositionPatient, dtype=float)
        k = int(round((inv @ np.array([-lps[0], -lps[1], lps[2], 1.0]))[2]))
        np.testing.assert_array_equal(lut[frame].T, data[:, :, k])  # the PACS copy = the local-file mask
    # rerun: the same SEG is found on the PACS and not stored again, with or without local outputs
    again = _infer(quadrant, tmp_path / "pacs2", "--dicomweb_url", orthanc.dicomweb, "--study_uid", study_uid,
                   "--output_type", "dicom_seg")  # fmt: skip
    assert again.returncode == 0 and "is already on" in again.stdout + again.stderr
    assert len(web.search_for_series(study_uid, search_filters={"Modality": "SEG"})) == 1
    assert len(web.search_for_instances(study_uid, seg_uid)) == 1


def test_pacs_errors_one_line(study_on_pacs, orthanc, quadrant, tmp_path):
    _, study_uid, _ = study_on_pacs
    cases = [
        (["--dicomweb_url", orthanc.dicomweb, "--study_uid", "1.2.3.4", "--output_type", "dicom_seg"],
         "study 1.2.3.4 is not on"),
        (["--dicomweb_url", "http://127.0.0.1:9/dicom-web", "--study_uid", study_uid, "--output_type", "dicom_seg"],
         "cannot be reached"),
        (["--dicomweb_url", orthanc.dicomweb, "--study_uid", study_uid, "--series_uid", "9.9", "--output_type",
          "dicom_seg"], "--series_uid 9.9 is not in study"),
        (["--dicomweb_url", orthanc.dicomweb, "--study_uid", study_uid], "add --output_type dicom_seg"),
    ]  # fmt: skip
    for args, message in cases:
        proc = _infer(quadrant, tmp_path / "out", *args)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr[-1500:])
        assert "Traceback" not in proc.stderr


def test_rejected_store_is_one_line_and_removes_the_local_seg(tmp_path, monkeypatch):
    """A STOW response listing the instance as failed (HTTP 200 from older Orthanc plugins) is an error, and the
    local SEG goes, so a rerun makes and stores it again."""
    from bundle.io import dicomweb

    path = tmp_path / "x_seg.dcm"
    ds = pydicom.Dataset()
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4.5", "1.2.3", "1.2.3.9"
    ref = pydicom.Dataset()
    ref.SeriesInstanceUID = "1.2.3.1"
    ds.ReferencedSeriesSequence = [ref]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    failed = pydicom.Dataset()
    item = pydicom.Dataset()
    item.FailureReason = 0xA700
    failed.FailedSOPSequence = [item]

    class FakeClient:
        def search_for_instances(self, *args, **kwargs):
            return []

        def store_instances(self, datasets):
            return failed

    monkeypatch.setattr(dicomweb, "client", lambda url: FakeClient())
    with pytest.raises(InputError, match=r"rejected the DICOM SEG .*x_seg\.dcm \(SOPInstanceUID 1\.2\.3\.4\.5, failure "
                                         r"reason 42752\)"):  # fmt: skip
        dicomweb.store_seg("http://pacs/dicom-web", str(path))
    assert not path.exists()


def test_concurrent_studies_nothing_lost_or_duplicated(demo_dicom_series, quadrant, tmp_path):
    """scripts/benchmarks/pacs_load.py, bounded for CI (4 studies at once, two rounds, its own Orthanc): every study
    gets exactly one SEG referencing its CT series, and the second round stores nothing new."""
    from bundle.data.orthanc import orthanc_missing

    if orthanc_missing():
        pytest.skip(orthanc_missing())
    cmd = [sys.executable, "scripts/benchmarks/pacs_load.py", "--out", str(tmp_path), "--ckpt",
           str(quadrant / "model.pt"), "--config_overlay", str(quadrant / "net.yaml"), "--series", demo_dicom_series,
           "--studies", "4", "--concurrency", "4", "--timeout", "600"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])["summary"]
    assert summary["studies"] == 4 and summary["failed_runs"] == 0 and summary["lost_or_duplicated"] == []
