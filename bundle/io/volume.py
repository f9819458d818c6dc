"""CT volumes in and out: load (NIfTI, NRRD, MHA, DICOM series) with a one-line error naming the file, list what a
folder holds, and write label maps on the input's exact grid.

* :class:`LoadVolumed` (unreadable / truncated files; DICOM through :mod:`bundle.io.dicom_reader`), inside
  :func:`bundle.transforms.ct.ct_volume_transforms` before the checks of :mod:`bundle.io.validation`;
* :class:`SaveLabelNiftid`: uint8 NIfTI with the input's affine and header, written atomically; refuses a
  prediction whose shape is not the stored one (configs invert the canonical orientation first);
* :func:`list_volumes` / :func:`output_path`: folders of volumes and the mask names derived from them.

Every failure is an :class:`~bundle.errors.InputError`; the catalogue of messages is ``docs/operations.md``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader
from monai.transforms import LoadImage, LoadImaged, MapTransform

from bundle.errors import InputError
from bundle.io.atomic import atomic_path, atomic_write_text
from bundle.io.datalist import list_inputs
from bundle.io.dicom_reader import DicomSeriesReader, dicom_record, wants_nifti, wants_seg
from bundle.io.dicom_series import is_dicom_ref, list_cases, no_volume_message, parse_ref

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- volumes
@contextlib.contextmanager
def quiet_default_readers():
    """MONAI registers its GPU DICOM decoder (nvImageCodec) with every ``LoadImage`` of default readers and, where
    it is missing (every CPU machine), logs and warns about it each time: three lines per run that say nothing."""
    log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            yield
    finally:
        log.setLevel(level)


def load_image(path: str, reader: Optional[ImageReader] = None) -> Any:
    """One image as MONAI's ``LoadImage(image_only=True)`` reads it (a ``MetaTensor``), for scripts: without the
    nvImageCodec lines (:func:`quiet_default_readers`).

    Args:
        path: an image file or a DICOM series folder.
        reader: the reader to use, whose errors are raised (given at call time: a reader given to ``LoadImage``
            itself falls back to the other readers when it fails); ``None``: MONAI's choice by file type.
    """
    with quiet_default_readers():
        loader = LoadImage(image_only=True)
    return loader(path, reader=reader)


class LoadImageOrSeries(LoadImage):
    """``LoadImage`` that reads a DICOM folder or series reference (``<folder>#<tag>``) with ``dicom_reader`` when no
    reader is forced, and every other file with MONAI's readers."""

    def __init__(self, dicom_reader: DicomSeriesReader, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dicom_reader = dicom_reader

    def __call__(self, filename, reader=None):
        if reader is None and self.auto_select and is_dicom_ref(filename):  # auto_select: no reader forced
            reader = self.dicom_reader
        return super().__call__(filename, reader)


class LoadVolumed(LoadImaged):
    """``LoadImaged`` whose read failures (missing, truncated, corrupt, unknown format) become :class:`InputError`.

    A DICOM folder or series reference (``<folder>#<tag>``) is read by
    :class:`~bundle.io.dicom_reader.DicomSeriesReader` (series rules and slice positions of
    :mod:`bundle.io.dicom_series`), other files by MONAI's readers (``reader``).

    Args:
        keys: image key, then an optional label key.
        reader: a MONAI reader forced for every file (``None``: MONAI's choice, and the DICOM reader for DICOM).
        output_type: what the run writes (``nifti``, ``dicom_seg``, ``both``): which DICOM series can be read.
        image_only: as ``LoadImaged`` (MONAI Label sets its loader's ``image_only`` to ``False``).
    """

    def __init__(self, keys: KeysCollection, reader=None, output_type: str = "nifti", image_only: bool = True) -> None:
        with quiet_default_readers():
            super().__init__(keys, reader=reader, image_only=image_only)
            self._loader = LoadImageOrSeries(DicomSeriesReader(output_type), reader=reader, image_only=image_only)

    def __call__(self, data, reader=None):
        try:
            return super().__call__(data, reader)
        except InputError:
            raise
        except Exception as err:
            key, path, cause = self.keys[0], data.get(self.keys[0], "?"), err
            for k in self.key_iterator(dict(data)):  # name the file that fails, not the first key
                if isinstance(data[k], str) and not os.path.exists(data[k]) and not is_dicom_ref(data[k]):
                    key, path, cause = k, data[k], None
                    break
                try:
                    self._loader(data[k], reader)
                except Exception as one:
                    key, path, cause = k, data[k], one
                    break
            if cause is None:
                raise InputError(f"{key} {path} does not exist: fix the path in the datalist or --input.") from None
            raise InputError(
                f"{key} {path} cannot be read ({type(cause).__name__}: {_root_message(cause)}): the file is truncated, "
                "corrupt or not an image; re-export or re-copy it."
            ) from err


def _root_message(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def output_path(image_path: str, output_dir: str, postfix: str = "seg", ext: str = ".nii.gz") -> str:
    """``<output_dir>/<name>_<postfix><ext>`` for a volume file, a DICOM series folder, or a series reference
    ``<folder>#<tag>`` (``<folder name>_<tag>``)."""
    folder, tag = parse_ref(str(image_path))
    base = os.path.basename(os.path.normpath(folder))
    for suffix in _VOLUME_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return os.path.join(output_dir, f"{base}_{tag}_{postfix}{ext}" if tag else f"{base}_{postfix}{ext}")


def _reference_header(image_path: str) -> Optional[nib.Nifti1Header]:
    if str(image_path).lower().endswith((".nii", ".nii.gz")):
        return nib.load(str(image_path)).header.copy()
    return None


class SaveLabelNiftid(MapTransform):
    """Writes ``key`` (1, H, W, D) as a uint8 NIfTI with the input's shape and affine, atomically.

    The prediction must be back in the input's storage order (MONAI ``Invertd`` of the preprocessing, which undoes
    the canonical reorientation); a prediction of another shape is refused rather than written misplaced.

    The affine is the one MONAI loaded (RAS, as nibabel reports it for NIfTI; converted from LPS by the ITK
    reader for NRRD/DICOM). For NIfTI input the source header (qform/sform codes, zooms) is copied too.

    Args:
        keys: prediction key.
        output_dir: destination folder (created).
        postfix: file name suffix.
        overwrite: replace existing outputs (otherwise they are left alone).
    """

    def __init__(self, keys: str = "pred", output_dir: str = "./eval", postfix: str = "seg", overwrite: bool = False):
        super().__init__(keys)
        self.output_dir, self.postfix, self.overwrite = output_dir, postfix, overwrite

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        for key in self.key_iterator(data):
            pred = data[key]
            meta = getattr(pred, "meta", {})
            src = meta.get("filename_or_obj")
            if not src:
                raise InputError("the prediction has no filename_or_obj meta to name the output.")
            dst = output_path(str(src), self.output_dir, self.postfix)
            if os.path.exists(dst) and not self.overwrite:
                continue
            arr = np.asarray(pred.detach().cpu().numpy() if torch.is_tensor(pred) else pred)
            arr = arr[0].astype(np.uint8)
            stored = tuple(int(s) for s in np.asarray(meta.get("spatial_shape", arr.shape)).ravel())
            if arr.shape != stored:  # a config that forgot Invertd would write a mask the input's affine misplaces
                raise ValueError(
                    f"the prediction for {src} has shape {arr.shape} but the input is stored as {stored}: put "
                    "Invertd (transform: the preprocessing) before SaveLabelNiftid in the config's postprocessing."
                )
            files = dicom_record(meta).get("files", [])
            if files and not all(files):  # missing slices of a DICOM series: nothing was scanned there
                arr[:, :, [k for k, f in enumerate(files) if not f]] = 0
            affine = np.asarray(meta.get("original_affine", meta.get("affine")), dtype=np.float64)
            header = _reference_header(str(src))
            img = nib.Nifti1Image(arr, affine, header=header)
            img.set_data_dtype(np.uint8)
            img.header.set_slope_inter(1.0, 0.0)
            if header is not None:
                img.set_qform(affine, int(header["qform_code"]) or 1)
                img.set_sform(affine, int(header["sform_code"]) or 1)
            with atomic_path(dst) as tmp:
                nib.save(img, tmp)
            data[f"{key}_path"] = dst
        return data


def _is_volume(path: str) -> bool:
    return path.lower().endswith(_VOLUME_SUFFIXES) and not path.lower().endswith(".tmp.nii.gz")


def list_volumes(
    input: Union[str, Sequence[str], None] = None,
    datalist: Optional[str] = None,
    data_list_key: str = "test",
    base_dir: Optional[str] = None,
    output_dir: Optional[str] = None,
    postfix: str = "seg",
    overwrite: bool = False,
    dataset_dir: Optional[str] = None,
    series_uid: Optional[str] = None,
    output_type: str = "nifti",
) -> List[Dict[str, str]]:
    """Volumes to segment, as ``[{"image": path}]``, minus those whose outputs already exist.

    A folder is searched for DICOM series in its whole tree: every CT volume found is a case of its own, named by
    a series reference (:mod:`bundle.io.dicom_series`); localizers, single images, secondary captures, SEG/RTSTRUCT/
    SR and non-CT series are skipped with one log line each, and ``<output_dir>/dicom_series.json`` records every
    series found and what was done with it.

    Args:
        input: a volume file, a folder (volume files, and DICOM series anywhere under it), a series reference
            ``<folder>#<tag>``, or a list of such paths.
        datalist: decathlon JSON, used when ``input`` is not given.
        data_list_key: section of the datalist (``test``, ``validation`` …).
        base_dir: base for relative datalist paths (default: the datalist's folder).
        output_dir: where outputs go; existing outputs are skipped unless ``overwrite``.
        postfix: output name suffix (must match the writers').
        overwrite: keep inputs whose outputs exist.
        dataset_dir: the model zoo's ``--dataset_dir``: without ``input``, a folder with no ``dataset.json`` (and
            ``datalist`` left at its default ``<dataset_dir>/dataset.json``) is listed as ``input`` would be
            (:func:`bundle.io.datalist.dataset_dir_as_input`); a folder with a ``dataset.json`` uses that datalist.
        series_uid: segment only this DICOM series (SeriesInstanceUID, or the tag the log and record show).
        output_type: ``nifti``, ``dicom_seg`` or ``both`` (a DICOM SEG needs a DICOM input).

    Returns:
        A list of dicts for a MONAI Dataset.

    Raises:
        InputError: as :func:`bundle.io.datalist.list_inputs` (a missing input, nothing to segment, two inputs
            with one output name); a folder whose DICOM holds no CT volume; ``series_uid`` matching nothing; a
            DICOM SEG asked of a volume file.
    """
    scans = []

    def expand(entry: str) -> List[str]:
        if not os.path.isdir(entry):
            return [entry]
        volumes = [p for p in sorted(glob.glob(os.path.join(entry, "*"))) if os.path.isfile(p) and _is_volume(p)]
        cases, scan = list_cases(entry, series_uid)
        scans.append((scan, cases))
        if not volumes and not cases and (scan.series or scan.unreadable) and not series_uid:
            raise InputError(no_volume_message(scan))  # DICOM that is not a CT volume: say what it is
        return volumes + [ref for ref, _ in cases]

    outputs = ["nii.gz"] * wants_nifti(output_type) + ["dcm"] * wants_seg(output_type)
    try:
        items = list_inputs(
            input,
            expand,
            lambda p: [output_path(p, output_dir, postfix, "." + ext) for ext in outputs],
            "volume (.nii.gz/.nii/.nrrd/.mha) or DICOM series folder",
            datalist=datalist,
            data_list_key=data_list_key,
            base_dir=base_dir,
            dataset_dir=dataset_dir,
            output_dir=output_dir,
            overwrite=overwrite,
            exists=lambda p: os.path.exists(p) or is_dicom_ref(p),
            where="volume files in sub-folders are not searched, DICOM files are",
        )
    except InputError:
        if series_uid and scans and not any(cases for _, cases in scans):
            raise _no_such_series(series_uid, input, scans) from None
        raise
    if any(scan.series or scan.unreadable for scan, _ in scans):
        _report_series(scans, output_dir, postfix, outputs)
    if series_uid and scans and not any(cases for _, cases in scans):
        raise _no_such_series(series_uid, input, scans)
    if wants_seg(output_type):
        for item in items:
            if not is_dicom_ref(item["image"]):
                raise InputError(
                    f"{item['image']} is not a DICOM series: a DICOM SEG references its DICOM source images; segment "
                    "it with --output_type nifti, or give its DICOM series."
                )
    return items


def _no_such_series(series_uid: str, input, scans) -> InputError:
    found = "; ".join(f"{s.tag} = {s.uid or s.key}" for scan, _ in scans for s in scan.series) or "none"
    return InputError(f"--series_uid {series_uid} matches no CT series under {input} (series found: {found}).")


def _report_series(scans, output_dir: Optional[str], postfix: str, outputs: Sequence[str]) -> None:
    """Logs what each DICOM series found became, and writes ``<output_dir>/dicom_series.json``."""
    record = []
    for scan, cases in scans:
        refs = {id(s): ref for ref, s in cases}
        if scan.not_dicom and cases:
            logger.info(
                f"{scan.root}: {len(scan.not_dicom)} file(s) that are not DICOM ignored, e.g. {scan.not_dicom[0]}"
            )
        for path, reason in scan.unreadable:
            logger.warning(f"{path}: not a readable DICOM file ({reason}); a series missing it shows a slice gap")
        for s in scan.series:
            ref = refs.get(id(s))
            written = [output_path(ref, output_dir or ".", postfix, "." + ext) for ext in outputs] if ref else []
            if ref:
                logger.info(f"DICOM {s.label}: segmented as {ref}")
            else:
                logger.info(f"DICOM {s.label}: skipped: {s.skip}")
            record.append(
                {
                    "folder": s.folder,
                    "tag": s.tag,
                    "series_uid": s.uid,
                    "series_number": s.number,
                    "description": s.description,
                    "files": len(s.files),
                    "geometry": s.geometry.kind if s.geometry else None,
                    "defect": s.error or (s.geometry.defect if s.geometry else None),
                    "segmented": bool(ref),
                    "reference": ref,
                    "skipped_because": None if ref else s.skip,
                    "outputs": written,
                }
            )
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        atomic_write_text(os.path.join(output_dir, "dicom_series.json"), json.dumps(record, indent=4))
