"""A MONAI ``ImageReader`` for one DICOM CT series, named by a case reference of :mod:`bundle.io.dicom_series`.

Each slice lands where it was scanned: the voxel grid is built from ImagePositionPatient along the slice normal
(:func:`bundle.io.dicom_series.slice_geometry`), not from the first two slices or instance numbers. Pixels are
decoded per file by SimpleITK (GDCM: uncompressed, JPEG, JPEG-LS, JPEG 2000, RLE) with each file's own rescale
slope/intercept, so the values are the Hounsfield units MONAI's ``ITKReader`` gave for a clean series, on the same
(i, j, k) grid and RAS affine (tested on the demo series).

What an output can hold decides what is read (``output_type``):

* a complete evenly spaced series: every output;
* missing slices (gaps that are whole multiples of the step): every output; the grid keeps the scanned step and
  the missing slices are filled with the series' minimum (air after the HU window), left empty in the NIfTI mask and
  absent from the DICOM SEG; a warning names the gap;
* irregular spacing or gantry tilt: no single affine places the slices, so a NIfTI mask (``nifti``/``both``) is
  refused with the defect; a DICOM SEG alone (``dicom_seg``) is exact (one frame per source slice, each slice
  segmented in its own plane);
* a DICOM SEG needs the source's Study/Series Instance UIDs (an export that emptied them is refused for SEG output:
  the SEG could not reference its source); SOP Instance/Class UIDs emptied in the dataset are taken from the
  file meta, which carries the same values.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Dict, Tuple

import numpy as np
from monai.data import ImageReader
from monai.data.utils import affine_to_spacing
from monai.utils import ensure_tuple

from bundle.errors import InputError, check_choice
from bundle.io.dicom_series import Series, is_dicom_ref, resolve_ref

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("nifti", "dicom_seg", "both")
DICOM_META = "dicom"  # meta key: JSON of the series (reference, UIDs, files per grid slice) for the SEG writer
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def check_output_type(output_type: str) -> str:
    """``output_type`` if it is one of :data:`OUTPUT_TYPES`.

    Raises:
        InputError: another value (the option is set on the command line).
    """
    return check_choice("output_type", output_type, OUTPUT_TYPES)


def wants_nifti(output_type: str) -> bool:
    return check_output_type(output_type) in ("nifti", "both")


def wants_seg(output_type: str) -> bool:
    return check_output_type(output_type) in ("dicom_seg", "both")


class DicomSeriesReader(ImageReader):
    """Reads the CT series a case reference names (a folder holding one, or ``<folder>#<tag>``).

    Args:
        output_type: ``nifti``, ``dicom_seg`` or ``both``: which series geometries and headers are accepted (module
            docstring).
    """

    def __init__(self, output_type: str = "nifti") -> None:
        super().__init__()
        self.output_type = check_output_type(output_type)

    def verify_suffix(self, filename) -> bool:
        names = ensure_tuple(filename)
        return len(names) == 1 and is_dicom_ref(names[0])

    def read(self, data, **kwargs) -> Series:
        """The checked :class:`~bundle.io.dicom_series.Series` of one reference.

        Raises:
            InputError: as :func:`~bundle.io.dicom_series.resolve_ref`; duplicated positions; a geometry or header
                the requested outputs cannot hold.
        """
        (ref,) = ensure_tuple(data)
        series = resolve_ref(str(ref))
        geometry = series.geometry
        if series.error:
            raise InputError(series.error)
        if wants_nifti(self.output_type) and not geometry.exact_on_grid:
            raise InputError(
                f"{geometry.defect}: a NIfTI mask cannot place these slices where they were scanned; segment with "
                "--output_type dicom_seg (one frame per source slice, exact), or resample the series to even spacing "
                "first (dcm2niix writes an evenly spaced _Eq / tilt-corrected _Tilt copy)."
            )
        if wants_seg(self.output_type) and not (series.study_uid and series.uid and all(series.sop_uids)):
            raise InputError(
                f"{series.label} has no StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID (an anonymised export "
                "emptied them): a DICOM SEG must reference its source study, series and images by UID; use "
                "--output_type nifti, or export the series again with its UIDs kept (or replaced consistently)."
            )
        if geometry.kind == "missing":
            logger.warning(
                f"{geometry.defect}: every scanned slice is segmented where it lies; the NIfTI mask leaves the missing "
                "slices empty, a DICOM SEG has frames for the scanned slices only."
            )
        return series

    def get_data(self, img: Series) -> Tuple[np.ndarray, Dict[str, Any]]:
        """(columns, rows, grid slices) float32 HU and MONAI meta (RAS affine, as ``ITKReader``), plus
        :data:`DICOM_META`."""
        series, geometry = img, img.geometry
        files = [""] * geometry.n_grid  # the source instance of each grid slice ('' where a slice is missing)
        for path, k in zip(series.files, geometry.grid_index):
            files[int(k)] = path
        volume = np.empty((series.columns, series.rows, geometry.n_grid), dtype=np.float32)
        for k, path in enumerate(files):
            if path:
                volume[:, :, k] = _read_pixels(path, series).T
        if geometry.missing:  # air after the HU window: nothing to segment where nothing was scanned
            volume[:, :, geometry.missing] = volume[:, :, geometry.grid_index].min()
        row, col = np.asarray(series.orientation[:3]), np.asarray(series.orientation[3:])
        lps = np.eye(4)
        lps[:3, 0] = row * series.pixel_spacing[1]  # i walks along a row: column spacing
        lps[:3, 1] = col * series.pixel_spacing[0]  # j walks down a column: row spacing
        lps[:3, 2] = geometry.step
        lps[:3, 3] = series.positions[0]
        affine = _LPS_TO_RAS @ lps
        record = {
            "tag": series.tag,
            "series_uid": series.uid,
            "study_uid": series.study_uid,
            "geometry": geometry.kind,
            "defect": geometry.defect,
            "slice_spacing": float(abs(geometry.step @ series.normal)) if geometry.exact_on_grid else None,
            "files": files,
        }
        meta = {
            "spacing": affine_to_spacing(affine, r=3),
            "original_affine": affine,
            "affine": affine.copy(),
            "space": "RAS",
            "spatial_shape": np.asarray(volume.shape),
            "original_channel_dim": float("nan"),
            DICOM_META: json.dumps(record),
        }
        return volume, meta


def _read_pixels(path: str, series: Series) -> np.ndarray:
    """(rows, columns) rescaled values of one single-frame instance, decoded by SimpleITK/GDCM."""
    import SimpleITK as sitk

    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(path))
    except RuntimeError as err:
        syntax = _transfer_syntax(path)
        raise InputError(
            f"{path} ({series.label}) cannot be decoded ({syntax}; {str(err).strip().splitlines()[-1][:160]}): "
            "the file is truncated or its compression is not supported by GDCM; re-export the series uncompressed "
            "(or convert it with `gdcmconv --raw` from Debian's libgdcm-tools, or dcmtk's `dcmdjpeg`)."
        ) from None
    array = np.asarray(array, dtype=np.float32).reshape(-1, *array.shape[-2:])
    if array.shape != (1, series.rows, series.columns):
        raise InputError(
            f"{path} ({series.label}) holds pixels of shape {array.shape[1:]} (×{array.shape[0]}) where its header "
            f"says {series.rows}×{series.columns}: the file is damaged; re-export the series."
        )
    return array[0]


def _transfer_syntax(path: str) -> str:
    import pydicom

    try:
        uid = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        return f"transfer syntax {uid.name} ({uid})"
    except Exception:
        return "transfer syntax unknown"


def dicom_record(meta: Dict[str, Any]) -> Dict[str, Any]:
    """The :data:`DICOM_META` record of a MONAI meta dict (``{}`` for a non-DICOM input)."""
    value = meta.get(DICOM_META) if isinstance(meta, dict) else None
    if isinstance(value, (list, tuple)):  # a collated batch of one
        value = value[0]
    return json.loads(value) if value else {}


def source_files(meta: Dict[str, Any]) -> list:
    """Source instance path per grid slice ('' where a slice is missing) of a DICOM input's meta."""
    return dicom_record(meta).get("files", [])


__all__ = ["DicomSeriesReader", "check_output_type", "wants_nifti", "wants_seg", "dicom_record", "source_files"]
