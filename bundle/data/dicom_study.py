"""Hospital-style DICOM exports made from a real CT series, for the tests and the measurements of the clinical path.

The demo's DICOM series (TotalSegmentator's ``example_ct_dicom``: 20 JPEG 2000 slices, 512², 0.98 mm, 2 mm apart)
comes anonymised down to empty Study/Series/SOP Instance UIDs. A PACS export has them, and it arrives as a study:
with a localizer, sometimes a slice short, a duplicated instance, a tilted gantry, a longer range. The writers
here copy the real instances (pixel data untouched, still compressed) and change only what each case needs:

* :func:`export_series`: the series with UIDs (SOP Instance/Class from the file meta, Study/Series generated
  deterministically from the source), optionally renumbered, shifted, thinned or lengthened by repetition;
* :func:`write_localizer`: a 3-image LOCALIZER series (coronal, sagittal, axial; 256², 1.95 mm pixels) of the
  same patient, as scanners put in front of a CT series;
* :func:`write_study`: both in one study folder, the way a hospital export lays them out.
"""

from __future__ import annotations

import copy
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def read_instances(folder: str) -> List["pydicom.Dataset"]:  # noqa: F821
    """Every DICOM file of ``folder`` (full datasets), sorted along the slice normal."""
    import pydicom

    datasets = [pydicom.dcmread(os.path.join(folder, n)) for n in sorted(os.listdir(folder))]
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    return sorted(datasets, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal))


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def export_series(
    source: str,
    dest: str,
    study_uid: Optional[str] = None,
    series_uid: Optional[str] = None,
    series_number: int = 2,
    description: Optional[str] = None,
    drop: Sequence[int] = (),
    repeat: int = 1,
    tilt_degrees: float = 0.0,
    shift_after: Optional[Dict[int, float]] = None,
    duplicate: Sequence[int] = (),
    image_type: Optional[Sequence[str]] = None,
) -> List[str]:
    """Writes the series of ``source`` to ``dest`` as a PACS would export it, with the changes asked for.

    Args:
        source: folder of the source series.
        dest: output folder (created); files ``IM0001.dcm`` … in slice order.
        study_uid / series_uid: the UIDs to write (default: derived from the source's FrameOfReferenceUID).
        series_number / description: SeriesNumber and SeriesDescription (default: the source's description).
        drop: slice indices (in the sorted source, after ``repeat``) to leave out, as after a failed transfer.
        repeat: the slices ``repeat`` times over, each copy continuing the series upwards (a longer range of
            real slices for timing; the anatomy repeats).
        tilt_degrees: gantry tilt: each slice shifted along the image columns by step × tan(angle).
        shift_after: ``{index: mm}``: slices from ``index`` on moved that far along the normal (uneven spacing).
        duplicate: slice indices written twice, the copy with a new SOPInstanceUID (a second acquisition).
        image_type: ImageType to write (default: the source's).

    Returns:
        The written paths.
    """
    instances = read_instances(source)
    frame = str(instances[0].get("FrameOfReferenceUID", "demo"))
    study_uid = study_uid or _uid("study", frame)
    series_uid = series_uid or _uid("series", frame, series_number, description or "", repeat, tuple(drop))
    orientation = np.asarray(instances[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [np.asarray(ds.ImagePositionPatient, dtype=float) for ds in instances]
    step = positions[1] - positions[0]
    span = positions[-1] - positions[0] + step
    shift_after = shift_after or {}
    os.makedirs(dest, exist_ok=True)
    paths, k_out = [], 0
    for k in range(len(instances) * repeat):
        if k in set(drop):
            continue
        ds = copy.deepcopy(instances[k % len(instances)])
        position = positions[k % len(instances)] + (k // len(instances)) * span
        position = position + sum(mm for start, mm in shift_after.items() if k >= start) * normal
        position = position + k * float(step @ normal) * np.tan(np.radians(tilt_degrees)) * orientation[3:]
        copies = 2 if k in set(duplicate) else 1
        for c in range(copies):
            k_out += 1
            item = ds if c == 0 else copy.deepcopy(ds)
            sop = _uid("sop", series_uid, k, c) if (repeat > 1 or c or tilt_degrees) else None
            sop = sop or str(item.file_meta.MediaStorageSOPInstanceUID) or _uid("sop", series_uid, k)
            item.SOPClassUID = item.file_meta.MediaStorageSOPClassUID or CT_IMAGE_STORAGE
            item.SOPInstanceUID = sop
            item.file_meta.MediaStorageSOPInstanceUID = sop
            item.StudyInstanceUID = study_uid
            item.SeriesInstanceUID = series_uid
            item.SeriesNumber = series_number
            item.InstanceNumber = k_out
            item.ImagePositionPatient = [round(float(v), 4) for v in position]
            if description is not None:
                item.SeriesDescription = description
            if image_type is not None:
                item.ImageType = list(image_type)
            if tilt_degrees:
                item.GantryDetectorTilt = tilt_degrees
            path = os.path.join(dest, f"IM{k_out:04d}.dcm")
            item.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def write_localizer(source: str, dest: str, study_uid: str, series_number: int = 1) -> List[str]:
    """A 3-image LOCALIZER series of the patient of ``source`` (coronal, sagittal, axial projections, 256²)."""
    import pydicom
    import SimpleITK as sitk
    from pydicom.uid import ExplicitVRLittleEndian

    instances = read_instances(source)
    volume = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(ds.filename))[0] for ds in instances])  # (z, y, x)
    projections = {
        "coronal": (volume.mean(axis=1)[::-1], [1, 0, 0, 0, 0, -1]),
        "sagittal": (volume.mean(axis=2)[::-1], [0, 1, 0, 0, 0, -1]),
        "axial": (volume[len(volume) // 2], [1, 0, 0, 0, 1, 0]),
    }
    series_uid = _uid("localizer", study_uid)
    first = instances[0]
    os.makedirs(dest, exist_ok=True)
    paths = []
    for n, (name, (picture, orientation)) in enumerate(projections.items(), start=1):
        ys = np.linspace(0, picture.shape[0] - 1, 256).astype(int)
        xs = np.linspace(0, picture.shape[1] - 1, 256).astype(int)
        pixels = (picture[np.ix_(ys, xs)] + 1024).clip(0, 4095).astype(np.uint16)
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPInstanceUID = _uid("localizer", study_uid, n)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = first.FrameOfReferenceUID
        ds.Modality, ds.Manufacturer = "CT", str(first.get("Manufacturer", ""))
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = series_number, n, f"Topogram {name}"
        ds.StudyDate = str(first.get("StudyDate", ""))
        ds.ImageOrientationPatient = orientation
        ds.ImagePositionPatient = [float(v) for v in first.ImagePositionPatient]
        ds.PixelSpacing = [1.953125, 1.953125]
        ds.Rows = ds.Columns = 256
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = pixels.tobytes()
        path = os.path.join(dest, f"LOC{n:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_study(source: str, dest: str, localizer: bool = True, flat: bool = False, **series_kwargs) -> str:
    """A study folder: the series of ``source`` with UIDs (``CT/`` or, ``flat``, beside the localizer), and a
    3-image localizer series (``LOCALIZER/``) with its own SeriesInstanceUID. ``series_kwargs`` go to
    :func:`export_series`. Returns ``dest``."""
    instances = read_instances(source)
    study_uid = series_kwargs.pop("study_uid", None) or _uid("study", str(instances[0].get("FrameOfReferenceUID")))
    export_series(source, dest if flat else os.path.join(dest, "CT"), study_uid=study_uid, **series_kwargs)
    if localizer:
        write_localizer(source, dest if flat else os.path.join(dest, "LOCALIZER"), study_uid)
    return dest
