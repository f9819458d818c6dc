"""CT volumes in and out: load (NIfTI, NRRD, MHA, DICOM series folders) with a one-line error naming the file,
check each case before it costs anything, list a folder's volumes, and write label maps on the input's exact grid.

* :class:`LoadVolumed` (unreadable / truncated files) and :class:`ValidateVolumed` (dimensionality, channels, label
  grid and values, NaN/inf, spacing, a usable affine via :func:`check_affine`), both inside
  :func:`bundle.transforms.ct.ct_volume_transforms`;
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
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Union

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import LoadImage, LoadImaged, MapTransform

from bundle.errors import InputError
from bundle.io.atomic import atomic_path, atomic_write_text
from bundle.io.datalist import list_inputs
from bundle.io.dicom_reader import DicomSeriesReader, dicom_record, wants_nifti, wants_seg
from bundle.io.dicom_series import is_dicom_ref, list_cases, no_volume_message, parse_ref

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- volumes
def _name(data: Mapping, key: Hashable) -> str:
    value = data.get(key)
    meta = getattr(value, "meta", None)
    if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return str(value)


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
            if os.path.isdir(str(path)):
                raise InputError(_unreadable_folder(key, str(path), cause)) from err
            raise InputError(
                f"{key} {path} cannot be read ({type(cause).__name__}: {_root_message(cause)}): the file is truncated, "
                "corrupt or not an image; re-export or re-copy it."
            ) from err


_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _unreadable_folder(key: str, path: str, cause: BaseException) -> str:
    """What a folder that does not load as a DICOM series holds, and what to give instead."""
    files = sorted(f for f in os.listdir(path) if not f.startswith("."))
    pictures = [f for f in files if f.lower().endswith(_PICTURE_SUFFIXES)]
    if pictures:
        kinds = sorted({os.path.splitext(f)[1].lower() for f in pictures})
        return (
            f"{key} {path} is a folder of {len(pictures)} 2D pictures ({'/'.join(kinds)}, e.g. {pictures[0]}), not "
            "a DICOM series: this config segments CT volumes (NIfTI/NRRD/MHA files or a DICOM series folder); stack "
            "CT slices into one volume, or segment 2D images with the ISIC2018 overlay configs/isic2018/inference.yaml "
            "(dermoscopy) or with configs/microscopy/inference.yaml."
        )
    return (
        f"{key} {path} is a folder ({len(files)} entries, e.g. {', '.join(files[:3]) or 'none'}) that does not load "
        f"as a DICOM series ({type(cause).__name__}: {_root_message(cause)}): give a volume file, or a folder holding "
        "the .dcm files of one series."
    )


def _root_message(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def _spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(0))


def slice_axis(affine: np.ndarray) -> int:
    """Array axis (0..2) closest to the patient's superior–inferior direction, i.e. the axial slice axis."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    axes = [i for i in range(3) if ornt[i, 0] == 2]
    return axes[0] if axes else 2


def check_affine(affine: Any, name: str) -> np.ndarray:
    """The 4×4 voxel-to-world matrix of file ``name``, refused when it cannot place voxels in the patient.

    Raises:
        InputError: non-finite entries, a zero-length voxel axis, or a singular (flat) matrix.
    """
    aff = np.asarray(affine, dtype=np.float64)
    fix = "repair the header (e.g. re-export from the DICOM, or copy a correct affine with nibabel) and run again"
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise InputError(f"image {name} has a NaN/inf or malformed voxel-to-world matrix (affine): {fix}.")
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    if (spacing < 1e-6).any():
        raise InputError(f"image {name} has zero voxel spacing {np.round(spacing, 4).tolist()} in its affine: {fix}.")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-6 * float(np.prod(spacing)):
        raise InputError(f"image {name} has a singular affine (its voxel axes are not independent): {fix}.")
    return aff


class ValidateVolumed(MapTransform):
    """Per-case checks after loading (before ``EnsureChannelFirstd``); raises :class:`InputError` naming the file.

    Checks: the image is one 3D single-channel volume (not a 2D image, 4D series, multi-channel or RGB image);
    in-plane size ≥ ``min_size``; the label has the image's shape and affine, integer values in
    ``0..num_classes-1``; non-finite intensities (NaN → the volume's finite minimum, ±inf → finite max/min, with a
    warning; an error when more than ``max_nonfinite_fraction`` of the voxels are non-finite); warnings for very
    anisotropic spacing and for uint8 images (not HU).

    Args:
        keys: image key, then an optional label key.
        num_classes: label values must lie in ``0..num_classes-1`` (``None``: not checked).
        max_nonfinite_fraction: above this fraction of NaN/inf voxels the case is refused.
        min_size: smallest in-plane size accepted.
        max_inplane_ratio: warn when the two in-plane spacings differ more than this factor.
        max_slice_ratio: warn when slice spacing / in-plane spacing exceeds this.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        num_classes: Optional[int] = 9,
        max_nonfinite_fraction: float = 0.5,
        min_size: int = 8,
        max_inplane_ratio: float = 2.0,
        max_slice_ratio: float = 10.0,
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_classes = num_classes
        self.max_nonfinite_fraction = float(max_nonfinite_fraction)
        self.min_size = int(min_size)
        self.max_inplane_ratio = float(max_inplane_ratio)
        self.max_slice_ratio = float(max_slice_ratio)

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        d = dict(data)
        keys = [k for k in self.keys if k in d]
        if not keys:
            return d
        img_key = keys[0]
        d[img_key] = self._check_image(d[img_key], _name(d, img_key))
        for lab_key in keys[1:]:
            self._check_label(d[lab_key], d[img_key], _name(d, lab_key), _name(d, img_key))
        return d

    def _check_image(self, img, name):
        meta = getattr(img, "meta", {}) or {}
        shape = tuple(img.shape)
        spatial = tuple(int(s) for s in np.asarray(meta.get("spatial_shape", shape)).ravel())
        channel_dim = meta.get("original_channel_dim", "no_channel")
        has_channel = not (channel_dim is None or channel_dim == "no_channel" or _isnan(channel_dim))
        if len(spatial) == 2 and has_channel and shape[-1] in (3, 4):
            raise InputError(
                f"image {name} is a 2D RGB{'A' if shape[-1] == 4 else ''} picture {shape}: this config segments 3D "
                "CT volumes (NIfTI/NRRD/MHA/DICOM in HU); give a CT volume, or use a 2D RGB bundle config."
            )
        if len(spatial) < 3:
            raise InputError(
                f"image {name} is 2D {shape}: a 3D CT volume (H, W, slices) is expected; stack the slices into one "
                "volume (a single slice needs shape (H, W, 1))."
            )
        if has_channel or len(shape) > 3:
            n = shape[int(channel_dim)] if has_channel and not isinstance(channel_dim, str) else shape[-1]
            raise InputError(
                f"image {name} has {n} channels/time points {shape}: one single-channel 3D CT volume is expected; "
                "split a 4D series (one phase per file) or keep one channel of a multi-channel image."
            )
        affine = meta.get("affine")
        if affine is not None:
            check_affine(affine, name)
        axis = slice_axis(np.asarray(affine)) if affine is not None else 2
        if min(spatial[i] for i in range(3) if i != axis) < self.min_size:
            raise InputError(
                f"image {name} has shape {shape}: the in-plane size must be ≥ {self.min_size}; check that the file is "
                "a CT volume and not a thumbnail or a mask."
            )
        if int(np.asarray(meta.get("datatype", 0))) in (2, 128, 2304) or img.dtype == torch.uint8:  # NIfTI u8/RGB
            warnings.warn(
                f"image {name} is uint8: CT is expected in Hounsfield units (e.g. int16); is this an RGB export?"
            )
        values = torch.as_tensor(img)
        finite = torch.isfinite(values)
        bad = int(finite.numel() - finite.sum())
        if bad:
            frac = bad / finite.numel()
            if frac > self.max_nonfinite_fraction or bad == finite.numel():
                raise InputError(
                    f"image {name}: {frac:.0%} of the voxels are NaN/inf: the file is broken (failed conversion or "
                    "resampling); re-export it from the source images."
                )
            lo, hi = float(values[finite].min()), float(values[finite].max())
            warnings.warn(
                f"image {name}: {bad} NaN/inf voxels ({frac:.2%}) replaced (NaN → {lo:g}, +inf → {hi:g}, "
                f"-inf → {lo:g}); check how the file was made."
            )
            img = torch.nan_to_num(img, nan=lo, posinf=hi, neginf=lo)
        if affine is not None:
            sp, ax = _spacing(np.asarray(affine)), axis
            inplane = [sp[i] for i in range(3) if i != ax]
            if min(inplane) > 0 and max(inplane) / min(inplane) > self.max_inplane_ratio:
                warnings.warn(
                    f"image {name}: in-plane spacing {inplane[0]:.3g} × {inplane[1]:.3g} mm is very anisotropic; "
                    "slices are resized to a square network input, so anatomy is distorted: resample in-plane first."
                )
            if min(inplane) > 0 and sp[ax] / min(inplane) > self.max_slice_ratio:
                warnings.warn(
                    f"image {name}: slice spacing {sp[ax]:.3g} mm vs in-plane {min(inplane):.3g} mm (ratio > "
                    f"{self.max_slice_ratio:g}); the 2D network is unaffected but 3D metrics (HD95) are coarse."
                )
        return img

    def _check_label(self, lab, img, name, img_name):
        lshape, ishape = tuple(lab.shape), tuple(img.shape)
        if lshape != ishape:
            raise InputError(
                f"label {name} has shape {lshape} but its image {img_name} has {ishape}: the label must be on the "
                f"image's grid; resample it onto the image ({resample_label_command(name, img_name)}) or pair the "
                "right files."
            )
        la, ia = getattr(lab, "affine", None), getattr(img, "affine", None)
        if la is not None and ia is not None:
            la, ia = np.asarray(la, dtype=np.float64), np.asarray(ia, dtype=np.float64)
            if not np.allclose(la, ia, rtol=1e-4, atol=1e-3):
                grid = (
                    f"label {name} has affine {np.round(la[:3], 3).tolist()} but its image {img_name} has "
                    f"{np.round(ia[:3], 3).tolist()}: the label must be on the image's grid; "
                )
                resample = (
                    f"resample the label onto the image (nearest neighbour): {resample_label_command(name, img_name)}"
                )
                lcodes, icodes = "".join(nib.aff2axcodes(la)), "".join(nib.aff2axcodes(ia))
                if lcodes != icodes:  # a header copy would mirror/transpose the label in the patient
                    raise InputError(
                        f"{grid}they are stored in different orientations (label {lcodes}, image {icodes}), so "
                        f"{resample}; never copy the image's header into the label here, it would flip the label."
                    )
                raise InputError(
                    f"{grid}{resample} (or, if the label is known to share the image's voxels and only "
                    "its header is off, copy the image's header into it)."
                )
        if self.num_classes is None:
            return
        values = torch.as_tensor(lab)
        if not torch.isfinite(values).all() or not torch.equal(values, values.round()):
            raise InputError(f"label {name} holds non-integer values: resample labels with nearest neighbour only.")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > self.num_classes - 1:
            found = torch.unique(values).to(torch.int64).tolist()
            outside = [v for v in found if v < 0 or v > self.num_classes - 1]
            raise InputError(
                f"label {name} has values {outside[:10]} outside 0..{self.num_classes - 1}: map raw BTCV ids to the 8 "
                "Synapse organs with scripts/data/prepare_synapse.py btcv, or set --num_classes to match your labels."
            )


def resample_label_command(label: str, image: str) -> str:
    """A shell command that resamples ``label`` onto ``image``'s grid (nearest neighbour, SimpleITK, any format the
    bundle reads) into ``<label>_resampled.nii.gz``: the fix offered when a label is on another grid."""
    out = output_path(label, os.path.dirname(str(label)), "resampled")
    code = (
        f"import SimpleITK as sitk; sitk.WriteImage(sitk.Resample(sitk.ReadImage({str(label)!r}), "
        f"sitk.ReadImage({str(image)!r}), sitk.Transform(), sitk.sitkNearestNeighbor, 0), {out!r})"
    )
    return f'python -c "{code}"'


def _isnan(value) -> bool:
    try:
        return bool(np.isnan(value))
    except (TypeError, ValueError):
        return False


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
