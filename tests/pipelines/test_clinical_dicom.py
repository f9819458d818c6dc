"""The clinical path end to end through ``monai.bundle run inference``, on the demo's real DICOM series arranged as
hospitals export it: study folders in, NIfTI and DICOM SEG out, and the SEG read back by highdicom, by dcmqi (an
independent reader) and checked by dciodvfy. The network is a stand-in (``conftest.QuadrantNet``: bright tissue
labelled by quadrant, so spleen and both kidneys appear) — what is tested is where every voxel lands."""

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import yaml
from conftest import QUADRANT_NET, ROOT, QuadrantNet

from bundle.data.dicom_study import export_series, write_study

TESTS = os.path.join(ROOT, "tests")
DCMQI = shutil.which("segimage2itkimage") or shutil.which("segimage2itkimage", path=os.path.dirname(sys.executable))
DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def quadrant_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("quadrant")
    torch.save(QuadrantNet().state_dict(), root / "model.pt")
    (root / "net.yaml").write_text(yaml.safe_dump({"network_def": dict(QUADRANT_NET)}))
    return root


def _infer(ckpt_root, inputs, out, *extra):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
           f"['configs/inference.yaml','{ckpt_root / 'net.yaml'}']", "--input", str(inputs), "--output_dir", str(out),
           "--ckpt_path", str(ckpt_root / "model.pt"), "--num_workers", "0", "--show_progress", "False", *extra]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, TESTS]))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def study_run(demo_dicom_series, quadrant_ckpt, tmp_path_factory):
    """A study export (the CT with UIDs, a 3-image localizer, a second CT series missing one slice) segmented with
    --output_type both."""
    root = tmp_path_factory.mktemp("study_run")
    study = write_study(demo_dicom_series, str(root / "study"), series_number=2, description="CT Body 3.0")
    export_series(demo_dicom_series, str(root / "study" / "CT_gap"), series_number=5, description="gap",
                  drop=[7])  # fmt: skip
    out = root / "out"
    proc = _infer(quadrant_ckpt, study, out, "--output_type", "both")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = {"CT": os.path.join(study, "CT"), "CT_gap": os.path.join(study, "CT_gap")}
    return study, out, cases


def test_study_folder_to_nifti_and_seg(study_run, quadrant_ckpt):
    """The localizer skipped and recorded; each CT series gets a NIfTI mask and a DICOM SEG whose labels equal the
    NIfTI voxel for voxel in the patient (highdicom's reading, frame by source instance); the missing slice is
    empty; a rerun with --overwrite stores the same SOP Instance UID (same model, same mask)."""
    study, out, cases = study_run
    record = json.loads((out / "dicom_series.json").read_text())
    assert sorted(r["tag"] for r in record if r["segmented"]) == ["s2_CT_Body_3.0", "s5_gap"]
    assert all("localizer" in r["skipped_because"] for r in record if not r["segmented"])
    for name, src in cases.items():
        nifti = nib.load(out / f"{name}_seg.nii.gz")
        assert set(np.unique(np.asarray(nifti.dataobj))) >= {1, 2, 3}  # spleen and both kidneys (the quadrants)
        _check_seg_equals_nifti(str(out / f"{name}_seg.dcm"), src, nifti)
    gap = np.asarray(nib.load(out / "CT_gap_seg.nii.gz").dataobj)
    assert not gap[:, :, 7].any()  # the missing slice: nothing scanned, nothing labelled
    first = pydicom.dcmread(out / "CT_seg.dcm", stop_before_pixels=True)
    algorithm = first.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    params = {item.split("=")[0]: item for item in str(algorithm.AlgorithmParameters).split(",")}
    assert algorithm.AlgorithmName == "MSA2Net" and "model.pt" in str(algorithm.AlgorithmParameters)
    assert len(params) == 2  # the checkpoint's name and SHA-256
    mtime = os.path.getmtime(out / "CT_seg.dcm")
    proc = _infer(quadrant_ckpt, cases["CT"], out, "--output_type", "both", "--overwrite", "True")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = pydicom.dcmread(out / "CT_seg.dcm", stop_before_pixels=True)
    assert os.path.getmtime(out / "CT_seg.dcm") > mtime
    assert again.SOPInstanceUID == first.SOPInstanceUID and again.SeriesInstanceUID == first.SeriesInstanceUID
    assert [d.TrackingUID for d in again.SegmentSequence] == [d.TrackingUID for d in first.SegmentSequence]


@pytest.mark.skipif(DCMQI is None, reason="dcmqi's segimage2itkimage is not installed (pip install dcmqi)")
def test_seg_read_by_dcmqi_equals_nifti(study_run, tmp_path):
    """An independent reader: dcmqi's segimage2itkimage turns each SEG into a label image whose labels equal the
    NIfTI mask voxel for voxel in world coordinates (the missing slice included)."""
    _, out, cases = study_run
    for name in cases:
        _check_dcmqi_equals_nifti(str(out / f"{name}_seg.dcm"), nib.load(out / f"{name}_seg.nii.gz"), tmp_path / name)


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy is not installed (Debian package dicom3tools)")
def test_seg_passes_dciodvfy(study_run):
    _, out, cases = study_run
    for name in cases:
        report = subprocess.run([DCIODVFY, str(out / f"{name}_seg.dcm")], capture_output=True, text=True).stderr
        assert "Segmentation" in report and not [ln for ln in report.splitlines() if ln.startswith("Error")], report


def _check_seg_equals_nifti(seg_path, series_folder, nifti):
    import highdicom as hd

    from bundle.data.synapse import ORGANS

    seg = hd.seg.segread(seg_path)
    ids = {d.SegmentNumber: ORGANS.index(d.SegmentLabel.replace(" ", "_")) + 1 for d in seg.SegmentSequence}
    kidneys = [d for d in seg.SegmentSequence if d.SegmentLabel.endswith("kidney")]
    assert {d.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning
            for d in kidneys} == {"Left", "Right"}  # fmt: skip
    assert seg.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    sources = [pydicom.dcmread(os.path.join(series_folder, f), stop_before_pixels=True)
               for f in sorted(os.listdir(series_folder))]  # fmt: skip
    assert {s.StudyInstanceUID for s in sources} == {seg.StudyInstanceUID}
    mask = np.asarray(nifti.dataobj)
    inv = np.linalg.inv(nifti.affine)
    lut = np.zeros(max(ids) + 1, np.uint8)
    lut[list(ids)] = list(ids.values())
    for src in sources:
        frame = seg.get_pixels_by_source_instance([src.SOPInstanceUID], combine_segments=True, relabel=False)[0]
        # the NIfTI slice at this instance's position (LPS → RAS, then the mask's voxel index)
        lps = np.asarray(src.ImagePositionPatient, dtype=float)
        k = int(round((inv @ np.array([-lps[0], -lps[1], lps[2], 1.0]))[2]))
        np.testing.assert_array_equal(lut[frame].T, mask[:, :, k])


def _check_dcmqi_equals_nifti(seg_path, nifti, dest):
    dest.mkdir()
    subprocess.run([DCMQI, "--inputDICOM", seg_path, "--outputDirectory", str(dest), "-t", "nifti",
                    "--mergeSegments"], check=True, capture_output=True)  # fmt: skip
    meta = json.load(open(dest / "meta.json"))
    from bundle.data.synapse import ORGANS

    names = {a["labelID"]: ORGANS.index(a["SegmentLabel"].replace(" ", "_")) + 1 for a in meta["segmentAttributes"][0]}
    theirs = nib.load(dest / "1.nii.gz")
    data = np.asarray(theirs.dataobj)
    ijk = np.argwhere(data > 0)
    ours = np.rint(nib.affines.apply_affine(np.linalg.inv(nifti.affine), nib.affines.apply_affine(theirs.affine, ijk)))
    mask = np.asarray(nifti.dataobj)
    lut = np.zeros(max(names) + 1, np.uint8)
    lut[list(names)] = list(names.values())
    assert len(ijk) == int((mask > 0).sum())
    np.testing.assert_array_equal(lut[data[tuple(ijk.T)]], mask[tuple(ours.astype(int).T)])


def test_uneven_series_seg_only_and_refusals(demo_dicom_series, quadrant_ckpt, tmp_path):
    """Uneven spacing: --output_type nifti fails the case with the defect and the fix (exit 1, nothing written);
    dicom_seg writes a SEG whose frames reference their own source slices. A NIfTI input with dicom_seg, and the
    anonymised demo series with dicom_seg, are refused with one line before anything runs."""
    uneven = tmp_path / "uneven"
    export_series(demo_dicom_series, str(uneven), shift_after={10: 0.7})
    proc = _infer(quadrant_ckpt, uneven, tmp_path / "o1")
    assert proc.returncode == 1 and "slice spacing varies: gap of 2.70 mm" in proc.stderr
    assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "o1" / "uneven_seg.nii.gz")
    proc = _infer(quadrant_ckpt, uneven, tmp_path / "o2", "--output_type", "dicom_seg")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import highdicom as hd

    seg = hd.seg.segread(str(tmp_path / "o2" / "uneven_seg.dcm"))
    positions = {}
    for f in sorted(os.listdir(uneven)):
        ds = pydicom.dcmread(uneven / f, stop_before_pixels=True)
        positions[ds.SOPInstanceUID] = [float(v) for v in ds.ImagePositionPatient]
    for i in range(1, seg.NumberOfFrames + 1):
        item = seg.PerFrameFunctionalGroupsSequence[i - 1]
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        frame_pos = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(frame_pos, positions[uid], atol=1e-3)  # each frame where its source slice was scanned
    proc = _infer(quadrant_ckpt, demo_dicom_series, tmp_path / "o3", "--output_type", "dicom_seg")
    assert proc.returncode == 1 and "has no StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID" in proc.stderr
    assert not os.path.exists(tmp_path / "o3" / "example_ct_dicom_seg.dcm")
