"""DICOM studies in: which series of a folder tree are CT volumes to segment, and where each of their slices was
scanned. Headers only (pydicom, no pixel data); the pixels are read by :mod:`bundle.io.dicom_reader`.

Hospitals export studies, not clean series: localizers, several reconstructions, derived images, secondary
captures, SEG/RTSTRUCT/SR objects, missing or duplicated instances. One rule decides what is segmented
(``docs/clinical.md``):

1. Every file under the folder is read (header only); files that are not DICOM are counted and ignored.
2. Files are grouped by SeriesInstanceUID, and within a series by orientation, matrix size and pixel spacing (a
   series that mixes them, e.g. a 3-plane localizer, becomes several groups). A group of an export that emptied the
   UIDs is keyed by its folder, series number and description instead.
3. A group is a CT volume when it is Modality CT, classic single-frame CT images (not enhanced multi-frame, not a
   secondary capture), not a LOCALIZER, with image geometry, and at least :data:`MIN_SLICES` slices. DERIVED
   volumes (reformats, MIPs) are skipped when the same input holds an ORIGINAL one, unless picked by ``series_uid``.
   Everything else is skipped with one log line naming it and why.
4. Slices are sorted along the slice normal (:mod:`bundle.io.dicom_geometry` says where they lie); two different
   instances at one position are refused, a second copy of one instance is ignored.

A case is named by a *series reference* ``<folder>#<tag>`` (:func:`series_ref`), or the bare folder when the folder
holds one CT volume; ``tag`` (``s<number>_<description>``) is unique within the folder and names the output.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from bundle.errors import InputError
from bundle.io.dicom_geometry import SliceGeometry, axis_name, slice_geometry

logger = logging.getLogger(__name__)

MIN_SLICES = 3  # fewer distinct positions is a single image or a localizer, not a volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_ENHANCED_CT = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")  # Enhanced / Legacy Converted Enhanced
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame variants .7.1-.7.4
_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR (Media Storage Directory)
_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "ImageType",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "Rows",
    "Columns",
    "PixelSpacing",
    "NumberOfFrames",
)
REF_SEP = "#"
_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Series:
    """One group of DICOM instances (a series, or a part of one of a single orientation and matrix size).

    ``files``, ``sop_uids`` and ``positions`` are sorted along the slice normal (duplicate files dropped) once
    :meth:`sort_slices` has run; ``skip`` says why the group is not segmented (``None``: a CT volume); ``error``
    why a CT volume cannot be read (duplicated positions): the case fails with that line.
    """

    key: str
    folder: str
    uid: str
    study_uid: str
    frame_of_reference: str
    number: Optional[int]
    description: str
    modality: str
    image_type: Tuple[str, ...]
    sop_class: str
    orientation: Tuple[float, ...]
    rows: int
    columns: int
    pixel_spacing: Tuple[float, float]
    frames: int
    files: List[str] = field(default_factory=list)
    sop_uids: List[str] = field(default_factory=list)
    positions: List[Tuple[float, float, float]] = field(default_factory=list)
    skip: Optional[str] = None
    error: Optional[str] = None
    tag: str = ""
    geometry: Optional[SliceGeometry] = None

    @property
    def label(self) -> str:
        """How logs name the series: number, description, UID, folder."""
        number = f"series {self.number}" if self.number is not None else "series (no number)"
        desc = f" {self.description!r}" if self.description else ""
        uid = self.uid or "no SeriesInstanceUID"
        return f"{number}{desc} ({uid}, {len(self.files)} files in {self.folder})"

    @property
    def normal(self) -> np.ndarray:
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        n = np.cross(row, col)
        return n / np.linalg.norm(n)

    @property
    def is_original(self) -> bool:
        return bool(self.image_type) and self.image_type[0].upper() == "ORIGINAL"

    def sort_slices(self) -> None:
        """Sorts the instances along the slice normal, drops copies of one instance, and sets :attr:`geometry`.

        Raises:
            InputError: two different instances at one position.
        """
        pos = np.asarray(self.positions, dtype=np.float64)
        offsets = pos @ self.normal
        order = np.argsort(offsets, kind="stable")
        keep: List[int] = []
        for i in order:
            if keep and abs(offsets[i] - offsets[keep[-1]]) < 1e-3:
                j = keep[-1]
                if self.sop_uids[i] and self.sop_uids[i] == self.sop_uids[j]:
                    logger.info(f"{self.files[i]} is a second copy of {self.files[j]} (same SOPInstanceUID): ignored")
                    continue
                raise InputError(
                    f"{self.label}: two instances at {axis_name(self.normal)} = {offsets[i]:.2f} mm ("
                    f"{os.path.basename(self.files[j])}, {os.path.basename(self.files[i])}): two acquisitions in one "
                    "series or a duplicated export; remove one of them, or export the acquisitions as separate series."
                )
            keep.append(int(i))
        self.files = [self.files[i] for i in keep]
        self.sop_uids = [self.sop_uids[i] for i in keep]
        self.positions = [self.positions[i] for i in keep]
        if len(self.files) >= 2:
            self.geometry = slice_geometry(np.asarray(self.positions), self.normal, self.label)


# ----------------------------------------------------------------------------------------------- scanning
@dataclass
class Scan:
    """What :func:`scan_dicom` found under one folder."""

    root: str
    series: List[Series]
    not_dicom: List[str]
    unreadable: List[Tuple[str, str]]


def _text(ds, name: str, default: str = "") -> str:
    value = ds.get(name, default)
    return str(value).strip() if value is not None else default


def _floats(value, n: int) -> Optional[Tuple[float, ...]]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and np.isfinite(out).all() else None


def _read_header(path: str):
    """The pydicom header of ``path``, or ``None`` when it is not a DICOM file; raises for a broken one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(_TAGS))
    except InvalidDicomError:
        return None


def scan_dicom(root: str) -> Scan:
    """Reads the header of every file under ``root`` (recursively) and groups the DICOM instances into series.

    Files that are not DICOM are listed in ``not_dicom``; DICOM files whose header cannot be read in
    ``unreadable`` (with the reason). DICOMDIR index files are ignored.
    """
    root = os.path.normpath(str(root))
    groups: Dict[tuple, Series] = {}
    not_dicom: List[str] = []
    unreadable: List[Tuple[str, str]] = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            try:
                ds = _read_header(path)
            except Exception as err:  # a DICOM preamble with a broken header: name it, go on
                unreadable.append((path, f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"))
                continue
            if ds is None:
                not_dicom.append(path)
                continue
            meta = getattr(ds, "file_meta", None)
            sop_class = _text(ds, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta else "")
            if sop_class == _DIRECTORY:
                continue
            _add_instance(groups, ds, meta, sop_class, path, folder)
    series = list(groups.values())
    for s in series:
        if s.skip is None:
            try:
                s.sort_slices()
            except InputError as err:
                s.error = str(err)
        if s.skip is None and len(s.files) < MIN_SLICES:
            s.skip = f"{len(s.files)} image{'s' if len(s.files) != 1 else ''}, not a volume (≥ {MIN_SLICES} slices)"
    for folder in {s.folder for s in series}:  # tags are unique per folder: a reference is <folder>#<tag>
        assign_tags([s for s in series if s.folder == folder])
    return Scan(root, series, not_dicom, unreadable)


def _add_instance(groups: Dict[tuple, Series], ds, meta, sop_class: str, path: str, folder: str) -> None:
    uid = _text(ds, "SeriesInstanceUID")
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    position = _floats(ds.get("ImagePositionPatient"), 3)
    spacing = _floats(ds.get("PixelSpacing"), 2)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    number = ds.get("SeriesNumber")
    description = _text(ds, "SeriesDescription")
    shape_key = (
        tuple(np.round(orientation, 3)) if orientation else None,
        rows,
        cols,
        tuple(np.round(spacing, 4)) if spacing else None,
    )
    # an export that emptied the UIDs: the folder, number and description still tell series apart
    series_key = (uid,) if uid else ("", folder, str(number), description, _text(ds, "FrameOfReferenceUID"))
    key = series_key + shape_key
    s = groups.get(key)
    if s is None:
        ident = uid or "nouid-" + hashlib.sha1("|".join(map(str, series_key)).encode()).hexdigest()[:10]
        siblings = sum(1 for k in groups if k[: len(series_key)] == series_key)
        image_type = tuple(str(v) for v in (ds.get("ImageType") or ()))
        s = groups[key] = Series(
            key=ident if not siblings else f"{ident}.{siblings + 1}",
            folder=folder,
            uid=uid,
            study_uid=_text(ds, "StudyInstanceUID"),
            frame_of_reference=_text(ds, "FrameOfReferenceUID"),
            number=int(number) if number not in (None, "") else None,
            description=description,
            modality=_text(ds, "Modality").upper(),
            image_type=image_type,
            sop_class=sop_class,
            orientation=orientation or (),
            rows=rows,
            columns=cols,
            pixel_spacing=spacing or (0.0, 0.0),
            frames=int(ds.get("NumberOfFrames", 1) or 1),
        )
        s.skip = _not_a_volume(s, position)
    elif s.skip is None and position is None:
        s.skip = _not_a_volume(s, position)
    if os.path.commonpath([s.folder, folder]) != s.folder:
        s.folder = os.path.commonpath([s.folder, folder])
    s.files.append(path)
    s.sop_uids.append(_text(ds, "SOPInstanceUID") or (_text(meta, "MediaStorageSOPInstanceUID") if meta else ""))
    s.positions.append(position or (0.0, 0.0, 0.0))


def _not_a_volume(s: Series, position) -> Optional[str]:
    """Why a group cannot be a CT volume from its first instance (``None``: it may be one)."""
    if s.modality != "CT":
        kind = {"SEG": "a segmentation", "RTSTRUCT": "RT structures", "SR": "a structured report"}.get(s.modality)
        return f"{kind} ({s.modality}), not CT images" if kind else f"modality {s.modality or 'missing'}, not CT"
    if s.sop_class.startswith(_SECONDARY_CAPTURE):
        return "secondary capture (a picture of the screen, no slice geometry)"
    if s.sop_class in _ENHANCED_CT or s.frames > 1:
        return (
            f"enhanced multi-frame CT ({s.frames} frames in one file), not supported: export the series as classic "
            "single-frame CT images (an option of the scanner or PACS export), or convert it with dcm4che's emf2sf"
        )
    if any(t.upper() == "LOCALIZER" for t in s.image_type):
        return "localizer/scout (ImageType LOCALIZER)"
    if not s.orientation or position is None or not s.rows or not s.columns or not s.pixel_spacing[0]:
        return "no image geometry (ImagePositionPatient/ImageOrientationPatient/PixelSpacing missing)"
    return None


# ----------------------------------------------------------------------------------------------- the rule
def select_cases(series: Sequence[Series], series_uid: Optional[str] = None) -> List[Series]:
    """Applies the rule of the module docstring to the groups of one scan: the CT volumes to segment (their
    ``skip`` stays ``None``); every other group gets its reason in ``skip``.

    Args:
        series: the groups of one :func:`scan_dicom`.
        series_uid: segment only this series (its SeriesInstanceUID, key or tag); a DERIVED volume so named is kept.
    """
    if series_uid:
        for s in series:
            if s.skip is None and series_uid not in (s.uid, s.key, s.tag):
                s.skip = f"not the series asked for (--series_uid {series_uid})"
        return [s for s in series if s.skip is None]
    if any(s.skip is None and s.is_original for s in series):
        for s in series:
            if s.skip is None and not s.is_original:
                s.skip = (
                    f"DERIVED ({'/'.join(s.image_type[:3])}) while an ORIGINAL CT series is present; "
                    "segment it with --series_uid"
                )
    return [s for s in series if s.skip is None]


def _sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_.")[:48]


def assign_tags(series: Sequence[Series]) -> None:
    """Gives each group a tag unique within its scan: ``s<number>_<description>`` (sanitised), else the
    description, else ``series``; repeated tags get ``_2``, ``_3`` … in key order."""
    seen: Dict[str, int] = {}
    for s in sorted(series, key=lambda s: (s.number if s.number is not None else -1, s.description, s.key)):
        parts = ([f"s{s.number}"] if s.number is not None else []) + (
            [_sanitise(s.description)] if s.description else []
        )
        base = "_".join(p for p in parts if p) or "series"
        seen[base] = seen.get(base, 0) + 1
        s.tag = base if seen[base] == 1 else f"{base}_{seen[base]}"


def series_ref(folder: str, tag: Optional[str]) -> str:
    """The case reference of one series: ``<folder>#<tag>``, or the folder alone (``tag`` ``None``)."""
    return f"{folder}{REF_SEP}{tag}" if tag else str(folder)


def parse_ref(ref: str) -> Tuple[str, Optional[str]]:
    """``(folder, tag or None)`` of a case reference; ``ref`` that is an existing path is a folder as it stands."""
    ref = str(ref)
    if os.path.exists(ref) or REF_SEP not in ref:
        return ref, None
    folder, _, tag = ref.rpartition(REF_SEP)
    return folder, tag


def is_dicom_ref(ref) -> bool:
    """True for a folder, or a ``<folder>#<tag>`` reference whose folder exists."""
    if not isinstance(ref, (str, os.PathLike)):
        return False
    folder, _ = parse_ref(str(ref))
    return os.path.isdir(folder)


def _under(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def list_cases(root: str, series_uid: Optional[str] = None) -> Tuple[List[Tuple[str, Series]], Scan]:
    """The CT volumes under ``root`` as ``(reference, series)`` pairs, and the whole scan (every skip reason).

    A series is referenced by its folder alone when it is the only CT volume under that folder (a clean series
    folder keeps its name), else as ``<folder>#<tag>``.
    """
    scan = scan_dicom(root)
    volumes = [s for s in scan.series if s.skip is None]
    cases = select_cases(scan.series, series_uid)
    refs = []
    for s in cases:
        alone = sum(1 for v in volumes if _under(v.folder, s.folder)) == 1
        refs.append((series_ref(s.folder, None if alone else s.tag), s))
    return refs, scan


def resolve_ref(ref: str) -> Series:
    """The series a case reference names, checked against the rule (what the reader reads).

    Raises:
        InputError: no DICOM under the folder, no CT volume, a bare folder holding several, or an unknown tag.
    """
    folder, tag = parse_ref(ref)
    folder = os.path.normpath(folder)
    scan = scan_dicom(folder)
    if tag is not None:
        found = [s for s in scan.series if s.folder == folder and s.tag == tag]
        if not found:
            known = ", ".join(sorted(s.tag for s in scan.series if s.folder == folder)) or "none"
            raise InputError(f"{ref}: no series tagged {tag!r} in {folder} (found: {known}).")
        if found[0].skip:
            raise InputError(f"{ref}: {found[0].label} is not segmented: {found[0].skip}.")
        return found[0]
    volumes = [s for s in scan.series if s.skip is None]
    cases = volumes if len(volumes) == 1 else select_cases(scan.series)
    if len(cases) == 1:
        return cases[0]
    if not cases:
        raise InputError(no_volume_message(scan))
    listed = "; ".join(f"{series_ref(s.folder, s.tag)} ({s.label})" for s in cases)
    raise InputError(
        f"{folder} holds {len(cases)} CT series: name one as <folder>#<tag> in the datalist or --input, or pass "
        f"--series_uid: {listed}."
    )


def no_volume_message(scan: Scan) -> str:
    """One line: why a folder gave no CT volume (what it holds instead)."""
    if scan.series:
        why = "; ".join(f"{s.label}: {s.skip}" for s in scan.series[:5])
        return f"{scan.root} holds no CT volume to segment ({why})."
    if scan.unreadable:
        path, reason = scan.unreadable[0]
        return (
            f"{scan.root} holds no readable DICOM series: {len(scan.unreadable)} file(s) cannot be read, e.g. {path} "
            f"({reason}); re-export or re-copy the series."
        )
    if scan.not_dicom:
        pictures = [p for p in scan.not_dicom if p.lower().endswith(_PICTURE_SUFFIXES)]
        if pictures:
            kinds = sorted({os.path.splitext(p)[1].lower() for p in pictures})
            return (
                f"{scan.root} is a folder of {len(pictures)} 2D pictures ({'/'.join(kinds)}, e.g. "
                f"{os.path.basename(pictures[0])}), not a DICOM series: this config segments CT volumes "
                "(NIfTI/NRRD/MHA files or a DICOM series folder); stack CT slices into one volume, or segment 2D "
                "images with the ISIC2018 overlay configs/isic2018/inference.yaml (dermoscopy) or with "
                "configs/microscopy/inference.yaml."
            )
        exts = sorted({os.path.splitext(p)[1].lower() or "(no extension)" for p in scan.not_dicom})
        return (
            f"{scan.root} holds {len(scan.not_dicom)} file(s) that are not DICOM ({', '.join(exts[:6])}) and no CT "
            "volume: give a CT volume (.nii.gz/.nii/.nrrd/.mha) or a folder holding a DICOM series."
        )
    return f"{scan.root} is empty: give a CT volume or a folder holding a DICOM series."
