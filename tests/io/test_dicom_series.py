"""DICOM studies as hospitals export them, on the demo's real series (JPEG 2000, 512², UIDs emptied): which series are
segmented (localizers, derived, non-CT skipped with a reason), where every slice lands (missing slices, uneven
spacing, gantry tilt, duplicates), and one line for each kind of bad DICOM."""

import json
import logging
import os
import shutil

import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import LoadImage

from bundle.data.dicom_study import export_series, write_study
from bundle.errors import InputError
from bundle.io.dicom_geometry import slice_geometry
from bundle.io.dicom_reader import DicomSeriesReader, dicom_record
from bundle.io.dicom_series import list_cases, resolve_ref, scan_dicom
from bundle.io.volume import list_volumes, output_path


def _read(ref, output_type="nifti"):
    return LoadImage(image_only=True)(ref, reader=DicomSeriesReader(output_type))


def test_reader_equals_itk_on_the_real_series(demo_dicom_series):
    """A clean series reads as MONAI's ITKReader read it: same HU voxels, same (i, j, k) grid, same RAS affine."""
    ours, itk = _read(demo_dicom_series), LoadImage(image_only=True, reader="ITKReader")(demo_dicom_series)
    assert ours.shape == itk.shape == (512, 512, 20)
    assert torch.equal(ours, itk.to(ours.dtype))
    assert np.allclose(np.asarray(ours.meta["affine"]), np.asarray(itk.meta["affine"]), atol=1e-4)
    record = dicom_record(ours.meta)
    assert record["geometry"] == "regular" and record["slice_spacing"] == pytest.approx(2.0)
    assert len(record["files"]) == 20 and all(record["files"])


def test_study_with_localizer_segments_the_ct_only(demo_dicom_series, tmp_path, caplog):
    """The issue's case: series + a 3-image localizer (another UID, 256², coronal/sagittal/axial) in one folder, flat
    or one folder per series: the CT is the one case, each localizer image is skipped with its reason, logged and
    recorded in dicom_series.json."""
    flat = write_study(demo_dicom_series, str(tmp_path / "flat"), flat=True)
    nested = write_study(demo_dicom_series, str(tmp_path / "nested"))
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    assert list_volumes(flat, output_dir=str(out)) == [{"image": flat}]  # the only CT volume: the folder names it
    record = json.loads((out / "dicom_series.json").read_text())
    assert [r["segmented"] for r in record].count(True) == 1
    skipped = [r for r in record if not r["segmented"]]
    assert len(skipped) == 3 and all("localizer" in r["skipped_because"] for r in skipped)
    assert sum("skipped: localizer" in m for m in caplog.messages) == 3
    assert list_volumes(nested) == [{"image": os.path.join(nested, "CT")}]
    assert output_path(os.path.join(nested, "CT"), "/o") == "/o/CT_seg.nii.gz"


def test_two_ct_series_in_one_folder_are_two_cases(demo_dicom_series, tmp_path):
    """Two reconstructions in one flat folder: each a case, named by series number and description; --series_uid
    picks one (by UID or tag); a series that does not exist is refused naming what does."""
    study = tmp_path / "study"
    export_series(demo_dicom_series, str(study), series_number=3, description="Abdomen 2.0 Br40")
    export_series(demo_dicom_series, str(study / "lung"), series_number=4, description="Lung 2.0 Bl57")
    for f in os.listdir(study / "lung"):  # flat: both series side by side (distinct file names)
        os.replace(study / "lung" / f, study / f"L{f}")
    os.rmdir(study / "lung")
    items = list_volumes(str(study), output_dir=str(tmp_path / "out"))
    refs = [i["image"] for i in items]
    assert refs == [f"{study}#s3_Abdomen_2.0_Br40", f"{study}#s4_Lung_2.0_Bl57"]
    assert [os.path.basename(output_path(r, "o")) for r in refs] == [
        "study_s3_Abdomen_2.0_Br40_seg.nii.gz",
        "study_s4_Lung_2.0_Bl57_seg.nii.gz",
    ]
    lung_uid = resolve_ref(refs[1]).uid
    assert [i["image"] for i in list_volumes(str(study), series_uid=lung_uid)] == [refs[1]]
    assert [i["image"] for i in list_volumes(str(study), series_uid="s3_Abdomen_2.0_Br40")] == [refs[0]]
    with pytest.raises(InputError, match=r"--series_uid 1\.2\.3 matches no CT series .*s3_Abdomen"):
        list_volumes(str(study), series_uid="1.2.3")
    with pytest.raises(InputError, match=r"holds 2 CT series: name one as <folder>#<tag>"):
        _read(str(study))  # a datalist naming the bare folder cannot mean both


def test_derived_skipped_beside_original_unless_picked(demo_dicom_series, tmp_path):
    study = tmp_path / "study"
    export_series(demo_dicom_series, str(study / "orig"), series_number=2)
    export_series(demo_dicom_series, str(study / "mpr"), series_number=502, description="MPR",
                  image_type=["DERIVED", "SECONDARY", "AXIAL"])  # fmt: skip
    cases, scan = list_cases(str(study))
    assert [s.number for _, s in cases] == [2]
    derived = next(s for s in scan.series if s.number == 502)
    assert derived.skip.startswith("DERIVED (DERIVED/SECONDARY/AXIAL) while an ORIGINAL CT series is present")
    cases, _ = list_cases(str(study), series_uid=derived.uid)
    assert [s.number for _, s in cases] == [502]


def test_missing_slice_every_slice_where_it_was_scanned(demo_dicom_series, tmp_path, caplog):
    """One slice lost in transfer: the grid keeps the 2 mm step, the 19 slices sit exactly where they were scanned
    (voxel for voxel the full series' slices), the hole is named in a warning and left empty in the NIfTI mask."""
    full = _read(demo_dicom_series)
    export_series(demo_dicom_series, str(tmp_path / "gap"), drop=[7])
    with caplog.at_level(logging.WARNING):
        gap = _read(str(tmp_path / "gap"))
    assert "1 slice missing (gap of 4.00 mm after z = -792.50 mm; 2.00 mm elsewhere)" in caplog.text
    assert gap.shape == full.shape
    assert np.allclose(np.asarray(gap.meta["affine"]), np.asarray(full.meta["affine"]), atol=1e-3)
    keep = [k for k in range(20) if k != 7]
    assert torch.equal(gap[..., keep], full[..., keep])
    files = dicom_record(gap.meta)["files"]
    assert files[7] == "" and all(files[k] for k in keep)
    assert float(gap[..., 7].max()) == float(full.min())  # air: nothing to segment there


def test_uneven_spacing_and_tilt_refused_for_nifti_exact_for_seg(demo_dicom_series, tmp_path):
    export_series(demo_dicom_series, str(tmp_path / "uneven"), shift_after={10: 0.7})
    export_series(demo_dicom_series, str(tmp_path / "tilt"), tilt_degrees=12.0)
    with pytest.raises(InputError, match=r"slice spacing varies: gap of 2\.70 mm after z = -786\.50 mm; 2\.00 mm "
                                         r"elsewhere: a NIfTI mask cannot place .*--output_type dicom_seg"):  # fmt: skip
        _read(str(tmp_path / "uneven"))
    with pytest.raises(InputError, match=r"gantry tilt of 12\.0° .*a NIfTI mask cannot place"):
        _read(str(tmp_path / "tilt"), "both")
    uneven = _read(str(tmp_path / "uneven"), "dicom_seg")  # each slice stays the one it was scanned as
    files = dicom_record(uneven.meta)["files"]
    positions = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    assert positions == sorted(positions) and len(set(positions)) == 20
    assert dicom_record(uneven.meta)["slice_spacing"] is None


def test_duplicates(demo_dicom_series, tmp_path):
    """Two instances at one position are refused with one line naming both; a second copy of the same instance (the
    same SOPInstanceUID) is ignored."""
    export_series(demo_dicom_series, str(tmp_path / "dup"), duplicate=[5])
    with pytest.raises(InputError, match=r"two instances at z = -794\.50 mm \(IM0006\.dcm, IM0007\.dcm\)"):
        _read(str(tmp_path / "dup"))
    export_series(demo_dicom_series, str(tmp_path / "copy"))
    shutil.copy(tmp_path / "copy" / "IM0003.dcm", tmp_path / "copy" / "IM0003 (1).dcm")
    assert _read(str(tmp_path / "copy")).shape == (512, 512, 20)


def test_slice_geometry_rules():
    z = np.array([0.0, 2.0, 4.0, 8.0, 10.0])
    pos = np.stack([np.zeros(5), np.zeros(5), z], 1)
    normal = np.array([0.0, 0.0, 1.0])
    g = slice_geometry(pos, normal)
    assert g.kind == "missing" and g.grid_index.tolist() == [0, 1, 2, 4, 5] and g.missing == [3]
    g = slice_geometry(pos[:3] + np.array([0, 0, 0.04]) * np.arange(3)[:, None], normal)  # 2 % off: still regular
    assert g.kind == "regular"
    pos[:, 1] = np.arange(5) * 0.5
    assert slice_geometry(pos[:3], normal).kind == "tilted"


def test_bad_dicom_one_line_each(demo_dicom_series, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty: give a CT volume or a folder holding a DICOM series"):
        _read(str(empty))
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"photo{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(
        InputError, match=r"junk is a folder of 3 2D pictures \(\.png, e\.g\. photo0\.png\), not a DICOM"
    ):
        _read(str(junk))
    (junk / "notes.txt").write_text("x")
    for i in range(3):
        os.remove(junk / f"photo{i}.png")
    with pytest.raises(InputError, match=r"holds 1 file\(s\) that are not DICOM \(\.txt\) and no CT volume"):
        _read(str(junk))
    # a truncated instance: its pixels cannot be decoded -> the series fails naming the file and the fix
    trunc = tmp_path / "trunc"
    export_series(demo_dicom_series, str(trunc))
    raw = (trunc / "IM0004.dcm").read_bytes()
    (trunc / "IM0004.dcm").write_bytes(raw[: len(raw) - 40000])
    with pytest.raises(InputError, match=r"IM0004\.dcm .*cannot be decoded \(transfer syntax JPEG 2000 Image "
                                         r"Compression \(Lossless Only\).*re-export the series"):  # fmt: skip
        _read(str(trunc))
    # a compression GDCM does not decode
    odd = tmp_path / "odd"
    export_series(demo_dicom_series, str(odd))
    ds = pydicom.dcmread(odd / "IM0002.dcm")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2 video
    ds.save_as(odd / "IM0002.dcm")
    with pytest.raises(InputError, match=r"IM0002\.dcm .*cannot be decoded \(transfer syntax MPEG2 Main Profile"):
        _read(str(odd))


def test_enhanced_localizer_only_and_non_ct(demo_dicom_series, tmp_path):
    """A folder with nothing to segment says what it holds instead, for inference and in the reader."""
    loc = write_study(demo_dicom_series, str(tmp_path / "loc"), flat=True)
    for f in os.listdir(loc):
        if f.startswith("IM"):
            os.remove(os.path.join(loc, f))
    with pytest.raises(InputError, match=r"holds no CT volume to segment .*localizer/scout"):
        list_volumes(loc)
    mr = tmp_path / "mr"
    export_series(demo_dicom_series, str(mr))
    for f in os.listdir(mr):
        ds = pydicom.dcmread(mr / f)
        ds.Modality = "MR"
        ds.save_as(mr / f)
    with pytest.raises(InputError, match=r"modality MR, not CT"):
        list_volumes(str(mr))
    enh = tmp_path / "enh"
    export_series(demo_dicom_series, str(enh))
    for f in os.listdir(enh):
        ds = pydicom.dcmread(enh / f)
        ds.NumberOfFrames = 2
        ds.save_as(enh / f)
    with pytest.raises(InputError, match=r"enhanced multi-frame CT .*not supported: export the series as classic"):
        list_volumes(str(enh))


def test_mixed_sizes_in_one_series_split(demo_dicom_series, tmp_path):
    """One SeriesInstanceUID holding 512² and 256² images: two groups, each judged on its own."""
    src = tmp_path / "mixed"
    export_series(demo_dicom_series, str(src))
    for f in ["IM0001.dcm", "IM0002.dcm"]:
        ds = pydicom.dcmread(src / f)
        ds.decompress()
        ds.PixelData = np.asarray(ds.pixel_array[::2, ::2]).tobytes()
        ds.Rows = ds.Columns = 256
        ds.save_as(src / f)
    scan = scan_dicom(str(src))
    sizes = sorted((s.rows, len(s.files), s.skip is None) for s in scan.series)
    assert sizes == [(256, 2, False), (512, 18, True)]


def test_anonymised_uids_nifti_yes_seg_no(demo_dicom_series):
    """The demo series itself (Study/Series/SOP Instance UIDs emptied): NIfTI output works; SEG output is refused
    with the reason, and before anything runs."""
    assert _read(demo_dicom_series).shape == (512, 512, 20)
    with pytest.raises(InputError, match=r"has no StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID .*--output_type "
                                         r"nifti"):  # fmt: skip
        _read(demo_dicom_series, "dicom_seg")


def test_seg_output_needs_dicom_input(ct_dataset):
    with pytest.raises(InputError, match=r"vol0\.nii\.gz is not a DICOM series: a DICOM SEG references"):
        list_volumes(str(ct_dataset / "images/vol0.nii.gz"), output_type="dicom_seg")
